"""One batch, one transaction, and what happens when it fails: retried on conflicts with concurrent writers, E7014 when
the database fails, and bisection down to the event at fault when what an event carries makes it fail.

A failure inside the transaction that is not the database being unreachable or busy (an exception from what an event
carries, a value the database refuses) bisects the batch down to the event at fault, which is rejected with E7910
and stored with its reason: one event never fails its batch, and the failed event claims no key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from ...models.error_codes import L07Error, L07ErrorCode
from ...store.db import Database
from .results import BatchResult, IngestSummary

if TYPE_CHECKING:
    from .parsing import Parsed

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
T = TypeVar("T")

Commit = Callable[[list["Parsed"], bool, bool], Awaitable[BatchResult]]
"""``commit(parsed, sweep, produce)``: one transaction over ``parsed``; ``produce`` False stores no examples."""


class EventFailure(Exception):
    """Something the batch's events carried made its transaction fail (the cause is chained); the batch is
    bisected to find the event at fault. Infrastructure failures are ``L07Error`` E7014 instead."""


def first_line(exc: BaseException | None) -> str:
    """``Type: first line of the message`` (at most 300 characters): what a rejection's reason quotes."""
    text = str(exc).strip().splitlines() if exc is not None else []
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


def retryable(exc: Exception) -> bool:
    """A conflict with a concurrent writer: the same transaction can succeed when run again."""
    if isinstance(exc, IntegrityError):
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked", "serializ"))


def data_error(exc: DBAPIError) -> bool:
    """Whether the database refused a value (SQLSTATE classes 22 data exception, 23 integrity violation) rather
    than being unreachable or busy: only the former can be one event's fault."""
    if isinstance(exc, (DataError, IntegrityError)):
        return True
    state = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(state, str) and state[:2] in ("22", "23")


def _storage_failure(exc: BaseException) -> L07Error:
    return L07Error(L07ErrorCode.STORAGE_WRITE_FAILURE, f"storing the batch failed: {first_line(exc)}")


async def run_transaction(db: Database, body: Callable[[AsyncSession], Awaitable[T]],
                          passthrough: tuple[type[BaseException], ...] = ()) -> T:
    """``body`` in one transaction, run again on conflicts with concurrent writers (a unique-key race rolls back, and
    the next attempt sees the winner's rows). Raises ``L07Error`` (E7014) when the database fails, ``EventFailure``
    when the batch's content does, and the ``passthrough`` exceptions as they are (after the rollback)."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            async with db.session() as session:
                return await body(session)
        except L07Error:
            raise
        except passthrough:
            raise
        except (IntegrityError, OperationalError, DBAPIError) as exc:
            if attempt < MAX_ATTEMPTS and retryable(exc):
                log.info("ingest batch conflicted with a concurrent writer, retrying (attempt %d)", attempt)
                await asyncio.sleep(0.02 * attempt)
                continue
            if data_error(exc):
                raise EventFailure() from exc
            raise _storage_failure(exc) from exc
        except StatementError as exc:
            raise EventFailure() from exc  # a value could not be bound (serialised) for its statement
        except (SQLAlchemyError, OSError) as exc:
            raise _storage_failure(exc) from exc
        except Exception as exc:  # noqa: BLE001 - content the code did not foresee: find the event, reject it
            raise EventFailure() from exc
    raise AssertionError("unreachable: the last attempt returns or raises")


def merge(a: BatchResult, b: BatchResult) -> BatchResult:
    summary = IngestSummary()
    summary.add(a.summary)
    summary.add(b.summary)
    return BatchResult(a.items + b.items, summary)


async def isolated(commit: Commit, parsed: Sequence["Parsed"], sweep: bool) -> BatchResult:
    """``commit(parsed)``. When what an event carries makes that fail, the batch is retried without the join sweep,
    then bisected down to the event at fault, which is rejected with E7910 and stored with its reason (it claims no
    key, so its redelivery is processed once the fault is gone)."""
    parsed = list(parsed)
    try:
        return await commit(parsed, sweep, True)
    except EventFailure as failure:
        if sweep:
            log.error("E7910 ingest batch failed (%s); retrying it without the join sweep", first_line(failure.__cause__))
            return await isolated(commit, parsed, False)
        if len(parsed) > 1:
            mid = len(parsed) // 2
            return merge(await isolated(commit, parsed[:mid], False), await isolated(commit, parsed[mid:], False))
        p, cause = parsed[0], failure.__cause__
        log.error("E7910 event %d failed while storing what it produced", p.index, exc_info=cause)
        err = L07Error(L07ErrorCode.UNHANDLED_EXCEPTION, f"processing the event failed: {first_line(cause)}")
        try:
            return await commit([dataclasses.replace(p, record=None, error=err)], False, False)
        except EventFailure as again:
            raise L07Error(L07ErrorCode.STORAGE_WRITE_FAILURE, f"storing the rejection of event {p.index} "
                           f"failed: {first_line(again.__cause__)}") from again.__cause__
