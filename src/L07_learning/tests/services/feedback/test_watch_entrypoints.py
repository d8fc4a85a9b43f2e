"""Where users reach the release watch: every `l07 run` tick, `l07 models watch ID`, `POST /api/v1/models/{id}/watch`,
and `l07 loop status` listing the watches."""

from __future__ import annotations

import asyncio
import json

import httpx
from typer.testing import CliRunner

from L07_learning.api import create_app
from L07_learning.api.auth import AuthService
from L07_learning.api.config import ApiConfig
from L07_learning.cli.main import app as cli
from L07_learning.models import ServingState
from L07_learning.services.access import AccessService
from L07_learning.services.loop import LearningLoop
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.db import Database
from L07_learning.tests.factories import feedback as fb


async def test_loop_tick_watches_releases_and_rolls_back(sqlite_db, settings, tmp_path):
    loop = LearningLoop.build(settings, db=sqlite_db)
    await loop.start()
    try:
        registry = loop.service.registry
        v1, v2 = await fb.release_pair(registry, sqlite_db, tmp_path)
        await fb.add_outcomes(sqlite_db, v2, fb.outcomes(400, 68.0, 10.0, 0.02, seed=51))
        report = await loop.tick()
        assert report["watch"] == {v2: "collecting"}
        watches = (await loop.status())["watches"]
        assert [(w["model_id"], w["baseline_model_id"], w["samples"]) for w in watches] == [(v2, v1, 400)]
        await fb.add_outcomes(sqlite_db, v2, fb.outcomes(600, 68.0, 10.0, 0.02, seed=52))
        report = await loop.tick()
        assert "rolled back automatically" in report["watch"][v2]
        assert (await registry.get_model(v1)).serving_state is ServingState.ACTIVE
        status = await loop.status()
        assert status["breakers"]["deployment"]["state"] == "OPEN"
        paused = next(p for p in status["policies"] if p["policy"] == fb.POLICY)
        assert paused["paused"] and paused["breaker"]["state"] == "OPEN"
        # `l07 loop resume` is how a person lets the policy train again.
        assert (await loop.resume(fb.POLICY, actor="dana"))["paused"] is False
    finally:
        await loop.close()


async def test_rest_watch_rolls_back_for_a_deployer(sqlite_db, settings, tmp_path):
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    v1, v2 = await fb.release_pair(registry, sqlite_db, tmp_path)
    await fb.add_outcomes(sqlite_db, v2, fb.outcomes(1000, 68.0, 10.0, 0.02, seed=61))
    deployer = (await AuthService(AccessService(sqlite_db)).create_key("deployer", name="deployer"))[1]
    app = create_app(settings=settings, db=sqlite_db, config=ApiConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.test") as api:
        headers = {"Authorization": f"Bearer {deployer}"}
        r = await api.post(f"/api/v1/models/{v2}/watch", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ROLLED_BACK" and r.json()["incidents"][0]["rolled_back_to"] == v1
        out = (await api.get(f"/api/v1/models/{v2}/outcomes", headers=headers)).json()
        assert out["watch"]["status"] == "ROLLED_BACK" and out["summary"]["samples"] == 1000
        r = await api.post("/api/v1/models/never-released/watch", headers=headers)
        assert r.status_code == 404 and r.json()["code"] == "E7250"


def test_cli_watch_and_loop_status(settings, tmp_path):
    async def seed() -> tuple[str, str]:
        db = Database(settings.database_url, auto_migrate=True)
        try:
            pair = await fb.release_pair(ModelRegistry(db=db, settings=settings), db, tmp_path)
            await fb.add_outcomes(db, pair[1], fb.outcomes(500, 68.0, 10.0, 0.02, seed=71))
            return pair
        finally:
            await db.dispose()

    v1, v2 = asyncio.run(seed())
    first = CliRunner().invoke(cli, ["models", "watch", v2])
    assert first.exit_code == 0 and "WATCHING" in first.stdout and "500 scored outcomes" in first.stdout
    table = CliRunner().invoke(cli, ["loop", "status"])
    assert "release watches" in table.stdout and v2 in table.stdout
    unknown = CliRunner().invoke(cli, ["models", "watch", "nope", "--json"])
    assert unknown.exit_code == 2 and json.loads(unknown.stdout)["error"]["code"] == "E7250"
