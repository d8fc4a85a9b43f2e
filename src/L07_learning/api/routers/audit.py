"""Read access to the audit log and its hash-chain check (auditor and admin only, contract §7.4)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ...services.audit_trail import AuditTrail
from ..deps import CanReadAudit, ContextDep
from ..errors import error_responses
from ..types import UtcDateTime

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], responses=error_responses(400, 401, 403, 500))


class AuditRecord(BaseModel):
    """One audit row in the contract's shape (§7.4 "Audit")."""

    audit_id: str
    seq: int | None = Field(default=None, description="Position in the hash chain")
    timestamp: UtcDateTime
    actor: dict[str, Any] = Field(examples=[{"type": "api_key", "identifier": "key-1a2b3c4d5e6f",
                                             "ip_address": "10.0.4.17", "user_agent": "python-httpx/0.28.1"}])
    action: str = Field(examples=["api.models.promote"])
    resource: dict[str, Any] = Field(examples=[{"type": "models", "id": "5f0c1d7e-0a4b-4d55-9a3e-2c6b8e9f7a10"}])
    result: str = Field(examples=["success", "failure", "denied"])
    details: dict[str, Any]
    error_code: str | None
    request_id: str | None
    row_hash: str | None = Field(default=None, description="sha256 of the row's content and the previous row's hash")


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


class ChainHead(BaseModel):
    seq: int = Field(description="Position of the newest row")
    hash: str = Field(description="Hash of the newest row: record it elsewhere to detect a rewritten chain")
    anchor_seq: int = Field(description="Rows up to here were removed by the retention purge")


class ChainBreak(BaseModel):
    seq: int | None
    audit_id: str | None
    reason: str = Field(examples=["content changed since the row was written", "row 41 is missing (deleted)"])


class ChainVerification(BaseModel):
    """The outcome of walking the audit log's hash chain."""

    ok: bool
    rows_checked: int
    first_seq: int | None
    last_seq: int | None
    head: ChainHead
    first_broken: ChainBreak | None = Field(description="The first row that was edited, deleted or inserted around "
                                                        "the audit writer; null when the chain is intact")


@router.get("/verify", name="audit.verify", response_model=ChainVerification)
async def verify(_: CanReadAudit, ctx: ContextDep) -> ChainVerification:
    """Check every audit row against the hash chain (``l07 audit verify`` over REST); ``ok`` is false and
    ``first_broken`` names the row when any row was edited or deleted."""
    report = await AuditTrail(ctx.db).verify()
    return ChainVerification.model_validate(report.as_dict())
