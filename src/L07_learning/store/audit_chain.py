"""The audit log's hash chain: the canonical form of a row, its hash, and the walk that checks a chain.

Each row stores the hash of the row before it (``prev_hash``) and ``row_hash = sha256(canonical JSON of its own
content plus prev_hash)``. Changing a stored field changes the row's hash; deleting a row leaves a gap in ``seq`` and a
``prev_hash`` that points at nothing; deleting the newest rows leaves the chain head pointing past the last row. So
editing or deleting any row is seen by ``verify_rows``. The chain is tamper-evident, not tamper-proof: someone who can
rewrite every later row and the head can forge a consistent chain, which is why ``l07 audit verify`` prints the head
hash for operators to record elsewhere.

Pure functions only (no I/O): the repository feeds rows in, and migration 0005 uses the same code to chain the rows
written before the chain existed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first row ever written."""

HASHED_FIELDS = (
    "seq", "audit_id", "timestamp", "actor_type", "actor_id", "ip_address", "user_agent", "action", "resource_type",
    "resource_id", "result", "details", "error_code", "request_id", "prev_hash",
)


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace, non-JSON values as strings: the one text form that is hashed and stored."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def canonical_details(details: dict[str, Any] | None) -> dict[str, Any]:
    """``details`` as it reads back from the database (through JSON), so the stored row hashes like the written one."""
    return json.loads(canonical_json(details or {}))


def canonical_time(ts: datetime) -> str:
    """UTC, microseconds, no offset: SQLite returns naive UTC and PostgreSQL aware UTC for the same stored instant."""
    if ts.tzinfo is not None:
        ts = ts.astimezone(timezone.utc).replace(tzinfo=None)
    return ts.isoformat(timespec="microseconds")


def row_hash(row: dict[str, Any]) -> str:
    """sha256 of the row's hashed fields (``prev_hash`` included) in canonical form."""
    content = {k: row.get(k) for k in HASHED_FIELDS}
    content["timestamp"] = canonical_time(row["timestamp"])
    return hashlib.sha256(canonical_json(content).encode("utf-8")).hexdigest()


def link(rows: list[dict[str, Any]], seq: int, prev: str) -> tuple[int, str]:
    """Give ``rows`` positions after ``seq`` and chain them after ``prev``; returns the new head ``(seq, hash)``."""
    for row in rows:
        seq += 1
        row["seq"], row["prev_hash"] = seq, prev
        row["row_hash"] = prev = row_hash(row)
    return seq, prev


@dataclass
class ChainReport:
    """The outcome of one verification."""

    ok: bool
    rows_checked: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    anchor_seq: int = 0
    broken: dict[str, Any] | None = field(default=None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "rows_checked": self.rows_checked, "first_seq": self.first_seq, "last_seq": self.last_seq,
            "head": {"seq": self.head_seq, "hash": self.head_hash, "anchor_seq": self.anchor_seq},
            "first_broken": self.broken,
        }


class ChainWalker:
    """Checks rows one at a time, in ``seq`` order, against the chain head, stopping at the first break.

    Args:
        head: The chain head row (``seq``, ``last_hash``, ``anchor_seq``, ``anchor_hash``); None when never written.
        unchained: Number of rows without a chain position (inserted around the audit writer).
    """

    def __init__(self, head: dict[str, Any] | None, unchained: int = 0) -> None:
        self.head = head or {"seq": 0, "last_hash": GENESIS_HASH, "anchor_seq": 0, "anchor_hash": GENESIS_HASH}
        self.report = ChainReport(ok=True, head_seq=self.head["seq"], head_hash=self.head["last_hash"],
                                  anchor_seq=self.head["anchor_seq"])
        self.expected, self.prev = self.head["anchor_seq"] + 1, self.head["anchor_hash"]
        if unchained:
            self._break(None, None, f"{unchained} row(s) have no chain position: written around the audit log")

    def _break(self, seq: int | None, audit_id: str | None, reason: str) -> bool:
        self.report.ok = False
        self.report.broken = {"seq": seq, "audit_id": audit_id, "reason": reason}
        return False

    def step(self, row: dict[str, Any]) -> bool:
        """Check the next row; False once the chain is broken (later rows are then not looked at)."""
        if not self.report.ok:
            return False
        seq, audit_id = row["seq"], row["audit_id"]
        if self.report.first_seq is None:
            self.report.first_seq = seq
        if seq != self.expected:
            gap = f"row {self.expected} is" if seq == self.expected + 1 else f"rows {self.expected}-{seq - 1} are"
            return self._break(seq, audit_id, f"{gap} missing (deleted)" if seq > self.expected
                               else f"unexpected position {seq}")
        if row["prev_hash"] != self.prev:
            return self._break(seq, audit_id, "prev_hash does not match the row before it")
        if row_hash(row) != row["row_hash"]:
            return self._break(seq, audit_id, "content changed since the row was written")
        self.prev = row["row_hash"]
        self.report.rows_checked += 1
        self.report.last_seq = seq
        self.expected += 1
        return True

    def finish(self) -> ChainReport:
        """The report, after the last row: the head must point at the last row checked."""
        if not self.report.ok:
            return self.report
        last = self.expected - 1
        if self.head["seq"] > last:
            self._break(self.expected, None, f"rows {self.expected}-{self.head['seq']} after the last stored row are "
                                             "missing (deleted)")
        elif self.head["seq"] < last:
            self._break(last, None, "the chain head is behind the last row")
        elif self.head["last_hash"] != self.prev:
            self._break(last, None, "the chain head does not match the last row's hash")
        return self.report


def verify_rows(rows: Iterable[dict[str, Any]], head: dict[str, Any] | None, unchained: int = 0) -> ChainReport:
    """Walk ``rows`` (ordered by ``seq``) and report the first break."""
    walker = ChainWalker(head, unchained)
    for row in rows:
        if not walker.step(row):
            break
    return walker.finish()
