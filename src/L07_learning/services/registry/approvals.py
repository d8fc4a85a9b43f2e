"""Approvals of stage changes: recorded on their own (``l07 models approve``) or given with a promotion request.

A STAGING or PRODUCTION approval is bound to one validation report, the model's latest when it was given, and
counts only while that report is still the latest: a newer validation (a worse one, say) voids older approvals.
"""

from __future__ import annotations

from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelStage
from ...store.db import Database
from ...store.repositories.audit import audit
from ...store.repositories.models import ModelRepository
from .refusals import record_failure
from .stages import VALIDATED_TARGETS, approval_target, approved_validation, check_actor, check_role, check_transition


async def record_approval(
    db: Database, model_id: str, role: str, actor: str, to_stage: str | ModelStage | None = None,
    validation_id: str | None = None,
) -> dict[str, Any]:
    """Record that ``actor`` in ``role`` approves the model's next transition (see ``ModelRegistry.approve``).

    A refusal other than an unknown model is audited.
    """
    role, actor = check_role(role), check_actor(actor)
    target = approval_target(role, to_stage)
    bound: str | None = None
    try:
        async with db.session() as session:
            repo = ModelRepository(session)
            model = await repo.get(model_id, with_history=False)
            if model is None:
                raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"no model with id {model_id}", model_id=model_id)
            check_transition(model, target)
            if target in VALIDATED_TARGETS:
                bound = approved_validation(model_id, await repo.latest_validation(model_id), validation_id)
            repo.add_approval(model_id, target, role, actor, validation_id=bound)
            await audit(session, "model.approve", "model", model_id, actor=actor,
                        details={"role": role, "to_stage": target.value, "from_stage": model.stage.value,
                                 "validation_id": bound})
    except L07Error as exc:
        if exc.code is not L07ErrorCode.MODEL_NOT_FOUND:
            await record_failure(db, "model.approve", model_id, actor, exc)
        raise
    return {"model_id": model_id, "role": role, "actor": actor, "to_stage": target.value, "validation_id": bound}


async def approvals_for(
    repo: ModelRepository, model_id: str, target: ModelStage, given: list[tuple[str, str]], latest_id: str | None
) -> list[dict[str, Any]]:
    """Add the approvals given with a request (inside the caller's transaction) and return those that count.

    For STAGING and PRODUCTION only approvals of the latest report (``latest_id``) count.
    """
    for role, who in given:
        repo.add_approval(model_id, target, role, who, validation_id=latest_id if target in VALIDATED_TARGETS else None)
    await repo.session.flush()
    approvals = await repo.open_approvals(model_id, target)
    if target in VALIDATED_TARGETS:
        # Only approvals of the report the gates read count: a newer validation voids older approvals.
        approvals = [a for a in approvals if latest_id is not None and a.get("validation_id") == latest_id]
    return approvals
