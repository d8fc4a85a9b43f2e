"""Read access to the audit log (auditor and admin only, contract §7.4)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ..deps import CanReadAudit, ContextDep
from ..errors import error_responses
from ..types import UtcDateTime

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=error_responses(400, 401, 403, 500))


class AuditRecord(BaseModel):
    """One audit row in the contract's shape (§7.4 "Audit")."""

    audit_id: str
    timestamp: UtcDateTime
    actor: dict[str, Any] = Field(examples=[{"type": "api_key", "identifier": "key-1a2b3c4d5e6f"}])
    action: str = Field(examples=["api.models.promote"])
    resource: dict[str, Any] = Field(examples=[{"type": "models", "id": "5f0c1d7e-0a4b-4d55-9a3e-2c6b8e9f7a10"}])
    result: str = Field(examples=["success", "failure", "denied"])
    details: dict[str, Any]
    error_code: str | None
    request_id: str | None


class AuditPage(BaseModel):
    data: list[AuditRecord]
    count: int = Field(description="Rows matching the filters (all pages)")


@router.get("", name="audit.list", response_model=AuditPage)
async def list_records(
    _: CanReadAudit,
    ctx: ContextDep,
    action: Annotated[str | None, Query(max_length=128, description="Exact action, or a prefix ending in *")] = None,
    actor: Annotated[str | None, Query(max_length=256, description="Key id or other actor")] = None,
    resource_type: Annotated[str | None, Query(max_length=64)] = None,
    resource_id: Annotated[str | None, Query(max_length=256)] = None,
    request_id: Annotated[str | None, Query(max_length=128)] = None,
    result: Annotated[str | None, Query(max_length=32, description="success, failure, denied ...")] = None,
    since: Annotated[datetime | None, Query(description="Only rows at or after this time")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> AuditPage:
    """Audit rows, newest first."""
    rows, total = await ctx.queries.audit_log(
        action=action, actor=actor, resource_type=resource_type, resource_id=resource_id,
        request_id=request_id, result=result, since=since, limit=limit, offset=offset,
    )
    return AuditPage(data=[AuditRecord.model_validate(r) for r in rows], count=total)
