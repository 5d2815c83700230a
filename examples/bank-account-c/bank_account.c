// The bank-account entity (Akka's AccountEntity) for mneme, in C.
//
// Built into a WebAssembly component with clang (wasm32-wasi, reactor model, only
// the allocator and string functions of wasi-libc, which import nothing),
// wit-bindgen's C generator and `wasm-tools component new` (see build.sh). The
// handlers are pure: they decode the state and command bytes, decide, and return
// an effect description; mneme persists the events and releases the reply.
//
// Wire formats (shared with the Rust, Python and JavaScript versions, byte for byte):
//   commands  {"type":"CreateAccount"} {"type":"Deposit","amount":N}
//             {"type":"Withdraw","amount":N} {"type":"GetBalance"} {"type":"CloseAccount"}
//   events    {"type":"AccountCreated"} {"type":"Deposited","amount":N}
//             {"type":"Withdrawn","amount":N} {"type":"AccountClosed"}
//             manifest = the type string, tags = ["account"]
//   state     {"status":"empty"} {"status":"open","balance":N} {"status":"closed"}
//   replies   ok {"balance":N}
//
// Memory, as wit-bindgen's C bindings define it: the arguments of an exported
// function belong to the callee (we free them), and everything returned must be
// heap-allocated (the generated post-return function frees it).

#include <stdlib.h>
#include <string.h>

#include "entity.h"

// Tell the host why we are about to trap, then trap.
static _Noreturn void fault(const char *message) {
  entity_string_t s = {(uint8_t *)message, strlen(message)};
  mneme_entity_host_report_fault(&s);
  abort();
}
#define JSON_OUT_OF_MEMORY() fault("bank-account: out of memory")
#include "json.h"

#define TAG "account"

typedef enum { EMPTY, OPEN, CLOSED } status_t;

typedef struct {
  status_t status;
  uint64_t balance;  // OPEN only
} account_t;

typedef enum { CREATE_ACCOUNT, DEPOSIT, WITHDRAW, GET_BALANCE, CLOSE_ACCOUNT } command_kind_t;
typedef enum { ACCOUNT_CREATED, DEPOSITED, WITHDRAWN, ACCOUNT_CLOSED } event_kind_t;

static const char *const COMMAND_NAMES[] = {"CreateAccount", "Deposit", "Withdraw", "GetBalance",
                                            "CloseAccount"};
static const char *const EVENT_NAMES[] = {"AccountCreated", "Deposited", "Withdrawn",
                                          "AccountClosed"};
static const char *const STATUS_NAMES[] = {"empty", "open", "closed"};

static int find_name(const char *const *names, int count, const char *name) {
  for (int i = 0; i < count; i++)
    if (strcmp(names[i], name) == 0) return i;
  return -1;
}

// ------------------------------------------------------------------ errors

// Problems with the input are described in a buf_t and returned through the WIT
// `err` case (they are not faults).
static bool fail(buf_t *why, const char *message, const char *quoted) {
  buf_str(why, message);
  if (quoted) {
    buf_str(why, " ");
    buf_json_string(why, quoted);
  }
  return false;
}

#define AMOUNT_RANGE " must be an integer between 0 and 18446744073709551615"

// ------------------------------------------------------------------ state

static entity_list_u8_t encode_state(account_t a) {
  buf_t b = {0};
  buf_str(&b, "{\"status\":\"");
  buf_str(&b, STATUS_NAMES[a.status]);
  buf_str(&b, "\"");
  if (a.status == OPEN) {
    buf_str(&b, ",\"balance\":");
    buf_u64(&b, a.balance);
  }
  buf_str(&b, "}");
  return (entity_list_u8_t){b.ptr, b.len};
}

static bool decode_state(const entity_list_u8_t *bytes, account_t *out, buf_t *why) {
  json_fields_t f;
  const char *e = json_fields(bytes->ptr, bytes->len, "status", "balance", &f);
  if (e) return fail(why, e, NULL);
  int s = f.str_state == FIELD_OK ? find_name(STATUS_NAMES, 3, f.str) : -1;
  if (s < 0) return fail(why, "unknown status", f.str_state == FIELD_OK ? f.str : NULL);
  out->status = (status_t)s;
  out->balance = 0;
  if (out->status == OPEN) {
    if (f.num_state != FIELD_OK) return fail(why, "field `balance`" AMOUNT_RANGE, NULL);
    out->balance = f.num;
  }
  return true;
}

// ------------------------------------------------------------------ commands

static bool decode_command(const entity_list_u8_t *bytes, command_kind_t *kind, uint64_t *amount,
                           buf_t *why) {
  json_fields_t f;
  const char *e = json_fields(bytes->ptr, bytes->len, "type", "amount", &f);
  if (e) return fail(why, e, NULL);
  int k = f.str_state == FIELD_OK ? find_name(COMMAND_NAMES, 5, f.str) : -1;
  if (k < 0) {
    if (f.str_state == FIELD_OK) return fail(why, "unknown command type", f.str);
    return fail(why, "unknown command type null", NULL);
  }
  *kind = (command_kind_t)k;
  *amount = 0;
  if (k == DEPOSIT || k == WITHDRAW) {
    if (f.num_state != FIELD_OK) return fail(why, "field `amount`" AMOUNT_RANGE, NULL);
    *amount = f.num;
  }
  return true;
}

