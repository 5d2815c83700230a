"""The bank-account entity (Akka's AccountEntity) for mneme, in Python.

Built into a WebAssembly component with componentize-py (see build.sh). The
handlers are pure: they decode the state and command bytes, decide, and return
an effect description; mneme persists the events and releases the reply.

Wire formats (shared with the Rust, JavaScript and C versions, byte for byte):
  commands  {"type":"CreateAccount"} {"type":"Deposit","amount":N}
            {"type":"Withdraw","amount":N} {"type":"GetBalance"} {"type":"CloseAccount"}
  events    {"type":"AccountCreated"} {"type":"Deposited","amount":N}
            {"type":"Withdrawn","amount":N} {"type":"AccountClosed"}
            manifest = the type string, tags = ["account"]
  state     {"status":"empty"} {"status":"open","balance":N} {"status":"closed"}
  replies   ok {"balance":N}
"""

import json
import struct
import traceback
from typing import Iterator, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports.decide import Decision
from wit_world.imports import host
from wit_world.imports.types import (
    Action_None_,
    Action_Persist,
    Action_Unhandled,
    Command,
    Effect,
    EntityInfo,
    Event,
    Reply,
    Reply_Error,
    Reply_Ok,
    SideEffect,
)

TAGS = ["account"]
MAX_AMOUNT = 2**64 - 1  # amounts and balances are u64 in the Rust version


# ---------------------------------------------------------------- encoding

def dumps(value: dict) -> bytes:
    """Compact JSON, keys in insertion order: the shared byte-for-byte format."""
    return json.dumps(value, separators=(",", ":")).encode()


def empty() -> dict:
    return {"status": "empty"}


def opened(balance: int) -> dict:
    return {"status": "open", "balance": balance}


def closed() -> dict:
    return {"status": "closed"}


def decode_state(data: bytes) -> dict:
    state = json.loads(data)
    if not isinstance(state, dict):
        raise ValueError("expected a JSON object")
    status = state.get("status")
    if status == "open":
        return opened(_amount(state, "balance"))
    if status in ("empty", "closed"):
        return {"status": status}
    raise ValueError(f"unknown status {json.dumps(status)}")


def _amount(obj: dict, field: str) -> int:
    value = obj.get(field) if isinstance(obj, dict) else None
    if type(value) is not int or not 0 <= value <= MAX_AMOUNT:
        raise ValueError(f"field `{field}` must be an integer between 0 and {MAX_AMOUNT}")
    return value


# ---------------------------------------------------------------- commands

COMMANDS = {
    "CreateAccount": [],
    "Deposit": ["amount"],
    "Withdraw": ["amount"],
    "GetBalance": [],
    "CloseAccount": [],
}


MAX_DEPTH = 64


