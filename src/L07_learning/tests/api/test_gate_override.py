"""The admin override of the promotion gates: only an admin key, only with a reason, never around the stage table,
and always audited as ``model.gates_overridden`` with the reason and the refusal it bypassed (REST and registry)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from L07_learning.models import L07Error
from L07_learning.models.model_artifact import ModelStage, ServingState
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.db import Database
from L07_learning.store.tables import SqlAuditLog
from L07_learning.tests.api.test_api import auth, client_for, keys  # noqa: F401  (fixtures)
from L07_learning.tests.services.registry.test_registry import register


@pytest.fixture
async def api(sqlite_db: Database, client_for) -> httpx.AsyncClient:  # type: ignore[no-untyped-def]
    return await client_for(sqlite_db)


async def _overrides(db: Database) -> list[SqlAuditLog]:
    async with db.session() as s:
        return list((await s.scalars(select(SqlAuditLog).where(SqlAuditLog.action == "model.gates_overridden")
                                     .order_by(SqlAuditLog.timestamp))).all())


async def test_only_an_admin_with_a_reason_overrides_and_every_override_is_audited(
    api: httpx.AsyncClient, keys: dict[str, str], sqlite_db: Database, settings,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    mid = await register(registry, tmp_path, version="1.0.0")  # never validated: every gate refuses it
    url = f"/api/v1/models/{mid}/promote"

    r = await api.post(url, json={"stage": "staging"}, headers=auth(keys["admin"]))
    assert r.json()["code"] == "E7203", r.text
    r = await api.post(url, json={"stage": "staging", "override": True, "reason": "hotfix"},
                       headers=auth(keys["deployer"]))
    assert (r.status_code, r.json()["code"]) == (403, "E7904"), r.text
    r = await api.post(url, json={"stage": "staging", "override": True, "reason": "  "}, headers=auth(keys["admin"]))
    assert (r.status_code, r.json()["code"]) == (400, "E7110"), r.text
    # The stage table is not a gate: DEVELOPMENT never jumps to PRODUCTION, override or not.
    r = await api.post(url, json={"stage": "production", "override": True, "reason": "hotfix"},
                       headers=auth(keys["admin"]))
    assert (r.status_code, r.json()["code"]) == (409, "E7251"), r.text
    assert await _overrides(sqlite_db) == []

    for stage in ("staging", "production"):
        r = await api.post(url, json={"stage": stage, "override": True, "reason": "incident 42 hotfix"},
                           headers=auth(keys["admin"]))
        assert r.status_code == 200, r.text
    model = await registry.get_model(mid)
    assert (model.stage, model.serving_state) == (ModelStage.PRODUCTION, ServingState.ACTIVE)
    assert model.stage_history[-1].approvals[0]["role"] == "admin_override"

    rows = await _overrides(sqlite_db)
    assert [(r.details["from_stage"], r.details["to_stage"], r.details["reason"]) for r in rows] == [
        ("DEVELOPMENT", "STAGING", "incident 42 hotfix"), ("STAGING", "PRODUCTION", "incident 42 hotfix")]
    assert [r.details["bypassed"]["error_code"] for r in rows] == ["E7203", "E7203"]  # no validation at all
    assert all(r.actor_id.startswith("key_") or len(r.actor_id) > 8 for r in rows)  # the admin key's id


async def test_the_registry_refuses_an_override_without_a_reason(sqlite_db: Database, settings, tmp_path: Path) -> None:
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    mid = await register(registry, tmp_path, version="1.0.0")
    with pytest.raises(L07Error) as err:
        await registry.promote_model(mid, "staging", actor="root", override_reason="")
    assert err.value.code.value == "E7110"
    assert (await registry.get_model(mid)).stage is ModelStage.DEVELOPMENT
