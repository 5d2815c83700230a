"""The {{name}} entity for mneme: a counter that can be closed.

Commands  {"type":"Increment","by":N} {"type":"Get"} {"type":"Close"}
Events    {"type":"Incremented","by":N} {"type":"Closed"}  (manifest = type, tag "{{name}}")
State     {"value":N,"closed":false}
Replies   {"value":N}
An unknown command type is malformed (400); Increment or Close once closed is
unhandled (409); Increment by 0 is an error reply (422). Close publishes
{"id":...,"value":N} to the topic "{{name}}".
"""

import json
import traceback
from typing import List, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host
from wit_world.imports.types import (
    Action_None_,
    Action_Persist,
    Action_Unhandled,
    Command,
    Effect,
    EntityInfo,
    Event,
    Message,
    Reply,
    Reply_Error,
    Reply_Ok,
    SideEffect,
    SideEffect_Publish,
)

TYPE_NAME = "{{name}}"
TAGS = [TYPE_NAME]
MAX = 2**64 - 1


def dumps(value: dict) -> bytes:
    """Compact JSON, keys in insertion order."""
    return json.dumps(value, separators=(",", ":")).encode()


def decode_command(data: bytes) -> dict:
    """Raise ValueError for anything but a known command: reported as malformed (400)."""
    try:
        cmd = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    kind = cmd.get("type") if isinstance(cmd, dict) else None
    if kind == "Increment":
        by = cmd.get("by")
        if type(by) is not int or not 0 <= by <= MAX:
            raise ValueError("field `by` must be an integer between 0 and 2^64-1")
        return {"type": kind, "by": by}
    if kind in ("Get", "Close"):
        return {"type": kind}
    raise ValueError(f"unknown command type {json.dumps(kind)}")


def effect(action, reply: Optional[Reply] = None, then: Optional[List[SideEffect]] = None) -> Effect:
    return Effect(action=action, reply=reply, then=then or [], unstash_all=False, stop=False)


def event(payload: dict) -> Event:
    return Event(manifest=payload["type"], payload=dumps(payload), tags=TAGS)


def value(state: dict) -> Reply:
    return Reply_Ok(dumps({"value": state["value"]}))


def apply(state: dict, ev: Event) -> dict:
    """Fold one stored event; its manifest names its schema (upcast old ones here)."""
    payload = json.loads(ev.payload)
    if ev.manifest == "Incremented":
        return {"value": min(state["value"] + payload["by"], MAX), "closed": state["closed"]}
    if ev.manifest == "Closed":
        return {"value": state["value"], "closed": True}
    raise ValueError(f"unknown event manifest {json.dumps(ev.manifest)}")


def decide(state: dict, cmd: dict, entity_id: str) -> Effect:
    if cmd["type"] == "Get":
        return effect(Action_None_(), value(state))
    if state["closed"]:
        return effect(Action_Unhandled())  # a known command this state does not accept: 409
    if cmd["type"] == "Increment":
        by = cmd["by"]
        if by == 0:
            return effect(Action_None_(), Reply_Error("by must be at least 1"))
        if state["value"] + by > MAX:
            return effect(Action_None_(), Reply_Error(f"adding {by} would overflow the value {state['value']}"))
        after = {"value": state["value"] + by, "closed": False}
        return effect(Action_Persist([event({"type": "Incremented", "by": by})]), value(after))
    # Close: persist, reply, and publish once the event is durable.
    closed = SideEffect_Publish(Message(topic=TYPE_NAME, payload=dumps({"id": entity_id, "value": state["value"]})))
    return effect(Action_Persist([event({"type": "Closed"})]), value(state), [closed])


class Handler(exports.Handler):
    def describe(self) -> EntityInfo:
        return EntityInfo(type_name=TYPE_NAME, state_version=1, snapshot_every=0)

    def empty_state(self) -> bytes:
        return dumps({"value": 0, "closed": False})

    def handle_command(self, state: bytes, command: Command) -> Effect:
        try:
            cmd = decode_command(command.payload)
        except ValueError as e:
            raise Err(f"malformed command: {e}")
        try:
            return decide(json.loads(state), cmd, command.metadata.entity_id)
        except Exception:
            host.report_fault(f"handle-command: {traceback.format_exc()}")
            raise

    def apply_events(self, state: bytes, events: List[Event]) -> bytes:
        try:
            current = json.loads(state)
            for ev in events:
                current = apply(current, ev)
        except (ValueError, KeyError, TypeError) as e:
            raise Err(f"cannot apply events: {e}")
        return dumps(current)

    def on_recovery_completed(self, state: bytes) -> List[SideEffect]:
        return []
