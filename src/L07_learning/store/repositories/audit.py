"""Append-only, hash-chained audit log (contract §7.4 "Audit"), written in the transaction of the change it records.

``audit(session, ...)`` queues a row on the session; the rows are chained and inserted when that session commits,
as the last statements of its transaction (a ``before_commit`` hook). So a change never commits without its audit
row, an audit row never outlives a rolled-back change, and a failure to write the row is E7804 and rolls the change
back. Taking the chain head's lock at the very end keeps the time one writer makes the others wait short, and means
no transaction holds the head while it waits for another lock, so appends cannot deadlock one another.

Where a row comes from (IP address, user agent, and the acting key or OS user when the caller names none) is read
from ``ORIGIN``, a context variable the REST middleware and the CLI bind. A request may also bind a ``CallRecord``:
the row of the API call itself, which then joins the first write transaction the request commits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import delete, event, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import ORMExecuteState, Session

from ...models._base import new_id, utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...observability.logging import REQUEST_ID
from ..audit_chain import GENESIS_HASH, ChainReport, ChainWalker, canonical_details, link
from ..tables import SqlAuditChainHead, SqlAuditLog

log = logging.getLogger(__name__)

CHAIN_ID = 1
_PENDING = "l07_audit_pending"
_WROTE = "l07_audit_wrote"
_CALL_ROW = "l07_audit_call_row"
_UA_MAX = 512
_IP_MAX = 64


class Origin(Protocol):
    """Where audited actions come from: the REST request or the CLI invocation in progress."""

    ip_address: str | None
    user_agent: str | None

    def actor(self) -> tuple[str, str] | None:
        """``(actor_type, actor_id)`` of whoever acts now, or None when unknown (yet)."""


@dataclass(frozen=True)
class StaticOrigin:
    """An origin whose actor is known up front (the CLI: the OS user on this host)."""

    ip_address: str | None = None
    user_agent: str | None = None
    actor_type: str | None = None
    actor_id: str | None = None

    def actor(self) -> tuple[str, str] | None:
        return (self.actor_type or "user", self.actor_id) if self.actor_id else None


ORIGIN: ContextVar[Origin | None] = ContextVar("l07_audit_origin", default=None)


class CallRecord:
    """The audit row of one API call, known in full only as the request runs.

    Args:
        build: Returns ``audit()`` keyword arguments for the row given its ``result``, or None when the call needs
            no row.
    """

    def __init__(self, build: Callable[[str], dict[str, Any] | None]) -> None:
        self.build = build
        self.audit_id: str | None = None
        self.attached: dict[str, Any] | None = None  # the arguments the row was written with
        self.closed = False

    @property
    def open(self) -> bool:
        return self.audit_id is None and not self.closed


CALL: ContextVar[CallRecord | None] = ContextVar("l07_audit_call", default=None)


def _clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else value


def build_row(
    action: str,
    resource_type: str,
    resource_id: str | None,
    result: str = "success",
    actor: str | None = None,
    actor_type: str | None = None,
    details: dict[str, Any] | None = None,
    error_code: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """One audit row (not yet chained), with the origin's address, user agent and, when ``actor`` is not given, its
    actor."""
    origin = ORIGIN.get()
    who = origin.actor() if origin is not None else None
    if actor_type is None:
        actor_type = who[0] if who and actor in (None, who[1]) else "service"
    if actor is None:
        actor = who[1] if who else "l07"
    return {
        "audit_id": new_id(),
        "timestamp": utcnow(),
        "actor_type": actor_type,
        "actor_id": actor,
        "ip_address": _clip(origin.ip_address if origin else None, _IP_MAX),
        "user_agent": _clip(origin.user_agent if origin else None, _UA_MAX),
        "action": action,
        "resource_type": resource_type,
        "resource_id": resource_id,
        "result": result,
        "details": canonical_details(details),
        "error_code": error_code,
        "request_id": request_id or REQUEST_ID.get(),
    }


async def audit(
    session: AsyncSession,
    action: str,
    resource_type: str,
    resource_id: str | None,
    result: str = "success",
    actor: str | None = None,
    actor_type: str | None = None,
    details: dict[str, Any] | None = None,
    error_code: str | None = None,
    request_id: str | None = None,
) -> str:
    """Queue one audit record on ``session``'s transaction and return its id; it is written when the session commits.

    Args:
        actor: Who acts; default the bound origin's actor (API key, OS user), else ``"l07"``.
        actor_type: ``api_key``, ``user``, ``service``, ``anonymous``; default from the origin when it names the actor.
    """
    row = build_row(action, resource_type, resource_id, result, actor, actor_type, details, error_code, request_id)
    session.info.setdefault(_PENDING, []).append(row)
    return row["audit_id"]


# --- writing: the session hooks ----------------------------------------------------------------------------------


@event.listens_for(Session, "do_orm_execute")
def _note_dml(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[_WROTE] = True


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, _ctx: Any) -> None:
    session.info[_WROTE] = True


@event.listens_for(Session, "after_commit")
def _forget(session: Session, *_: Any) -> None:
    session.info.pop(_PENDING, None)
    session.info.pop(_WROTE, None)
    session.info.pop(_CALL_ROW, None)


@event.listens_for(Session, "after_soft_rollback")
def _undo(session: Session, *_: Any) -> None:
    _forget(session)
    call: CallRecord | None = session.info.pop(_CALL_ROW, None)
    if call is not None:
        call.audit_id = call.attached = None  # the call's row went with the change: the call still needs one


@event.listens_for(Session, "before_commit")
def _seal(session: Session) -> None:
    """Chain and insert the transaction's audit rows (plus the API call's row when this is the request's first write)."""
    if not session.info.get(_PENDING) and not (CALL.get() and CALL.get().open):  # type: ignore[union-attr]
        return
    # Flush the change first: its row locks are taken before the chain head's, never after.
    session.flush()
    rows: list[dict[str, Any]] = session.info.pop(_PENDING, None) or []
    call = CALL.get()
    if call is not None and call.open and (rows or session.info.get(_WROTE)):
        kwargs = call.build("success")
        if kwargs is not None:
            row = build_row(**kwargs)
            call.audit_id, call.attached = row["audit_id"], {**kwargs, "details": row["details"]}
            session.info[_CALL_ROW] = call
            rows.insert(0, row)
    if not rows:
        return
    try:
        append_rows(session, rows)
    except SQLAlchemyError as exc:
        log.error("audit write failed; rolling back the audited change", extra={"error": str(exc)})
        raise L07Error(L07ErrorCode.AUDIT_LOG_WRITE_FAILURE,
                       f"the audit record could not be written ({exc.__class__.__name__}); the change was not saved",
                       actions=[r["action"] for r in rows][:10]) from exc


