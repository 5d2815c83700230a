// The bank-account entity (Akka's AccountEntity) for mneme, in JavaScript.
//
// Built into a WebAssembly component with ComponentizeJS (see build.mjs). The
// handlers are pure: they decode the state and command bytes, decide, and return
// an effect description; mneme persists the events and releases the reply.
//
// Wire formats (shared with the Rust, Python and C versions, byte for byte):
//   commands  {"type":"CreateAccount"} {"type":"Deposit","amount":N}
//             {"type":"Withdraw","amount":N} {"type":"GetBalance"} {"type":"CloseAccount"}
//   events    {"type":"AccountCreated"} {"type":"Deposited","amount":N}
//             {"type":"Withdrawn","amount":N} {"type":"AccountClosed"}
//             manifest = the type string, tags = ["account"]
//   state     {"status":"empty"} {"status":"open","balance":N} {"status":"closed"}
//   replies   ok {"balance":N}
//

import { reportFault } from 'mneme:entity/host@0.2.0';

const TAGS = ['account'];
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

// ------------------------------------------------------------------ encoding

// Amounts and balances are u64, as in the Rust version: BigInt here, because a JS
// number is exact only up to 2^53. JSON.parse/stringify would go through numbers,
// so this file reads JSON with a small parser that keeps integers as BigInt, and
// writes the flat objects it needs itself (compact, keys in insertion order: the
// shared byte-for-byte format).
const U64_MAX = 2n ** 64n - 1n;

function encode(obj) {
  const fields = Object.entries(obj).map(
    ([k, v]) => `${JSON.stringify(k)}:${typeof v === 'bigint' ? v.toString() : JSON.stringify(v)}`,
  );
  return encoder.encode(`{${fields.join(',')}}`);
}

// A problem with the input (reported through the WIT `err` case), as opposed to
// a bug (which traps).
class DomainError extends Error {}

const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;
const STRING = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

// A JSON value in an error message.
function show(v) {
  if (typeof v === 'bigint') return v.toString();
  try {
    return JSON.stringify(v) ?? 'null';
  } catch {
    return typeof v; // an object holding a BigInt
  }
}

// Parses JSON text; integers (no fraction, no exponent) become BigInt.
function parseJson(text) {
  let i = 0;
  const fail = (what) => {
    throw new DomainError(`not JSON: ${what} at character ${i}`);
  };
  const ws = () => {
    while (i < text.length && ' \t\n\r'.includes(text[i])) i++;
  };
  const value = (depth) => {
    if (depth > 64) fail('nested too deeply');
    ws();
    const c = text[i];
    if (c === '{') {
      const obj = Object.create(null); // so that a "__proto__" key is just a key
      i++;
      ws();
      if (text[i] === '}') { i++; return obj; }
      for (;;) {
        ws();
        if (text[i] !== '"') fail('expected a key');
        const key = string();
        ws();
        if (text[i++] !== ':') fail("expected ':'");
        obj[key] = value(depth + 1);
        ws();
        const d = text[i++];
        if (d === '}') return obj;
        if (d !== ',') fail("expected ',' or '}'");
      }
    }
    if (c === '[') {
      const arr = [];
      i++;
      ws();
      if (text[i] === ']') { i++; return arr; }
      for (;;) {
        arr.push(value(depth + 1));
        ws();
        const d = text[i++];
        if (d === ']') return arr;
        if (d !== ',') fail("expected ',' or ']'");
      }
    }
    if (c === '"') return string();
    for (const [word, v] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, i)) { i += word.length; return v; }
    }
    NUMBER.lastIndex = i;
    const m = NUMBER.exec(text);
    if (!m) fail(c === undefined ? 'unexpected end of input' : 'unexpected character');
    i += m[0].length;
    return m[2] === undefined && m[3] === undefined ? BigInt(m[0]) : Number(m[0]);
  };
  const string = () => {
    STRING.lastIndex = i;
    const m = STRING.exec(text);
    if (!m) fail('invalid string');
    i += m[0].length;
    return JSON.parse(m[0]);
  };
  const result = value(0);
  ws();
  if (i !== text.length) fail('trailing characters');
  return result;
}

