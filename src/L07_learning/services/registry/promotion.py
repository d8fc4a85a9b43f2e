"""The transaction of a promotion, and what a database failure during one means to the caller.

The rules are in ``stages.py`` and the writes in ``transitions.py``; this module runs them in order under a row
lock: re-read the model, refuse if it changed since the (slow, unlocked) verification, record the approvals given
with the request, check the chain of requirements, write the change and publish the caller's events, all in one
transaction.

An admin override (``override_reason``) replaces the approval chain and the gates by the admin's own entry; the
transition table and the artifact's verification still apply, and the gates it bypassed are written to the audit
row ``model.gates_overridden`` in the same transaction, with the reason.
"""

from __future__ import annotations

from typing import Any, Iterable

from sqlalchemy.exc import IntegrityError, OperationalError

from ...events.publisher import EventPublisher
from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ModelStage
from ...store.db import Database
from ...store.repositories.audit import audit
from ...store.repositories.models import ModelRepository
from .approvals import approvals_for
from .stages import requirements
from .transitions import Conflict, apply_promotion


async def active_model_id(db: Database, name: str) -> str | None:
    """The id of the ACTIVE production version of ``name``, if any (a promotion checks it did not change)."""
    async with db.session() as session:
        current = await ModelRepository(session).active(name)
    return current.model_id if current else None


async def commit_promotion(
    db: Database,
    publisher: EventPublisher,
    model: ModelArtifact,
    target: ModelStage,
    given: list[tuple[str, str]],
    actor: str,
    notes: str | None,
    events: Iterable[tuple[str, dict[str, Any]]] | None,
    expected_active: str | None,
    override_reason: str | None = None,
) -> ModelArtifact:
    """Move ``model`` (as verified by the caller) to ``target`` in one transaction.

    Raises:
        L07Error: E7251 when the model changed since it was read, or the transition is not allowed; E7252 and
            E7203/E7204 from the requirements. ``IntegrityError``/``Conflict`` on a concurrent production change
            (see ``promotion_error``).
    """
    async with db.session() as session:
        repo = ModelRepository(session)
        locked = await repo.get(model.model_id, for_update=True, with_history=False)
        assert locked is not None
        if locked.stage is not model.stage or locked.checksum != model.checksum:
            raise L07Error(
                L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                f"model {model.model_id} changed to {locked.stage.value} while this promotion ran; check and retry",
                current_stage=locked.stage.value,
            )
        latest = await repo.latest_validation(model.model_id)
        approvals = await approvals_for(repo, model.model_id, target, given,
                                        latest.validation_id if latest is not None else None)
        if override_reason is None:
            chain = requirements(locked, approvals, latest, target)
        else:
            chain = await _override(session, locked, approvals, latest, target, actor, override_reason)
        result = await apply_promotion(session, publisher, locked, target, actor, chain, notes, expected_active)
        for event_type, data in events or []:
            await publisher.publish(session, event_type, data, subject=model.model_id)
    return result


async def _override(session: Any, model: ModelArtifact, approvals: list[dict[str, Any]], latest: Any,
                    target: ModelStage, actor: str, reason: str) -> list[dict[str, Any]]:
    """The admin's chain entry for an overridden promotion, audited with the refusal the gates would have given."""
    try:
        requirements(model, approvals, latest, target)
        bypassed = None
    except L07Error as exc:
        bypassed = {"error_code": exc.code.value, "message": exc.message}
    entry = {"role": "admin_override", "actor": actor, "at": utcnow().isoformat()}
    await audit(session, "model.gates_overridden", "model", model.model_id, actor=actor, details={
        "reason": reason, "from_stage": model.stage.value, "to_stage": target.value, "bypassed": bypassed,
        "validation_id": latest.validation_id if latest is not None else None})
    return [entry]


def promotion_error(model: ModelArtifact, exc: IntegrityError | Conflict | OperationalError) -> L07Error:
    """The refusal a database failure during a promotion becomes: E7251 for a concurrent production change (the
    partial unique index or the ACTIVE-version check caught it), E7202 when the database is busy or unreachable."""
    if isinstance(exc, OperationalError):
        return L07Error(L07ErrorCode.MODEL_REGISTRY_UNAVAILABLE, f"registry database busy or unreachable: {exc.orig}")
    return L07Error(
        L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
        f"another version of {model.name} became the ACTIVE production model while this promotion ran; "
        f"nothing was changed. Check `l07 models list --stage production` and retry if still wanted",
        model_id=model.model_id, name=model.name,
    )
