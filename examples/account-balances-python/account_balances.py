"""Account balances (examples/account-balances) as a projection in Python.

Built into a WebAssembly component of the `projection` world
(wit/projection.wit) with componentize-py (see build.sh). It reads the bank
accounts' events (tag `account`) and keeps the same view as the Rust version,
byte for byte:

  key = account id (the entity id)  {"balance":N,"events":K}
  key = "_total"                     {"balance":sum of balances,"events":all events}

The handler is pure: it reads its own view through the `get` import, folds the
batch's events and returns the changes; mneme stores them with the projection's
offset in one atomic write.
"""

import json
import traceback
from typing import Dict, List

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, view
from wit_world.imports.types import ProjectionInfo, StoredEvent, ViewEntry, ViewUpdate, ViewUpdate_Put

TOTAL = "_total"
MAX = 2**64 - 1  # balances are u64 in the Rust version (saturating)


def dumps(value: dict) -> bytes:
    """Compact JSON, keys in insertion order: the format the Rust version writes."""
    return json.dumps(value, separators=(",", ":")).encode()


class Batch:
    """The view during one call.

    `view.get` returns the stored value (with the updates of earlier calls of the
    same batch), not the changes this call has made but not returned yet: those
    are kept here, and reads look here first.
    """

    def __init__(self) -> None:
        self.values: Dict[str, dict] = {}
        self.changed: List[str] = []

    def get(self, key: str) -> dict:
        if key not in self.values:
            raw = view.get(key)
            self.values[key] = json.loads(raw) if raw is not None else {"balance": 0, "events": 0}
        return self.values[key]

    def put(self, key: str, value: dict) -> None:
        if key not in self.changed:
            self.changed.append(key)
        self.values[key] = value

    def updates(self) -> List[ViewUpdate]:
        return [ViewUpdate_Put(ViewEntry(key=k, value=dumps(self.values[k]))) for k in self.changed]


def amount(event: dict) -> int:
    value = event.get("amount")
    if type(value) is not int or not 0 <= value <= MAX:
        raise ValueError(f"field `amount` must be an integer between 0 and {MAX}")
    return value


def fold(before: dict, event: dict) -> dict:
    """One event of an account folded into its balance (as the Rust version)."""
    kind = event.get("type") if isinstance(event, dict) else None
    balance = before["balance"]
    if kind == "Deposited":
        balance = min(MAX, balance + amount(event))
    elif kind == "Withdrawn":
        balance = max(0, balance - amount(event))
    elif kind not in ("AccountCreated", "AccountClosed"):
        raise ValueError(f"unknown event type {json.dumps(kind)}")
    return {"balance": balance, "events": before["events"] + 1}


class Handler(exports.Handler):
    def describe(self) -> ProjectionInfo:
        return ProjectionInfo(name="account-balances", tags=["account"], view_version=1)

    def handle_events(self, events: List[StoredEvent]) -> List[ViewUpdate]:
        batch = Batch()
        for e in events:
            where = f"event at offset {e.offset} ({e.persistence_id}#{e.seq_nr})"
            try:
                payload = json.loads(e.payload)
                account = e.persistence_id.split("|", 1)[-1]
                before = batch.get(account)
                after = fold(before, payload)
            except ValueError as err:
                raise Err(f"{where}: {err}")
            except Exception:
                host.report_fault(f"{where}: {traceback.format_exc()}")
                raise
            batch.put(account, after)
            total = batch.get(TOTAL)
            batch.put(
                TOTAL,
                {
                    "balance": min(MAX, max(0, total["balance"] - before["balance"]) + after["balance"]),
                    "events": total["events"] + 1,
                },
            )
        return batch.updates()