function decode(bytes) {
  let text;
  try {
    text = decoder.decode(bytes);
  } catch (e) {
    throw new DomainError('not JSON: invalid UTF-8');
  }
  const value = parseJson(text);
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new DomainError('expected a JSON object');
  }
  return value;
}

function amount(obj, field) {
  const value = obj[field];
  if (typeof value !== 'bigint' || value < 0n || value > U64_MAX) {
    throw new DomainError(`field \`${field}\` must be an integer between 0 and ${U64_MAX}`);
  }
  return value;
}

const empty = () => ({ status: 'empty' });
const opened = (balance) => ({ status: 'open', balance });
const closed = () => ({ status: 'closed' });

function decodeState(bytes) {
  const state = decode(bytes);
  switch (state.status) {
    case 'empty': return empty();
    case 'open': return opened(amount(state, 'balance'));
    case 'closed': return closed();
    default: throw new DomainError(`unknown status ${show(state.status)}`);
  }
}

// ------------------------------------------------------------------ commands

const COMMANDS = {
  CreateAccount: [],
  Deposit: ['amount'],
  Withdraw: ['amount'],
  GetBalance: [],
  CloseAccount: [],
};

function decodeCommand(bytes) {
  const cmd = decode(bytes);
  const fields = typeof cmd.type === 'string' && Object.hasOwn(COMMANDS, cmd.type) ? COMMANDS[cmd.type] : undefined;
  if (!fields) throw new DomainError(`unknown command type ${show(cmd.type)}`);
  const result = { type: cmd.type };
  for (const field of fields) result[field] = amount(cmd, field);
  return result;
}

// ------------------------------------------------------------------ events

const event = (payload) => ({ manifest: payload.type, payload: encode(payload), tags: TAGS });

// Decode a stored event into the current schema. The manifest names the schema:
// when an event's shape changes, give the new shape a new manifest (e.g.
// "Deposited.v2") and translate the old ones here, so old journals still replay.
function upcast(ev) {
  const payload = decode(ev.payload);
  switch (ev.manifest) {
    case 'AccountCreated':
    case 'AccountClosed':
      return { type: ev.manifest };
    case 'Deposited':
    case 'Withdrawn':
      return { type: ev.manifest, amount: amount(payload, 'amount') };
    default:
      throw new DomainError(`unknown event manifest ${show(ev.manifest)}`);
  }
}

// The events of a packed batch (`replay.apply-event-batch` in wit/entity.wit):
// each is manifest length (u32 LE), manifest, payload length (u32 LE), payload.
function* unpack(batch) {
  const view = new DataView(batch.buffer, batch.byteOffset, batch.byteLength);
  let pos = 0;
  const field = (what) => {
    if (pos + 4 > batch.length) throw new DomainError(`an event batch ends inside an event's ${what}`);
    const length = view.getUint32(pos, true);
    pos += 4;
    if (pos + length > batch.length) throw new DomainError(`an event batch ends inside an event's ${what}`);
    const bytes = batch.subarray(pos, pos + length);
    pos += length;
    return bytes;
  };
  while (pos < batch.length) {
    let manifest;
    try {
      manifest = decoder.decode(field('manifest'));
    } catch (e) {
      if (e instanceof DomainError) throw e;
      throw new DomainError('an event batch holds a manifest that is not UTF-8');
    }
    yield { manifest, payload: field('payload') };
  }
}

function apply(state, ev) {
  if (state.status === 'empty' && ev.type === 'AccountCreated') return opened(0n);
  if (state.status === 'open') {
    switch (ev.type) {
      // Saturating, as the Rust version (the command handler never goes past the limits).
      case 'Deposited': {
        const balance = state.balance + ev.amount;
        return opened(balance > U64_MAX ? U64_MAX : balance);
      }
      case 'Withdrawn':
        return opened(ev.amount > state.balance ? 0n : state.balance - ev.amount);
      case 'AccountClosed':
        return closed();
    }
  }
  throw new DomainError(`event ${ev.type} cannot be applied to an account in state ${state.status}`);
}

// ------------------------------------------------------------------ effects

