"""Stored training examples over HTTP: browse (their stored, secret-masked text) and decide the REVIEW queue.

Reading example texts needs ``dataset.get_training_data`` and is audited as a read of training data, allowed or not;
deciding a REVIEW example needs ``example.review`` (reviewer, admin).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from ...services.example_review import ExampleReview
from ..auth import Permission, Principal
from ..deps import ContextDep, requires
from ..errors import error_responses
from ..types import UtcDateTime

router = APIRouter(prefix="/api/v1/examples", tags=["examples"], responses=error_responses(400, 401, 403, 500))

ExampleId = Annotated[str, Path(min_length=1, max_length=128, description="Example id")]
CanReadExamples = Annotated[Principal, Depends(requires(Permission.DATASET_GET_TRAINING_DATA))]
CanReviewExamples = Annotated[Principal, Depends(requires(Permission.EXAMPLE_REVIEW))]


class FilterReason(BaseModel):
    decision: str
    reason: str
    code: str | None
    detail: str | None


class ExamplePublic(BaseModel):
    """A stored example as people see it: the stored text, where secrets and PII are already masked."""

    example_id: str
    status: str
    task_type: str | None
    agent_id: str | None
    domain: str | None
    quality_score: float
    confidence: float | None
    input_text: str
    output_text: str
    created_at: UtcDateTime
    reasons: list[FilterReason] = Field(description="The filter's (and reviewers') non-accept decisions")


class ExamplePage(BaseModel):
    data: list[ExamplePublic]
    count: int | None = Field(description="Examples matching the filters (all pages); null for a text search (q), "
                                          "which is not counted")
    more: bool = Field(description="Whether a next page exists")
    limit: int
    offset: int


class ReviewDecision(BaseModel):
    decision: Literal["accept", "reject"]
    note: str | None = Field(default=None, max_length=2000)
    output_text: str | None = Field(default=None, min_length=1, max_length=100_000,
                                    description="With accept: the reviewer's corrected assistant answer, stored "
                                                "redacted in place of the agent's")


class ReviewOutcome(BaseModel):
    example_id: str
    status: str
    decision: str
    decided_by: str
    edited: bool


def _mark_read(request: Request) -> None:
    request.state.audit_read = True  # a read of training data: audited, allowed or not (contract §7.4)


@router.get("", name="examples.list", response_model=ExamplePage, dependencies=[Depends(_mark_read)])
async def list_examples(
    principal: CanReadExamples,
    ctx: ContextDep,
    status: Annotated[str | None, Query(max_length=16, description="PENDING, ACCEPTED, REVIEW, REJECTED, QUARANTINED")] = None,
    reason: Annotated[str | None, Query(max_length=64, description="Filter reason (secret, pii, ...) or code")] = None,
    task_type: Annotated[str | None, Query(max_length=128)] = None,
    agent_id: Annotated[str | None, Query(max_length=256)] = None,
    q: Annotated[str | None, Query(max_length=200, description="Text contained in the example id, input or output "
                                   "(any letter case; % and _ are plain characters)")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    """Stored examples, newest first, filtered; each with the reasons it was not accepted."""
    return await ExampleReview(ctx.db).page(status=status, reason=reason, task_type=task_type, agent_id=agent_id,
                                            text=q, limit=limit, offset=offset, actor=principal.key_id)


@router.get("/{example_id}", name="examples.get", response_model=ExamplePublic, responses=error_responses(404),
            dependencies=[Depends(_mark_read)])
async def get_example(example_id: ExampleId, principal: CanReadExamples, ctx: ContextDep) -> Any:
    """One stored example with its status and reasons."""
    return await ExampleReview(ctx.db).get(example_id, actor=principal.key_id)


@router.post("/{example_id}/review", name="examples.review", response_model=ReviewOutcome,
             responses=error_responses(404, 409))
async def review_example(example_id: ExampleId, body: ReviewDecision, request: Request, principal: CanReviewExamples,
                         ctx: ContextDep) -> Any:
    """Accept or reject an example in REVIEW (409 E7110 when it is not in REVIEW; nothing changes); an accept may
    carry the corrected answer (``output_text``)."""
    request.state.audit_details = {"decision": body.decision, "edited": body.output_text is not None}
    return await ExampleReview(ctx.db).decide(example_id, body.decision, principal.key_id, body.note,
                                              body.output_text)
