"""The autonomous loop over HTTP (contract §9): its status for every reader, resuming a tripped policy for deployers.

Both read the state every ``l07 run`` process shares in the database, so any API process answers for all of them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field

from ...models.error_codes import L07Error, L07ErrorCode
from ...services.loop import LearningLoop
from ..deps import CanDeploy, CanListModels, ContextDep
from ..errors import error_responses
from ..types import UtcDateTime

router = APIRouter(prefix="/api/v1/loop", tags=["loop"], responses=error_responses(400, 401, 403, 500))

PolicyName = Annotated[str, Path(min_length=1, max_length=128, description="Policy name, e.g. default.qa")]


class UnknownPolicy(L07Error):
    """No policy of that name has run yet (HTTP 404)."""

    def __init__(self, error: L07Error) -> None:
        super().__init__(error.code, error.message, **error.details)

    @property
    def http_status(self) -> int:
        return 404


class Breaker(BaseModel):
    state: str = Field(examples=["CLOSED", "OPEN"])
    consecutive_failures: int
    opened_at: str | None
    reason: str | None


class PolicyState(BaseModel):
    """A policy's stored state after ``resume``."""

    policy: str
    last_verdict: str | None
    paused: bool
    breaker: Breaker


class LoopStatus(BaseModel):
    """What ``l07 loop status --json`` prints: per policy new examples, next trigger, last run and verdict,
    breaker; the compute budget left today, jobs running, models per stage, the REVIEW queue, leader, schedules."""

    at: UtcDateTime
    this_process: str
    leader: dict[str, Any]
    policies: list[dict[str, Any]]
    budget: dict[str, Any]
    jobs: dict[str, Any]
    models_per_stage: dict[str, int]
    review_queue: int = Field(description="Models waiting for a reviewer (validation said REVIEW)")
    open_runs: list[dict[str, Any]]
    schedules: list[dict[str, Any]]
    breakers: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                description="Component circuit breakers: training, validation, deployment")
    watches: list[dict[str, Any]] = Field(default_factory=list, description="Released models being watched")


async def _loop(request: Request, ctx: Any) -> LearningLoop:
    """The app's loop view; the services are opened without a relay of their own unless the app runs one."""
    await ctx.service.initialize(start_relay=False)
    return request.app.state.l07_loop


@router.get("", name="loop.status", response_model=LoopStatus)
async def loop_status(request: Request, _: CanListModels, ctx: ContextDep) -> LoopStatus:
    """The loop's state, shared by every ``l07 run`` process on this database."""
    return LoopStatus.model_validate(await (await _loop(request, ctx)).status())


@router.post("/{policy}/resume", name="loop.resume", response_model=PolicyState, responses=error_responses(404))
async def resume(policy: PolicyName, request: Request, principal: CanDeploy, ctx: ContextDep) -> PolicyState:
    """Close the policy's circuit breaker (audited under the caller's key) so the loop triggers it again."""
    request.state.audit_details = {"policy": policy}
    try:
        state = await (await _loop(request, ctx)).resume(policy, actor=principal.key_id)
    except L07Error as exc:
        if exc.code is L07ErrorCode.CONFIGURATION_NOT_FOUND:
            raise UnknownPolicy(exc) from None
        raise
    return PolicyState.model_validate(state)