// WIT `effect` record; variants are { tag, val }, option<reply> is the value or undefined.
const effect = (action, reply = undefined) => ({ action, reply, then: [], unstashAll: false, stop: false });
const ok = (body) => ({ tag: 'ok', val: encode(body) });
const error = (message) => effect({ tag: 'none' }, { tag: 'error', val: message });
const persistAndReply = (events, balance) =>
  effect({ tag: 'persist', val: events.map(event) }, ok({ balance }));

function decideEffect(state, cmd, accountNumber) {
  if (state.status === 'empty') {
    if (cmd.type === 'CreateAccount') return persistAndReply([{ type: 'AccountCreated' }], 0n);
    return effect({ tag: 'unhandled' });
  }
  if (state.status === 'closed') {
    if (cmd.type === 'GetBalance') return effect({ tag: 'none' }, ok({ balance: 0n }));
    return error(`Account ${accountNumber} is closed`);
  }
  const balance = state.balance;
  switch (cmd.type) {
    case 'Deposit': {
      const next = balance + cmd.amount;
      if (next > U64_MAX) return error(`Deposit of ${cmd.amount} would overflow the balance ${balance}`);
      return persistAndReply([{ type: 'Deposited', amount: cmd.amount }], next);
    }
    case 'Withdraw':
      if (cmd.amount > balance) {
        return error(`Insufficient balance ${balance} to be able to withdraw ${cmd.amount}`);
      }
      return persistAndReply([{ type: 'Withdrawn', amount: cmd.amount }], balance - cmd.amount);
    case 'GetBalance':
      return effect({ tag: 'none' }, ok({ balance }));
    case 'CloseAccount':
      if (balance !== 0n) return error("Can't close account with non-zero balance");
      return persistAndReply([{ type: 'AccountClosed' }], 0n);
    default: // CreateAccount on an open account
      return error(`Account ${accountNumber} is already created`);
  }
}

// ------------------------------------------------------------------ the export

// For a WIT `result<T, string>` return value, ComponentizeJS turns a thrown
// string into `err(string)`; anything else thrown traps. Bugs trap, after telling
// the host why through `report-fault`.
function guard(what, prefix, body) {
  try {
    return body();
  } catch (e) {
    if (e instanceof DomainError) throw `${prefix}${e.message}`;
    reportFault(`${what}: ${e && e.stack ? `${e}\n${e.stack}` : e}`);
    throw e;
  }
}

// The state, decoded, and what to do with the command.
function decideCommand(state, command) {
  const cmd = guard('handle-command', 'malformed command: ', () => decodeCommand(command.payload));
  const current = guard('handle-command', 'corrupt state: ', () => decodeState(state));
  return { current, effect: guard('handle-command', '', () => decideEffect(current, cmd, command.metadata.entityId)) };
}

export const handler = {
  describe() {
    return { typeName: 'bank-account', stateVersion: 1, snapshotEvery: 100n };
  },

  emptyState() {
    return encode(empty());
  },

  handleCommand(state, command) {
    return decideCommand(state, command).effect;
  },

  applyEvents(state, events) {
    return guard('apply-events', '', () => {
      let current = decodeState(state);
      for (const ev of events) current = apply(current, upcast(ev));
      return encode(current);
    });
  },

  onRecoveryCompleted(_state) {
    return [];
  },
};

// One call per command: decide, and fold the events decided on into the state
// decoded once (the host keeps the state returned here).
export const decide = {
  handleCommandAndApply(state, command) {
    let { current, effect } = decideCommand(state, command);
    if (effect.action.tag !== 'persist') return { effect, stateAfter: undefined };
    try {
      for (const ev of effect.action.val) current = apply(current, upcast(ev));
    } catch (e) {
      // Events this handler just decided on that do not apply are a bug: trap.
      reportFault(`handle-command-and-apply: ${e && e.stack ? `${e}\n${e.stack}` : e}`);
      throw new Error(`${e}`);
    }
    return { effect, stateAfter: encode(current) };
  },
};

// Recovery's packed batches: one buffer per batch, read in place.
export const replay = {
  applyEventBatch(state, batch) {
    return guard('apply-event-batch', '', () => {
      let current = decodeState(state);
      for (const ev of unpack(batch)) current = apply(current, upcast(ev));
      return encode(current);
    });
  },
};
