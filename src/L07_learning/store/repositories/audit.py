"""Append-only audit log writes (contract §7.4), always in the caller's transaction.

Writing the audit row in the same transaction as the audited change means the change cannot commit without its
audit record (E7804's rule).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import new_id, utcnow
from ...observability.logging import REQUEST_ID
from ..tables import SqlAuditLog


async def audit(
    session: AsyncSession,
    action: str,
    resource_type: str,
    resource_id: str | None,
    result: str = "success",
    actor: str = "l07",
    actor_type: str = "service",
    details: dict[str, Any] | None = None,
    error_code: str | None = None,
    request_id: str | None = None,
) -> str:
    """Append one audit record and return its id."""
    audit_id = new_id()
    session.add(
        SqlAuditLog(
            audit_id=audit_id,
            timestamp=utcnow(),
            actor_type=actor_type,
            actor_id=actor,
            action=action,
            resource_type=resource_type,
            resource_id=resource_id,
            result=result,
            details=details or {},
            error_code=error_code,
            request_id=request_id or REQUEST_ID.get(),
        )
    )
    return audit_id


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
    """Audit rows matching every given filter, newest first, and the total number that match.

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
        select(SqlAuditLog)
        .where(*conditions)
        .order_by(SqlAuditLog.timestamp.desc(), SqlAuditLog.audit_id)
        .limit(limit)
        .offset(offset)
    )
    return [
        {
            "audit_id": r.audit_id,
            "timestamp": r.timestamp,
            "actor": {"type": r.actor_type, "identifier": r.actor_id},
            "action": r.action,
            "resource": {"type": r.resource_type, "id": r.resource_id},
            "result": r.result,
            "details": r.details or {},
            "error_code": r.error_code,
            "request_id": r.request_id,
        }
        for r in rows.all()
    ], total
