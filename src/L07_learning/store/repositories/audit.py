"""Append-only audit log writes (contract §7.4), always in the caller's transaction.

Writing the audit row in the same transaction as the audited change means the change cannot commit without its
audit record (E7804's rule).
"""

from __future__ import annotations

from typing import Any

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
