// A tiny JSON reader and writer, enough for the bank account's flat objects.
//
// json_fields() checks that the input is one well-formed JSON object (any nesting
// is validated and skipped), and picks out one string field and one unsigned
// integer field by name. The writer appends to a growable heap buffer that stays
// NUL-terminated, so its bytes can be handed to the host as they are.
#ifndef MNEME_JSON_H
#define MNEME_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifndef JSON_OUT_OF_MEMORY
#define JSON_OUT_OF_MEMORY() abort()
#endif

#define JSON_MAX_STRING 63  // longer string values are reported as FIELD_INVALID
#define JSON_MAX_DEPTH 64

typedef enum { FIELD_MISSING, FIELD_OK, FIELD_INVALID } field_state_t;

typedef struct {
  field_state_t str_state;
  char str[JSON_MAX_STRING + 1];
  field_state_t num_state;
  uint64_t num;
} json_fields_t;

// ------------------------------------------------------------------ writer

typedef struct {
  uint8_t *ptr;
  size_t len, cap;
} buf_t;

static void buf_bytes(buf_t *b, const void *data, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 32;
    while (cap < b->len + n + 1) cap *= 2;
    b->ptr = realloc(b->ptr, cap);
    if (!b->ptr) JSON_OUT_OF_MEMORY();
    b->cap = cap;
  }
  memcpy(b->ptr + b->len, data, n);
  b->len += n;
  b->ptr[b->len] = 0;
}

static void buf_str(buf_t *b, const char *s) { buf_bytes(b, s, strlen(s)); }

static void buf_u64(buf_t *b, uint64_t v) {
  char digits[20];
  int n = 0;
  do {
    digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  buf_bytes(b, digits + sizeof digits - n, (size_t)n);
}

// Appends `s` as a JSON string literal.
static void buf_json_string(buf_t *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  buf_str(b, "\"");
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      buf_bytes(b, esc, 2);
    } else if (c < 0x20) {
      char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      buf_bytes(b, esc, 6);
    } else {
      buf_bytes(b, &c, 1);
    }
  }
  buf_str(b, "\"");
}

// ------------------------------------------------------------------ reader

typedef struct {
  const uint8_t *p, *end;
  const char *error;
} json_cursor_t;

static bool json_fail(json_cursor_t *c, const char *error) {
  if (!c->error) c->error = error;
  return false;
}

static void json_ws(json_cursor_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static bool json_lit(json_cursor_t *c, const char *word) {
  size_t n = strlen(word);
  if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0)
    return json_fail(c, "not JSON: unexpected character");
  c->p += n;
  return true;
}

static int json_hex4(json_cursor_t *c) {
  if (c->end - c->p < 4) return -1;
  int v = 0;
  for (int i = 0; i < 4; i++) {
    uint8_t h = *c->p++;
    v <<= 4;
    if (h >= '0' && h <= '9') v |= h - '0';
    else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
    else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
    else return -1;
  }
  return v;
}