def _check_depth(data: bytes) -> None:
    """Refuse deeply nested JSON before json.loads sees it: CPython's parser recurses
    in C, and inside Wasm it exhausts the stack (a trap) before RecursionError."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return  # the common case: no scan needed
    depth, in_string, escaped = 0, False, False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                raise ValueError("not JSON: nested too deeply")
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1


def decode_command(data: bytes) -> dict:
    """The command as a dict, or raise ValueError (reported as a malformed command)."""
    _check_depth(data)
    try:
        cmd = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(cmd, dict):
        raise ValueError("expected a JSON object")
    kind = cmd.get("type")
    if not isinstance(kind, str) or kind not in COMMANDS:
        raise ValueError(f"unknown command type {json.dumps(kind)}")
    result = {"type": kind}
    for field in COMMANDS[kind]:
        result[field] = _amount(cmd, field)
    return result


# ---------------------------------------------------------------- events

def event(payload: dict) -> Event:
    return Event(manifest=payload["type"], payload=dumps(payload), tags=TAGS)


def upcast(manifest: str, payload: bytes) -> dict:
    """Decode a stored event into the current schema.

    The manifest names the schema. When an event's shape changes, give the new
    shape a new manifest (e.g. "Deposited.v2") and translate the old ones here,
    so journals written by older code still replay.
    """
    fields = json.loads(payload)
    if manifest in ("AccountCreated", "AccountClosed"):
        return {"type": manifest}
    if manifest in ("Deposited", "Withdrawn"):
        return {"type": manifest, "amount": _amount(fields, "amount")}
    raise ValueError(f"unknown event manifest {json.dumps(manifest)}")


def unpack(batch: bytes) -> Iterator[Tuple[str, bytes]]:
    """The events of a packed batch (`replay.apply-event-batch` in wit/entity.wit):
    each is manifest length (u32 LE), manifest, payload length (u32 LE), payload."""
    pos = 0
    while pos < len(batch):
        fields = []
        for what in ("manifest", "payload"):
            if pos + 4 > len(batch):
                raise ValueError(f"an event batch ends inside an event's {what}")
            (length,) = struct.unpack_from("<I", batch, pos)
            pos += 4
            if pos + length > len(batch):
                raise ValueError(f"an event batch ends inside an event's {what}")
            fields.append(batch[pos : pos + length])
            pos += length
        try:
            manifest = fields[0].decode()
        except UnicodeDecodeError:
            raise ValueError("an event batch holds a manifest that is not UTF-8") from None
        yield manifest, fields[1]


def apply(state: dict, ev: dict) -> dict:
    status, kind = state["status"], ev["type"]
    if status == "empty" and kind == "AccountCreated":
        return opened(0)
    if status == "open":
        balance = state["balance"]
        # Saturating, as the Rust version (the command handler never goes past the limits).
        if kind == "Deposited":
            return opened(min(balance + ev["amount"], MAX_AMOUNT))
        if kind == "Withdrawn":
            return opened(max(balance - ev["amount"], 0))
        if kind == "AccountClosed":
            return closed()
    raise ValueError(f"event {kind} cannot be applied to an account in state {status}")


# ---------------------------------------------------------------- effects

def effect(action, reply: Optional[Reply] = None) -> Effect:
    return Effect(action=action, reply=reply, then=[], unstash_all=False, stop=False)


def persist_and_reply(events: List[dict], balance: int) -> Effect:
    return effect(Action_Persist([event(e) for e in events]), ok({"balance": balance}))


def ok(body: dict) -> Reply:
    return Reply_Ok(dumps(body))


def error(message: str) -> Effect:
    return effect(Action_None_(), Reply_Error(message))


def decide(state: dict, cmd: dict, account_number: str) -> Effect:
    status, kind = state["status"], cmd["type"]
    if status == "empty":
        if kind == "CreateAccount":
            return persist_and_reply([{"type": "AccountCreated"}], 0)
        return effect(Action_Unhandled())
    if status == "closed":
        if kind == "GetBalance":
            return effect(Action_None_(), ok({"balance": 0}))
        return error(f"Account {account_number} is closed")
    balance = state["balance"]
    if kind == "Deposit":
        amount = cmd["amount"]
        if balance + amount > MAX_AMOUNT:
            return error(f"Deposit of {amount} would overflow the balance {balance}")
        return persist_and_reply([{"type": "Deposited", "amount": amount}], balance + amount)
    if kind == "Withdraw":
        amount = cmd["amount"]
        if amount > balance:
            return error(f"Insufficient balance {balance} to be able to withdraw {amount}")
        return persist_and_reply([{"type": "Withdrawn", "amount": amount}], balance - amount)
    if kind == "GetBalance":
        return effect(Action_None_(), ok({"balance": balance}))
    if kind == "CloseAccount":
        if balance != 0:
            return error("Can't close account with non-zero balance")
        return persist_and_reply([{"type": "AccountClosed"}], 0)
    # CreateAccount on an open account
    return error(f"Account {account_number} is already created")


# ---------------------------------------------------------------- the export

def _fault(what: str) -> None:
    """Unexpected exception: tell the host why the component is about to trap."""
    host.report_fault(f"{what}: {traceback.format_exc()}")


def _decide(state: bytes, command: Command) -> Tuple[dict, Effect]:
    """The state, decoded, and what to do with the command."""
    try:
        cmd = decode_command(command.payload)
    except ValueError as e:
        raise Err(f"malformed command: {e}")
    try:
        current = decode_state(state)
    except ValueError as e:
        raise Err(f"corrupt state: {e}")
    try:
        return current, decide(current, cmd, command.metadata.entity_id)
    except Exception:
        _fault("handle-command")
        raise


class Handler(exports.Handler):
    def describe(self) -> EntityInfo:
        return EntityInfo(type_name="bank-account", state_version=1, snapshot_every=100)

    def empty_state(self) -> bytes:
        return dumps(empty())

    def handle_command(self, state: bytes, command: Command) -> Effect:
        return _decide(state, command)[1]

    def apply_events(self, state: bytes, events: List[Event]) -> bytes:
        try:
            current = decode_state(state)
            for ev in events:
                current = apply(current, upcast(ev.manifest, ev.payload))
        except ValueError as e:
            raise Err(str(e))
        return dumps(current)

    def on_recovery_completed(self, state: bytes) -> List[SideEffect]:
        return []


class Decide(exports.Decide):
    """One call per command: decide, and fold the events decided on into the
    state decoded once (the host keeps the state returned here)."""

    def handle_command_and_apply(self, state: bytes, command: Command) -> Decision:
        current, decided = _decide(state, command)
        if not isinstance(decided.action, Action_Persist):
            return Decision(effect=decided, state_after=None)
        try:
            for ev in decided.action.value:
                current = apply(current, upcast(ev.manifest, ev.payload))
        except Exception:
            _fault("handle-command-and-apply")
            raise
        return Decision(effect=decided, state_after=dumps(current))


class Replay(exports.Replay):
    """Recovery's packed batches: one buffer per batch, read in place."""

    def apply_event_batch(self, state: bytes, batch: bytes) -> bytes:
        try:
            current = decode_state(state)
            for manifest, payload in unpack(batch):
                current = apply(current, upcast(manifest, payload))
        except ValueError as e:
            raise Err(str(e))
        return dumps(current)
