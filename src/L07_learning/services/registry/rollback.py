"""Rollback: which STANDBY production version becomes ACTIVE again, and the transaction that swaps them.

Without a named version the target is the one most recently superseded that has not itself been rolled back from;
a named version must be STANDBY. Either way a refusal is audited with the id of the version it concerns.
"""

from __future__ import annotations

from typing import Any

from ...events.publisher import EventPublisher
from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ServingState
from ...store.db import Database
from ...store.repositories.models import ModelRepository
from .refusals import record_failure
from .transitions import apply_rollback

Row = dict[str, Any]


async def rollback_target(
    db: Database, name_or_id: str, actor: str, to_version: str | None
) -> tuple[str, Row | None, Row]:
    """The model name, its ACTIVE production row (if any) and the STANDBY row to make ACTIVE.

    Raises:
        L07Error: E7251 when there is nothing to roll back to or ``to_version`` is not STANDBY (audited).
    """
    async with db.session() as session:
        repo = ModelRepository(session)
        named = await repo.get(name_or_id, with_history=False)
        name = named.name if named else name_or_id
        versions = await repo.production_versions(name)
    active = next((v for v in versions if v["serving_state"] == ServingState.ACTIVE.value), None)
    standby = [v for v in versions if v["serving_state"] == ServingState.STANDBY.value]
    if to_version is not None:
        target_row = next((v for v in standby if v["version"] == to_version), None)
        if target_row is None:
            async with db.session() as session:
                found = await ModelRepository(session).find(name, to_version)
            state = f"{found.stage.value}/{found.serving_state.value}" if found else "not registered"
            err = L07Error(
                L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                f"{name} {to_version} is {state}; only a STANDBY PRODUCTION version can be rolled back to "
                f"(STANDBY now: {', '.join(v['version'] for v in standby) or 'none'})",
                name=name, version=to_version,
            )
            await record_failure(db, "model.rollback", found.model_id if found else None, actor, err)
            raise err
        return name, active, target_row
    candidates = [v for v in standby if v["rolled_back_at"] is None and v["superseded_at"] is not None]
    if not candidates:
        err = L07Error(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                       f"{name} has no previous PRODUCTION version to roll back to", name=name)
        await record_failure(db, "model.rollback", active["model_id"] if active else None, actor, err)
        raise err
    return name, active, max(candidates, key=lambda v: v["superseded_at"])


async def commit_rollback(
    db: Database, publisher: EventPublisher, active: Row | None, target: ModelArtifact, actor: str, reason: str
) -> dict[str, Any]:
    """Swap ``target`` (verified by the caller) in for ``active`` in one transaction; returns the incident record.

    Raises:
        Conflict / IntegrityError: the production versions of the name changed meanwhile.
    """
    now = utcnow()
    incident = {"reason": reason, "from_model_id": active["model_id"] if active else None,
                "from_version": active["version"] if active else None,
                "to_model_id": target.model_id, "to_version": target.version, "at": now.isoformat()}
    async with db.session() as session:
        await apply_rollback(session, publisher, active, target, actor, incident, now)
    return incident
