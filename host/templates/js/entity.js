// The {{name}} entity for mneme: a counter that can be closed.
//
// Commands  {"type":"Increment","by":N} {"type":"Get"} {"type":"Close"}
// Events    {"type":"Incremented","by":N} {"type":"Closed"}  (manifest = type, tag "{{name}}")
// State     {"value":N,"closed":false}
// Replies   {"value":N}
// An unknown command type is malformed (400); Increment or Close once closed is
// unhandled (409); Increment by 0 is an error reply (422). Close publishes
// {"id":...,"value":N} to the topic "{{name}}".
// Numbers stay below 2^53 here (plain JSON.parse); see mneme's bank-account-js
// for exact u64 amounts with BigInt.

import { reportFault } from 'mneme:entity/host@0.2.0';

const TYPE_NAME = '{{name}}';
const TAGS = [TYPE_NAME];
const encoder = new TextEncoder();
const decoder = new TextDecoder();

const encode = (value) => encoder.encode(JSON.stringify(value));
const decode = (bytes) => JSON.parse(decoder.decode(bytes));

// A problem with the input: reported as `err` (400), not a trap.
class Malformed extends Error {}

function decodeCommand(bytes) {
  let cmd;
  try {
    cmd = decode(bytes);
  } catch (e) {
    throw new Malformed(`not JSON: ${e.message}`);
  }
  const kind = cmd && typeof cmd === 'object' ? cmd.type : undefined;
  if (kind === 'Increment') {
    if (!Number.isSafeInteger(cmd.by) || cmd.by < 0) throw new Malformed('field `by` must be a non-negative integer');
    return { type: kind, by: cmd.by };
  }
  if (kind === 'Get' || kind === 'Close') return { type: kind };
  throw new Malformed(`unknown command type ${JSON.stringify(kind)}`);
}

// WIT `effect` record; variants are { tag, val }, option<reply> is the value or undefined.
const effect = (action, reply = undefined, then = []) => ({ action, reply, then, unstashAll: false, stop: false });
const event = (payload) => ({ manifest: payload.type, payload: encode(payload), tags: TAGS });
const value = (state) => ({ tag: 'ok', val: encode({ value: state.value }) });

// Fold one stored event; its manifest names its schema (upcast old ones here).
function apply(state, ev) {
  const payload = decode(ev.payload);
  switch (ev.manifest) {
    case 'Incremented': return { value: state.value + payload.by, closed: state.closed };
    case 'Closed': return { value: state.value, closed: true };
    default: throw new Malformed(`unknown event manifest ${JSON.stringify(ev.manifest)}`);
  }
}

function decide(state, cmd, entityId) {
  if (cmd.type === 'Get') return effect({ tag: 'none' }, value(state));
  if (state.closed) return effect({ tag: 'unhandled' }); // a known command this state does not accept: 409
  if (cmd.type === 'Increment') {
    if (cmd.by === 0) return effect({ tag: 'none' }, { tag: 'error', val: 'by must be at least 1' });
    const after = { value: state.value + cmd.by, closed: false };
    if (!Number.isSafeInteger(after.value)) {
      return effect({ tag: 'none' }, { tag: 'error', val: `adding ${cmd.by} would overflow the value ${state.value}` });
    }
    return effect({ tag: 'persist', val: [event({ type: 'Incremented', by: cmd.by })] }, value(after));
  }
  // Close: persist, reply, and publish once the event is durable.
  const closed = { tag: 'publish', val: { topic: TYPE_NAME, payload: encode({ id: entityId, value: state.value }) } };
  return effect({ tag: 'persist', val: [event({ type: 'Closed' })] }, value(state), [closed]);
}

// A thrown string becomes `err(string)`; anything else thrown traps, after
// telling the host why.
function guard(what, body) {
  try {
    return body();
  } catch (e) {
    if (e instanceof Malformed) throw `${what === 'handle-command' ? 'malformed command: ' : ''}${e.message}`;
    reportFault(`${what}: ${e && e.stack ? `${e}\n${e.stack}` : e}`);
    throw e;
  }
}

export const handler = {
  describe() {
    return { typeName: TYPE_NAME, stateVersion: 1, snapshotEvery: 0n }; // u64: BigInt
  },
  emptyState() {
    return encode({ value: 0, closed: false });
  },
  handleCommand(state, command) {
    const cmd = guard('handle-command', () => decodeCommand(command.payload));
    return guard('decide', () => decide(decode(state), cmd, command.metadata.entityId));
  },
  applyEvents(state, events) {
    return guard('apply-events', () => encode(events.reduce(apply, decode(state))));
  },
  onRecoveryCompleted(_state) {
    return [];
  },
};