// ------------------------------------------------------------------ events

typedef struct {
  event_kind_t kind;
  uint64_t amount;  // DEPOSITED and WITHDRAWN
} event_t;

static void encode_event(mneme_entity_types_event_t *out, event_t ev) {
  buf_t b = {0};
  buf_str(&b, "{\"type\":\"");
  buf_str(&b, EVENT_NAMES[ev.kind]);
  buf_str(&b, "\"");
  if (ev.kind == DEPOSITED || ev.kind == WITHDRAWN) {
    buf_str(&b, ",\"amount\":");
    buf_u64(&b, ev.amount);
  }
  buf_str(&b, "}");
  entity_string_dup(&out->manifest, EVENT_NAMES[ev.kind]);
  out->payload = (entity_list_u8_t){b.ptr, b.len};
  out->tags.len = 1;
  out->tags.ptr = malloc(sizeof(entity_string_t));
  if (!out->tags.ptr) JSON_OUT_OF_MEMORY();
  entity_string_dup(&out->tags.ptr[0], TAG);
}

// Decode a stored event into the current schema. The manifest names the schema:
// when an event's shape changes, give the new shape a new manifest (e.g.
// "Deposited.v2") and translate the old ones here, so old journals still replay.
static bool upcast(const mneme_entity_types_event_t *stored, event_t *out, buf_t *why) {
  char manifest[JSON_MAX_STRING + 1];
  size_t n = stored->manifest.len > JSON_MAX_STRING ? JSON_MAX_STRING : stored->manifest.len;
  memcpy(manifest, stored->manifest.ptr, n);
  manifest[n] = 0;
  int kind = stored->manifest.len > JSON_MAX_STRING ? -1 : find_name(EVENT_NAMES, 4, manifest);
  if (kind < 0) return fail(why, "unknown event manifest", manifest);
  json_fields_t f;
  const char *e = json_fields(stored->payload.ptr, stored->payload.len, "type", "amount", &f);
  if (e) return fail(why, e, NULL);
  out->kind = (event_kind_t)kind;
  out->amount = 0;
  if (kind == DEPOSITED || kind == WITHDRAWN) {
    if (f.num_state != FIELD_OK) return fail(why, "field `amount`" AMOUNT_RANGE, NULL);
    out->amount = f.num;
  }
  return true;
}

static bool apply(account_t *a, event_t ev, buf_t *why) {
  if (a->status == EMPTY && ev.kind == ACCOUNT_CREATED) {
    *a = (account_t){OPEN, 0};
    return true;
  }
  if (a->status == OPEN) {
    switch (ev.kind) {
      // Saturating, as the Rust version (the command handler never goes past the limits).
      case DEPOSITED:
        a->balance = a->balance > UINT64_MAX - ev.amount ? UINT64_MAX : a->balance + ev.amount;
        return true;
      case WITHDRAWN:
        a->balance = ev.amount > a->balance ? 0 : a->balance - ev.amount;
        return true;
      case ACCOUNT_CLOSED:
        *a = (account_t){CLOSED, 0};
        return true;
      default:
        break;
    }
  }
  buf_str(why, "event ");
  buf_str(why, EVENT_NAMES[ev.kind]);
  buf_str(why, " cannot be applied to an account in state ");
  buf_str(why, STATUS_NAMES[a->status]);
  return false;
}

// ------------------------------------------------------------------ effects

static void init_effect(mneme_entity_types_effect_t *fx, uint8_t action) {
  memset(fx, 0, sizeof *fx);  // reply: none, then: [], unstash-all: false, stop: false
  fx->action.tag = action;
}

