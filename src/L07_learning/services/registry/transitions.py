"""The writes of one stage change, made inside the caller's transaction.

A change writes the new stage and serving state, a stage history row, an audit row and, for STAGING and PRODUCTION,
the ``learning.model_deployment_approved`` event; all of it commits together or not at all. The rules that decide
whether a change may happen are in ``stages.py``; these functions only record a change already decided.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ...events.publisher import EventPublisher
from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ModelStage, ServingState
from ...store.repositories.audit import audit
from ...store.repositories.models import ModelRepository
from .stages import CANARY_CONFIG, ROLLBACK_CODES


class Conflict(Exception):
    """A concurrent change to the production models of a name was detected inside a transaction."""


async def apply_promotion(
    session: AsyncSession,
    publisher: EventPublisher,
    model: ModelArtifact,
    target: ModelStage,
    actor: str,
    chain: list[dict[str, Any]],
    notes: str | None,
    expected_active: str | None,
) -> ModelArtifact:
    """Move the locked ``model`` to ``target`` and use up the approvals of ``chain``.

    Args:
        expected_active: For PRODUCTION, the ACTIVE version seen before the lock; it becomes STANDBY.

    Raises:
        Conflict: another version became ACTIVE meanwhile. L07Error: E7251 the model's stage changed meanwhile.
    """
    repo = ModelRepository(session)
    now = utcnow()
    serving = ServingState.NONE
    updates: dict[str, Any] = {}
    if target is ModelStage.PRODUCTION:
        serving = ServingState.ACTIVE
        updates = {"deployed_at": now.isoformat(), "rolled_back_at": None}
        if expected_active is not None:
            # Guarded update: on PostgreSQL a concurrent promoter waits for our row lock, then finds the row
            # no longer ACTIVE and updates nothing, which we report as a conflict.
            ok = await repo.set_state(expected_active, ModelStage.PRODUCTION, ServingState.STANDBY,
                                      expect_serving=ServingState.ACTIVE,
                                      data_updates={"superseded_at": now.isoformat(), "superseded_by": model.model_id})
            if not ok:
                raise Conflict("ACTIVE production model changed concurrently")
            repo.add_history(expected_active, ModelStage.PRODUCTION, ModelStage.PRODUCTION, ServingState.STANDBY, actor,
                             f"superseded by {model.name} {model.version} ({model.model_id})")
        current = await repo.active(model.name)
        if current is not None:
            raise Conflict(f"{current.model_id} is ACTIVE")
    ok = await repo.set_state(model.model_id, target, serving, expect_stage=model.stage, data_updates=updates or None)
    if not ok:
        raise L07Error(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED, f"model {model.model_id} changed stage concurrently")
    await repo.consume_approvals([a["id"] for a in chain if "id" in a])
    public_chain = [{"role": a["role"], "actor": a["actor"], "at": a["at"],
                     **({"validation_id": a["validation_id"]} if a.get("validation_id") else {})} for a in chain]
    repo.add_history(model.model_id, model.stage, target, serving, actor, notes, public_chain)
    await audit(session, "model.promote", "model", model.model_id, actor=actor, details={
        "name": model.name, "version": model.version, "from_stage": model.stage.value, "to_stage": target.value,
        "serving_state": serving.value, "approval_chain": public_chain, "superseded": expected_active,
    })
    if target in (ModelStage.STAGING, ModelStage.PRODUCTION):
        await publisher.publish(session, "learning.model_deployment_approved", {
            "model_id": model.model_id, "version": model.version, "from_stage": model.stage.value,
            "to_stage": target.value, "approval_chain": public_chain,
            "canary_config": CANARY_CONFIG if target is ModelStage.PRODUCTION else None,
            "approved_at": now.isoformat(),
        }, subject=model.model_id)
    result = await repo.get(model.model_id)
    assert result is not None
    return result


async def apply_rollback(
    session: AsyncSession,
    publisher: EventPublisher,
    active: dict[str, Any] | None,
    target: ModelArtifact,
    actor: str,
    incident: dict[str, Any],
    now: datetime,
) -> None:
    """Make the STANDBY ``target`` ACTIVE and the ``active`` version (if any) STANDBY, as ``incident`` says why.

    Raises:
        Conflict: either version's serving state changed meanwhile.
    """
    repo = ModelRepository(session)
    reason = incident["reason"]
    if active is not None:
        ok = await repo.set_state(active["model_id"], ModelStage.PRODUCTION, ServingState.STANDBY,
                                  expect_serving=ServingState.ACTIVE,
                                  data_updates={"rolled_back_at": now.isoformat(), "rollback_reason": reason})
        if not ok:
            raise Conflict("ACTIVE model changed concurrently")
        repo.add_history(active["model_id"], ModelStage.PRODUCTION, ModelStage.PRODUCTION, ServingState.STANDBY,
                         actor, f"rolled back ({reason}) to {target.version}")
    ok = await repo.set_state(target.model_id, ModelStage.PRODUCTION, ServingState.ACTIVE,
                              expect_serving=ServingState.STANDBY,
                              data_updates={"deployed_at": now.isoformat(), "rolled_back_at": None})
    if not ok:
        raise Conflict("target changed concurrently")
    chain = [{"role": "deployer", "actor": actor, "at": now.isoformat()}]
    repo.add_history(target.model_id, ModelStage.PRODUCTION, ModelStage.PRODUCTION, ServingState.ACTIVE, actor,
                     f"rollback ({reason}) from {incident['from_version']}", chain)
    await audit(session, "model.rollback", "model", target.model_id, actor=actor,
                details={"incident": incident, "name": target.name})
    if active is not None:
        await publisher.publish(session, "learning.model_deployment_failed", {
            "model_id": active["model_id"], "version": active["version"], "stage": ModelStage.PRODUCTION.value,
            "error_code": ROLLBACK_CODES.get(reason), "error_message": f"rolled back: {reason}",
            "rolled_back_to": target.model_id, "failed_at": now.isoformat(),
        }, subject=active["model_id"])
    await publisher.publish(session, "learning.model_deployment_approved", {
        "model_id": target.model_id, "version": target.version, "from_stage": ModelStage.PRODUCTION.value,
        "to_stage": ModelStage.PRODUCTION.value, "approval_chain": chain, "canary_config": None,
        "approved_at": now.isoformat(), "rollback_of": active["model_id"] if active else None,
    }, subject=target.model_id)


async def archive_standby(session: AsyncSession, cutoff: datetime, actor: str, notes: str) -> list[str]:
    """Archive the STANDBY versions superseded before ``cutoff``; returns their ids (the ACTIVE one is never touched)."""
    repo = ModelRepository(session)
    done: list[str] = []
    for model_id in await repo.standby_superseded_before(cutoff):
        if await repo.set_state(model_id, ModelStage.ARCHIVED, ServingState.NONE, expect_serving=ServingState.STANDBY):
            repo.add_history(model_id, ModelStage.PRODUCTION, ModelStage.ARCHIVED, ServingState.NONE, actor, notes)
            await audit(session, "model.archive", "model", model_id, actor=actor, details={"automatic": True})
            done.append(model_id)
    return done