// Parses a string literal (the cursor is on the opening quote), decoding it into
// `out` (UTF-8, NUL-terminated) when `out` is not NULL. Sets *too_long when it does
// not fit in JSON_MAX_STRING bytes.
static bool json_string(json_cursor_t *c, char *out, bool *too_long) {
  size_t n = 0;
  c->p++;  // the opening quote
  for (;;) {
    if (c->p >= c->end) return json_fail(c, "not JSON: unterminated string");
    uint8_t ch = *c->p++;
    uint32_t cp;
    if (ch == '"') break;
    if (ch < 0x20) return json_fail(c, "not JSON: control character in string");
    if (ch != '\\') {
      if (out && n < JSON_MAX_STRING) out[n] = (char)ch;
      n++;
      continue;
    }
    if (c->p >= c->end) return json_fail(c, "not JSON: unterminated string");
    switch (*c->p++) {
      case '"': cp = '"'; break;
      case '\\': cp = '\\'; break;
      case '/': cp = '/'; break;
      case 'b': cp = '\b'; break;
      case 'f': cp = '\f'; break;
      case 'n': cp = '\n'; break;
      case 'r': cp = '\r'; break;
      case 't': cp = '\t'; break;
      case 'u': {
        int u = json_hex4(c);
        if (u < 0) return json_fail(c, "not JSON: invalid \\u escape");
        cp = (uint32_t)u;
        if (cp >= 0xD800 && cp <= 0xDBFF) {  // a surrogate pair
          int lo;
          if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u') return json_fail(c, "not JSON: lone surrogate");
          c->p += 2;
          lo = json_hex4(c);
          if (lo < 0xDC00 || lo > 0xDFFF) return json_fail(c, "not JSON: lone surrogate");
          cp = 0x10000 + ((cp - 0xD800) << 10) + ((uint32_t)lo - 0xDC00);
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
          return json_fail(c, "not JSON: lone surrogate");
        }
        break;
      }
      default:
        return json_fail(c, "not JSON: invalid escape");
    }
    uint8_t utf8[4];
    int k;
    if (cp < 0x80) { utf8[0] = (uint8_t)cp; k = 1; }
    else if (cp < 0x800) { utf8[0] = 0xC0 | (cp >> 6); utf8[1] = 0x80 | (cp & 63); k = 2; }
    else if (cp < 0x10000) { utf8[0] = 0xE0 | (cp >> 12); utf8[1] = 0x80 | ((cp >> 6) & 63); utf8[2] = 0x80 | (cp & 63); k = 3; }
    else { utf8[0] = 0xF0 | (cp >> 18); utf8[1] = 0x80 | ((cp >> 12) & 63); utf8[2] = 0x80 | ((cp >> 6) & 63); utf8[3] = 0x80 | (cp & 63); k = 4; }
    for (int i = 0; i < k; i++, n++)
      if (out && n < JSON_MAX_STRING) out[n] = (char)utf8[i];
  }
  if (out) out[n < JSON_MAX_STRING ? n : JSON_MAX_STRING] = 0;
  if (too_long) *too_long = n > JSON_MAX_STRING;
  return true;
}

// Parses a number. *is_u64 tells whether it is an integer in 0..=2^64-1 (no
// fraction, no exponent), with its value in *value.
static bool json_number(json_cursor_t *c, uint64_t *value, bool *is_u64) {
  bool negative = false, integral = true, overflow = false;
  uint64_t v = 0;
  if (c->p < c->end && *c->p == '-') { negative = true; c->p++; }
  if (c->p >= c->end || *c->p < '0' || *c->p > '9') return json_fail(c, "not JSON: invalid number");
  if (*c->p == '0') {
    c->p++;
  } else {
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
      unsigned d = *c->p++ - '0';
      if (v > (UINT64_MAX - d) / 10) overflow = true;
      v = v * 10 + d;
    }
  }
  if (c->p < c->end && *c->p == '.') {
    integral = false;
    c->p++;
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') return json_fail(c, "not JSON: invalid number");
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
  }
  if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
    integral = false;
    c->p++;
    if (c->p < c->end && (*c->p == '+' || *c->p == '-')) c->p++;
    if (c->p >= c->end || *c->p < '0' || *c->p > '9') return json_fail(c, "not JSON: invalid number");
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') c->p++;
  }
  *value = v;
  *is_u64 = integral && !overflow && !(negative && v != 0);
  if (negative && v == 0) *is_u64 = false;
  return true;
}

static bool json_skip(json_cursor_t *c, int depth);