static void reply_balance(mneme_entity_types_effect_t *fx, uint64_t balance) {
  buf_t b = {0};
  buf_str(&b, "{\"balance\":");
  buf_u64(&b, balance);
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

static void persist_and_reply(mneme_entity_types_effect_t *fx, event_t ev, uint64_t balance) {
  init_effect(fx, MNEME_ENTITY_TYPES_ACTION_PERSIST);
  fx->action.val.persist.len = 1;
  fx->action.val.persist.ptr = malloc(sizeof(mneme_entity_types_event_t));
  if (!fx->action.val.persist.ptr) JSON_OUT_OF_MEMORY();
  encode_event(&fx->action.val.persist.ptr[0], ev);
  reply_balance(fx, balance);
}

// "Account <id> <what>" as an error reply.
static void reply_account_error(mneme_entity_types_effect_t *fx, const entity_string_t *id,
                                const char *what) {
  buf_t msg = {0};
  buf_str(&msg, "Account ");
  buf_bytes(&msg, id->ptr, id->len);
  buf_str(&msg, what);
  reply_error(fx, (const char *)msg.ptr);
  free(msg.ptr);
}

static void decide(account_t a, command_kind_t cmd, uint64_t amount, const entity_string_t *id,
                   mneme_entity_types_effect_t *fx) {
  if (a.status == EMPTY) {
    if (cmd == CREATE_ACCOUNT)
      persist_and_reply(fx, (event_t){ACCOUNT_CREATED, 0}, 0);
    else
      init_effect(fx, MNEME_ENTITY_TYPES_ACTION_UNHANDLED);
    return;
  }
  if (a.status == CLOSED) {
    if (cmd == GET_BALANCE) {
      init_effect(fx, MNEME_ENTITY_TYPES_ACTION_NONE);
      reply_balance(fx, 0);
    } else {
      reply_account_error(fx, id, " is closed");
    }
    return;
  }
  buf_t msg = {0};
  switch (cmd) {
    case DEPOSIT:
      if (a.balance > UINT64_MAX - amount) {
        buf_str(&msg, "Deposit of ");
        buf_u64(&msg, amount);
        buf_str(&msg, " would overflow the balance ");
        buf_u64(&msg, a.balance);
        reply_error(fx, (const char *)msg.ptr);
        free(msg.ptr);
      } else {
        persist_and_reply(fx, (event_t){DEPOSITED, amount}, a.balance + amount);
      }
      return;
    case WITHDRAW:
      if (amount > a.balance) {
        buf_str(&msg, "Insufficient balance ");
        buf_u64(&msg, a.balance);
        buf_str(&msg, " to be able to withdraw ");
        buf_u64(&msg, amount);
        reply_error(fx, (const char *)msg.ptr);
        free(msg.ptr);
      } else {
        persist_and_reply(fx, (event_t){WITHDRAWN, amount}, a.balance - amount);
      }
      return;
    case GET_BALANCE:
      init_effect(fx, MNEME_ENTITY_TYPES_ACTION_NONE);
      reply_balance(fx, a.balance);
      return;
    case CLOSE_ACCOUNT:
      if (a.balance != 0)
        reply_error(fx, "Can't close account with non-zero balance");
      else
        persist_and_reply(fx, (event_t){ACCOUNT_CLOSED, 0}, 0);
      return;
    case CREATE_ACCOUNT:
      reply_account_error(fx, id, " is already created");
      return;
  }
}

// ------------------------------------------------------------------ the export

void exports_mneme_entity_handler_describe(exports_mneme_entity_handler_entity_info_t *ret) {
  entity_string_dup(&ret->type_name, "bank-account");
  ret->state_version = 1;
  ret->snapshot_every = 100;
}

void exports_mneme_entity_handler_empty_state(entity_list_u8_t *ret) {
  *ret = encode_state((account_t){EMPTY, 0});
}

bool exports_mneme_entity_handler_handle_command(entity_list_u8_t *state,
                                                 exports_mneme_entity_handler_command_t *command,
                                                 exports_mneme_entity_handler_effect_t *ret,
                                                 entity_string_t *err) {
  buf_t why = {0};
  command_kind_t kind;
  uint64_t amount;
  account_t account;
  bool ok = false;
  if (!decode_command(&command->payload, &kind, &amount, &why)) {
    buf_t msg = {0};
    buf_str(&msg, "malformed command: ");
    buf_bytes(&msg, why.ptr, why.len);
    *err = (entity_string_t){msg.ptr, msg.len};
  } else if (!decode_state(state, &account, &why)) {
    buf_t msg = {0};
    buf_str(&msg, "corrupt state: ");
    buf_bytes(&msg, why.ptr, why.len);
    *err = (entity_string_t){msg.ptr, msg.len};
  } else {
    decide(account, kind, amount, &command->metadata.entity_id, ret);
    ok = true;
  }
  free(why.ptr);
  entity_list_u8_free(state);
  exports_mneme_entity_handler_command_free(command);
  return ok;
}

bool exports_mneme_entity_handler_apply_events(entity_list_u8_t *state,
                                               exports_mneme_entity_handler_list_event_t *events,
                                               entity_list_u8_t *ret, entity_string_t *err) {
  buf_t why = {0};
  account_t account;
  bool ok = decode_state(state, &account, &why);
  for (size_t i = 0; ok && i < events->len; i++) {
    event_t ev;
    ok = upcast(&events->ptr[i], &ev, &why) && apply(&account, ev, &why);
  }
  if (ok) {
    *ret = encode_state(account);
    free(why.ptr);
  } else {
    *err = (entity_string_t){why.ptr, why.len};
  }
  entity_list_u8_free(state);
  exports_mneme_entity_handler_list_event_free(events);
  return ok;
}

void exports_mneme_entity_handler_on_recovery_completed(entity_list_u8_t *state,
                                                        exports_mneme_entity_handler_list_side_effect_t *ret) {
  entity_list_u8_free(state);
  ret->ptr = NULL;
  ret->len = 0;
}
