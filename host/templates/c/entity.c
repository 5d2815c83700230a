// The {{name}} entity for mneme, in C: a counter that can be closed.
//
// Commands  {"type":"Increment","by":N} {"type":"Get"} {"type":"Close"}
// Events    {"type":"Incremented","by":N} {"type":"Closed"}  (manifest = type, tag "{{name}}")
// State     {"value":N,"closed":false}
// Replies   {"value":N}
// An unknown command type is malformed (400); Increment or Close once closed is
// unhandled (409); Increment by 0 is an error reply (422). Close publishes
// {"id":...,"value":N} to the topic "{{name}}".
//
// Memory, as wit-bindgen's C bindings define it: the arguments of an exported
// function belong to the callee (we free them), and everything returned must be
// heap-allocated (the generated post-return function frees it).

#include <stdlib.h>
#include <string.h>

#include "entity.h"

#define TYPE_NAME "{{name}}"

static _Noreturn void fault(const char *message) {
  entity_string_t s = {(uint8_t *)message, strlen(message)};
  mneme_entity_host_report_fault(&s);
  abort();
}
#define JSON_OUT_OF_MEMORY() fault(TYPE_NAME ": out of memory")
#include "json.h"

typedef struct {
  uint64_t value;
  bool closed;
} counter_t;

typedef enum { INCREMENT, GET, CLOSE } command_kind_t;

static entity_list_u8_t encode_state(counter_t c) {
  buf_t b = {0};
  buf_str(&b, "{\"value\":");
  buf_u64(&b, c.value);
  buf_str(&b, c.closed ? ",\"closed\":true}" : ",\"closed\":false}");
  return (entity_list_u8_t){b.ptr, b.len};
}

// The state is only ever written by encode_state.
static bool decode_state(const entity_list_u8_t *bytes, counter_t *out) {
  json_fields_t f;
  if (json_fields(bytes->ptr, bytes->len, "closed", "value", &f) || f.num_state != FIELD_OK) return false;
  out->value = f.num;
  const char *t = ",\"closed\":true}";
  size_t n = strlen(t);
  out->closed = bytes->len >= n && memcmp(bytes->ptr + bytes->len - n, t, n) == 0;
  return true;
}

// NULL, or why the command is malformed.
static const char *decode_command(const entity_list_u8_t *bytes, command_kind_t *kind, uint64_t *by) {
  json_fields_t f;
  const char *e = json_fields(bytes->ptr, bytes->len, "type", "by", &f);
  if (e) return e;
  if (f.str_state != FIELD_OK) return "unknown command type";
  if (strcmp(f.str, "Increment") == 0) {
    if (f.num_state != FIELD_OK) return "field `by` must be an integer between 0 and 2^64-1";
    *kind = INCREMENT;
    *by = f.num;
  } else if (strcmp(f.str, "Get") == 0) {
    *kind = GET;
  } else if (strcmp(f.str, "Close") == 0) {
    *kind = CLOSE;
  } else {
    return "unknown command type";
  }
  return NULL;
}

static void init_effect(mneme_entity_types_effect_t *fx, uint8_t action) {
  memset(fx, 0, sizeof *fx);  // reply: none, then: [], unstash-all: false, stop: false
  fx->action.tag = action;
}

static void reply_value(mneme_entity_types_effect_t *fx, uint64_t value) {
  buf_t b = {0};
  buf_str(&b, "{\"value\":");
  buf_u64(&b, value);
  buf_str(&b, "}");
  fx->reply.is_some = true;
  fx->reply.val.tag = MNEME_ENTITY_TYPES_REPLY_OK;
  fx->reply.val.val.ok = (entity_list_u8_t){b.ptr, b.len};
}

static void reply_error(mneme_entity_types_effect_t *fx, const char *message) {
  init_effect(fx, MNEME_ENTITY_TYPES_ACTION_NONE);
  fx->reply.is_some = true;
  fx->reply.val.tag = MNEME_ENTITY_TYPES_REPLY_ERROR;
  entity_string_dup(&fx->reply.val.val.error, message);
}

// Persist one event {"type":<manifest>[,"by":N]}, tagged with the type name.
static void persist(mneme_entity_types_effect_t *fx, const char *manifest, const uint64_t *by) {
  init_effect(fx, MNEME_ENTITY_TYPES_ACTION_PERSIST);
  mneme_entity_types_event_t *ev = calloc(1, sizeof *ev);
  if (!ev) JSON_OUT_OF_MEMORY();
  buf_t b = {0};
  buf_str(&b, "{\"type\":");
  buf_json_string(&b, manifest);
  if (by) {
    buf_str(&b, ",\"by\":");
    buf_u64(&b, *by);
  }
  buf_str(&b, "}");
  entity_string_dup(&ev->manifest, manifest);
  ev->payload = (entity_list_u8_t){b.ptr, b.len};
  ev->tags.len = 1;
  ev->tags.ptr = malloc(sizeof(entity_string_t));
  if (!ev->tags.ptr) JSON_OUT_OF_MEMORY();
  entity_string_dup(&ev->tags.ptr[0], TYPE_NAME);
  fx->action.val.persist.len = 1;
  fx->action.val.persist.ptr = ev;
}