def _locked_head(session: Session) -> tuple[int, str]:
    """Lock the chain head row (creating it on first use) and return its ``(seq, last_hash)``."""
    conn = session.connection()
    head = SqlAuditChainHead.__table__
    if conn.dialect.name == "sqlite":
        # pysqlite runs a transaction's reads before its first write outside the transaction; writing first takes
        # SQLite's single write lock, so the head read next cannot be stale.
        conn.execute(update(head).where(head.c.chain_id == CHAIN_ID).values(seq=head.c.seq))
    locked = select(head.c.seq, head.c.last_hash).where(head.c.chain_id == CHAIN_ID).with_for_update()
    current = conn.execute(locked).first()
    if current is None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(dialect.insert(head).values(
            chain_id=CHAIN_ID, seq=0, last_hash=GENESIS_HASH, anchor_seq=0, anchor_hash=GENESIS_HASH,
            updated_at=utcnow()).on_conflict_do_nothing())
        current = conn.execute(locked).one()
    return current[0], current[1]


def append_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Lock the chain head, chain ``rows`` after it, insert them and move the head (synchronous, in the session's
    transaction)."""
    seq, last = link(rows, *_locked_head(session))
    conn = session.connection()
    head = SqlAuditChainHead.__table__
    conn.execute(insert(SqlAuditLog.__table__), rows)
    conn.execute(update(head).where(head.c.chain_id == CHAIN_ID).values(seq=seq, last_hash=last, updated_at=utcnow()))


# --- retention: dropping the oldest rows without breaking the chain ------------------------------------------------


async def expired_prefix(session: AsyncSession, cutoff: datetime) -> tuple[int, str, int] | None:
    """``(seq, row_hash, rows)``: the newest position up to which every row is older than ``cutoff``, and how many
    rows that is; None when there is nothing to drop. Only a prefix of the chain can go, so a young row written
    early (concurrent writers) keeps the older ones after it."""
    first_young = await session.scalar(select(func.min(SqlAuditLog.seq)).where(SqlAuditLog.timestamp >= cutoff))
    stmt = select(SqlAuditLog.seq, SqlAuditLog.row_hash).where(SqlAuditLog.timestamp < cutoff)
    if first_young is not None:
        stmt = stmt.where(SqlAuditLog.seq < first_young)
    row = (await session.execute(stmt.order_by(SqlAuditLog.seq.desc()).limit(1))).first()
    if row is None:
        return None
    rows = int(await session.scalar(select(func.count()).select_from(SqlAuditLog).where(SqlAuditLog.seq <= row[0])) or 0)
    return row[0], row[1], rows


async def drop_prefix(session: AsyncSession, through_seq: int, through_hash: str) -> int:
    """Delete the rows up to ``through_seq`` and anchor the chain there, so the rows after still verify: the first
    one left must point at ``through_hash``."""

    def run(sync: Session) -> int:
        _locked_head(sync)
        conn = sync.connection()
        head = SqlAuditChainHead.__table__
        deleted = conn.execute(delete(SqlAuditLog.__table__).where(SqlAuditLog.__table__.c.seq <= through_seq)).rowcount
        conn.execute(update(head).where(head.c.chain_id == CHAIN_ID)
                     .values(anchor_seq=through_seq, anchor_hash=through_hash, updated_at=utcnow()))
        return int(deleted or 0)

    return await session.run_sync(run)


# --- reading and verifying ----------------------------------------------------------------------------------------


_COLUMNS = (
    SqlAuditLog.seq, SqlAuditLog.audit_id, SqlAuditLog.timestamp, SqlAuditLog.actor_type, SqlAuditLog.actor_id,
    SqlAuditLog.ip_address, SqlAuditLog.user_agent, SqlAuditLog.action, SqlAuditLog.resource_type,
    SqlAuditLog.resource_id, SqlAuditLog.result, SqlAuditLog.details, SqlAuditLog.error_code, SqlAuditLog.request_id,
    SqlAuditLog.prev_hash, SqlAuditLog.row_hash,
)


async def chain_head(session: AsyncSession) -> dict[str, Any] | None:
    """The chain head row as a dict, or None before the first audit row."""
    head = await session.get(SqlAuditChainHead, CHAIN_ID)
    if head is None:
        return None
    return {"seq": head.seq, "last_hash": head.last_hash, "anchor_seq": head.anchor_seq, "anchor_hash": head.anchor_hash}


async def verify_chain(session: AsyncSession, batch: int = 2000) -> ChainReport:
    """Check every stored audit row against the chain; the report names the first broken row."""
    unchained = int(await session.scalar(select(func.count()).select_from(SqlAuditLog).where(SqlAuditLog.seq.is_(None)))
                    or 0)
    walker = ChainWalker(await chain_head(session), unchained)
    after = -1
    while walker.report.ok:  # keyset pages, so a long log is checked in bounded memory
        page = (await session.execute(
            select(*_COLUMNS).where(SqlAuditLog.seq > after).order_by(SqlAuditLog.seq).limit(batch)
        )).mappings().all()
        if not all(walker.step(dict(r)) for r in page) or len(page) < batch:
            break
        after = page[-1]["seq"]
    return walker.finish()


async def list_audit(
    session: AsyncSession,
    *,
    action: str | None = None,
    actor: str | None = None,
    resource_type: str | None = None,
    resource_id: str | None = None,
    request_id: str | None = None,
    result: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """Audit rows matching every given filter, newest first (by chain position), and the total number that match.

    ``action`` matches exactly, or as a prefix when it ends with ``*`` (``api.models.*``).
    """
    conditions = []
    if action:
        conditions.append(
            SqlAuditLog.action.startswith(action[:-1], autoescape=True) if action.endswith("*") else SqlAuditLog.action == action
        )
    for column, value in (
        (SqlAuditLog.actor_id, actor),
        (SqlAuditLog.resource_type, resource_type),
        (SqlAuditLog.resource_id, resource_id),
        (SqlAuditLog.request_id, request_id),
        (SqlAuditLog.result, result),
    ):
        if value is not None:
            conditions.append(column == value)
    if since is not None:
        conditions.append(SqlAuditLog.timestamp >= since)
    total = int(await session.scalar(select(func.count()).select_from(SqlAuditLog).where(*conditions)) or 0)
    rows = await session.scalars(
        select(SqlAuditLog).where(*conditions).order_by(SqlAuditLog.seq.desc()).limit(limit).offset(offset)
    )
    return [
        {
            "audit_id": r.audit_id,
            "seq": r.seq,
            "timestamp": r.timestamp,
            "actor": {"type": r.actor_type, "identifier": r.actor_id, "ip_address": r.ip_address,
                      "user_agent": r.user_agent},
            "action": r.action,
            "resource": {"type": r.resource_type, "id": r.resource_id},
            "result": r.result,
            "details": r.details or {},
            "error_code": r.error_code,
            "request_id": r.request_id,
            "row_hash": r.row_hash,
        }
        for r in rows.all()
    ], total