static bool json_skip_compound(json_cursor_t *c, int depth, uint8_t close, bool keys) {
  if (depth > JSON_MAX_DEPTH) return json_fail(c, "not JSON: nested too deeply");
  c->p++;
  json_ws(c);
  if (c->p < c->end && *c->p == close) { c->p++; return true; }
  for (;;) {
    json_ws(c);
    if (keys) {
      if (c->p >= c->end || *c->p != '"') return json_fail(c, "not JSON: expected a key");
      if (!json_string(c, NULL, NULL)) return false;
      json_ws(c);
      if (c->p >= c->end || *c->p++ != ':') return json_fail(c, "not JSON: expected ':'");
    }
    if (!json_skip(c, depth + 1)) return false;
    json_ws(c);
    if (c->p >= c->end) return json_fail(c, "not JSON: unexpected end of input");
    uint8_t ch = *c->p++;
    if (ch == close) return true;
    if (ch != ',') return json_fail(c, "not JSON: expected ',' or a closing bracket");
  }
}

// Validates and skips one value.
static bool json_skip(json_cursor_t *c, int depth) {
  uint64_t v;
  bool u;
  json_ws(c);
  if (c->p >= c->end) return json_fail(c, "not JSON: unexpected end of input");
  switch (*c->p) {
    case '{': return json_skip_compound(c, depth, '}', true);
    case '[': return json_skip_compound(c, depth, ']', false);
    case '"': return json_string(c, NULL, NULL);
    case 't': return json_lit(c, "true");
    case 'f': return json_lit(c, "false");
    case 'n': return json_lit(c, "null");
    default: return json_number(c, &v, &u);
  }
}

// Parses `data` as one JSON object. Records the string field `str_key` and the
// unsigned integer field `num_key` in *out (FIELD_INVALID when present with
// another type or out of range). Returns NULL, or a static error message.
static const char *json_fields(const uint8_t *data, size_t len, const char *str_key,
                               const char *num_key, json_fields_t *out) {
  json_cursor_t c = {data, data + len, NULL};
  memset(out, 0, sizeof *out);
  json_ws(&c);
  if (c.p >= c.end) return "not JSON: empty input";
  if (*c.p != '{') {
    if (!json_skip(&c, 0)) return c.error;
    return "expected a JSON object";
  }
  c.p++;
  json_ws(&c);
  bool first = true;
  while (!(c.p < c.end && *c.p == '}' && first)) {
    char key[JSON_MAX_STRING + 1];
    bool too_long = false;
    json_ws(&c);
    if (c.p >= c.end || *c.p != '"') return "not JSON: expected a key";
    if (!json_string(&c, key, &too_long)) return c.error;
    json_ws(&c);
    if (c.p >= c.end || *c.p++ != ':') return "not JSON: expected ':'";
    json_ws(&c);
    if (c.p >= c.end) return "not JSON: unexpected end of input";
    if (!too_long && strcmp(key, str_key) == 0) {
      if (*c.p == '"') {
        bool long_value = false;
        if (!json_string(&c, out->str, &long_value)) return c.error;
        out->str_state = long_value ? FIELD_INVALID : FIELD_OK;
      } else {
        if (!json_skip(&c, 1)) return c.error;
        out->str_state = FIELD_INVALID;
      }
    } else if (!too_long && strcmp(key, num_key) == 0) {
      if ((*c.p >= '0' && *c.p <= '9') || *c.p == '-') {
        bool is_u64;
        if (!json_number(&c, &out->num, &is_u64)) return c.error;
        out->num_state = is_u64 ? FIELD_OK : FIELD_INVALID;
      } else {
        if (!json_skip(&c, 1)) return c.error;
        out->num_state = FIELD_INVALID;
      }
    } else if (!json_skip(&c, 1)) {
      return c.error;
    }
    json_ws(&c);
    if (c.p >= c.end) return "not JSON: unexpected end of input";
    uint8_t ch = *c.p++;
    if (ch == '}') goto done;
    if (ch != ',') return "not JSON: expected ',' or '}'";
    first = false;
  }
  c.p++;  // the '}' of an empty object
done:
  json_ws(&c);
  if (c.p != c.end) return "not JSON: trailing characters";
  return NULL;
}

#endif