// Publish {"id":<entity id>,"value":N} to the topic named like the type.
static void publish_closed(mneme_entity_types_effect_t *fx, const entity_string_t *id, uint64_t value) {
  buf_t b = {0}, idz = {0};
  buf_bytes(&idz, id->ptr, id->len);  // NUL-terminated copy
  buf_str(&b, "{\"id\":");
  buf_json_string(&b, (const char *)idz.ptr);
  buf_str(&b, ",\"value\":");
  buf_u64(&b, value);
  buf_str(&b, "}");
  free(idz.ptr);
  mneme_entity_types_side_effect_t *se = calloc(1, sizeof *se);
  if (!se) JSON_OUT_OF_MEMORY();
  se->tag = MNEME_ENTITY_TYPES_SIDE_EFFECT_PUBLISH;
  entity_string_dup(&se->val.publish.topic, TYPE_NAME);
  se->val.publish.payload = (entity_list_u8_t){b.ptr, b.len};
  fx->then.len = 1;
  fx->then.ptr = se;
}

static void decide(counter_t c, command_kind_t kind, uint64_t by, const entity_string_t *id,
                   mneme_entity_types_effect_t *fx) {
  if (kind == GET) {
    init_effect(fx, MNEME_ENTITY_TYPES_ACTION_NONE);
    reply_value(fx, c.value);
  } else if (c.closed) {
    init_effect(fx, MNEME_ENTITY_TYPES_ACTION_UNHANDLED);  // known, not in this state: 409
  } else if (kind == INCREMENT && by == 0) {
    reply_error(fx, "by must be at least 1");
  } else if (kind == INCREMENT && c.value + by < c.value) {
    reply_error(fx, "adding that would overflow the value");
  } else if (kind == INCREMENT) {
    persist(fx, "Incremented", &by);
    reply_value(fx, c.value + by);
  } else {
    persist(fx, "Closed", NULL);
    reply_value(fx, c.value);
    publish_closed(fx, id, c.value);
  }
}

// ------------------------------------------------------------------ the export

void exports_mneme_entity_handler_describe(exports_mneme_entity_handler_entity_info_t *ret) {
  entity_string_dup(&ret->type_name, TYPE_NAME);
  ret->state_version = 1;
  ret->snapshot_every = 0;
}

void exports_mneme_entity_handler_empty_state(entity_list_u8_t *ret) {
  *ret = encode_state((counter_t){0, false});
}

bool exports_mneme_entity_handler_handle_command(entity_list_u8_t *state,
                                                 exports_mneme_entity_handler_command_t *command,
                                                 exports_mneme_entity_handler_effect_t *ret,
                                                 entity_string_t *err) {
  command_kind_t kind = GET;
  uint64_t by = 0;
  counter_t c;
  bool ok = false;
  const char *why = decode_command(&command->payload, &kind, &by);
  if (why) {
    buf_t msg = {0};
    buf_str(&msg, "malformed command: ");
    buf_str(&msg, why);
    *err = (entity_string_t){msg.ptr, msg.len};
  } else if (!decode_state(state, &c)) {
    fault("handle-command: corrupt state");
  } else {
    decide(c, kind, by, &command->metadata.entity_id, ret);
    ok = true;
  }
  entity_list_u8_free(state);
  exports_mneme_entity_handler_command_free(command);
  return ok;
}

bool exports_mneme_entity_handler_apply_events(entity_list_u8_t *state,
                                               exports_mneme_entity_handler_list_event_t *events,
                                               entity_list_u8_t *ret, entity_string_t *err) {
  counter_t c;
  const char *why = decode_state(state, &c) ? NULL : "corrupt state";
  for (size_t i = 0; !why && i < events->len; i++) {
    // The manifest names the event's schema: upcast old manifests here.
    const entity_string_t *m = &events->ptr[i].manifest;
    if (m->len == 11 && memcmp(m->ptr, "Incremented", 11) == 0) {
      json_fields_t f;
      const entity_list_u8_t *p = &events->ptr[i].payload;
      if (json_fields(p->ptr, p->len, "type", "by", &f) || f.num_state != FIELD_OK) {
        why = "Incremented without a valid `by`";
      } else {
        c.value = c.value + f.num < c.value ? UINT64_MAX : c.value + f.num;
      }
    } else if (m->len == 6 && memcmp(m->ptr, "Closed", 6) == 0) {
      c.closed = true;
    } else {
      why = "unknown event manifest";
    }
  }
  if (why) {
    entity_string_dup(err, why);
  } else {
    *ret = encode_state(c);
  }
  entity_list_u8_free(state);
  exports_mneme_entity_handler_list_event_free(events);
  return !why;
}

void exports_mneme_entity_handler_on_recovery_completed(entity_list_u8_t *state,
                                                        exports_mneme_entity_handler_list_side_effect_t *ret) {
  entity_list_u8_free(state);
  ret->ptr = NULL;
  ret->len = 0;
}
