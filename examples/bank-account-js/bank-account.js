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
// Amounts are JavaScript numbers: this version accepts integers up to
// Number.MAX_SAFE_INTEGER (2^53 - 1) and rejects larger ones as malformed.

import { reportFault } from 'mneme:entity/host@0.1.0';

const TAGS = ['account'];
const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

// ------------------------------------------------------------------ encoding

// JSON.stringify is compact and keeps insertion order: the shared format.
const encode = (value) => encoder.encode(JSON.stringify(value));

function decode(bytes) {
  let value;
  try {
    value = JSON.parse(decoder.decode(bytes));
  } catch (e) {
    throw new DomainError(`not JSON: ${e.message}`);
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new DomainError('expected a JSON object');
  }
  return value;
}

// A problem with the input (reported through the WIT `err` case), as opposed to
// a bug (which traps).
class DomainError extends Error {}

function amount(obj, field) {
  const value = obj[field];
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new DomainError(`field \`${field}\` must be an integer between 0 and ${Number.MAX_SAFE_INTEGER}`);
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
    default: throw new DomainError(`unknown status ${JSON.stringify(state.status)}`);
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
  const fields = Object.hasOwn(COMMANDS, cmd.type) ? COMMANDS[cmd.type] : undefined;
  if (!fields) throw new DomainError(`unknown command type ${JSON.stringify(cmd.type)}`);
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
      throw new DomainError(`unknown event manifest ${JSON.stringify(ev.manifest)}`);
  }
}

function apply(state, ev) {
  if (state.status === 'empty' && ev.type === 'AccountCreated') return opened(0);
  if (state.status === 'open') {
    switch (ev.type) {
      case 'Deposited': {
        const balance = state.balance + ev.amount;
        if (!Number.isSafeInteger(balance)) throw new DomainError('balance overflow');
        return opened(balance);
      }
      case 'Withdrawn':
        if (ev.amount > state.balance) throw new DomainError('balance would become negative');
        return opened(state.balance - ev.amount);
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

function decide(state, cmd) {
  if (state.status === 'empty') {
    if (cmd.type === 'CreateAccount') return persistAndReply([{ type: 'AccountCreated' }], 0);
    return effect({ tag: 'unhandled' });
  }
  if (state.status === 'closed') return error('Account is closed');
  const balance = state.balance;
  switch (cmd.type) {
    case 'Deposit': {
      const next = balance + cmd.amount;
      if (!Number.isSafeInteger(next)) return error(`Deposit of ${cmd.amount} would overflow balance ${balance}`);
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
      if (balance !== 0) return error("Can't close account with non-zero balance");
      return persistAndReply([{ type: 'AccountClosed' }], 0);
    default: // CreateAccount on an open account
      return error('Account is already created');
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

export const handler = {
  describe() {
    return { typeName: 'bank-account', stateVersion: 1, snapshotEvery: 100n };
  },

  emptyState() {
    return encode(empty());
  },

  handleCommand(state, command) {
    const cmd = guard('handle-command', 'malformed command: ', () => decodeCommand(command.payload));
    const current = guard('handle-command', 'corrupt state: ', () => decodeState(state));
    return guard('handle-command', '', () => decide(current, cmd));
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
