"""Per-model outcome series: real events through the one ingestion path, read back by model and time window through
the service, the REST API and the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import timedelta

import httpx
import pytest
from typer.testing import CliRunner

from L07_learning.api import create_app
from L07_learning.api.auth import AuthService
from L07_learning.api.config import ApiConfig
from L07_learning.cli.main import app as cli
from L07_learning.models import L07Error
from L07_learning.models._base import utcnow
from L07_learning.services.access import AccessService
from L07_learning.services.feedback import model_outcomes
from L07_learning.services.ingestion.pipeline import ingest_events
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.db import Database
from L07_learning.tests.factories import feedback as fb


def trace_event(sample: dict, execution_id: str, model_id: str, outcome: str = "success") -> dict:
    data = {**sample["data"], "execution_id": execution_id, "outcome": outcome,
            "metadata": {**sample["data"]["metadata"], "model_id": model_id}}
    return {**sample, "id": str(uuid.uuid4()), "data": data}


async def test_model_and_score_join_in_either_order(db, settings, tmp_path, sample_cloud_event):
    registry = ModelRegistry(db=db, settings=settings)
    v1 = await fb.register(registry, tmp_path, "1.0.0", seed=1)
    await fb.to_production(registry, v1)
    events = [
        fb.score_event("e-score-first", 90.0), fb.response_event("e-score-first", fb.NAME),   # name -> ACTIVE id
        fb.response_event("e-model-first", v1), fb.score_event("e-model-first", 60.0, failure="error"),
        trace_event(sample_cloud_event, "e-trace", v1), fb.score_event("e-trace", 75.0, failure=None),
        fb.response_event("e-external", "gpt-4o-mini"), fb.score_event("e-external", 50.0),
        fb.score_event("e-unserved", 99.0),
    ]
    # Split across batches so each join meets a stored row, in both orders.
    for batch in (events[0:1] + events[2:3] + events[4:5], events[1:2] + events[3:4] + events[5:]):
        result = await ingest_events(batch, db=db, settings=settings)
        assert result.summary.events_rejected == 0, result.items
    out = await model_outcomes(db, v1)
    s = out["summary"]
    assert out["registered"] and out["model_name"] == fb.NAME
    assert s["samples"] == 3 and s["quality_mean"] == pytest.approx((90 + 60 + 75) / 3)
    assert s["errors"] == 1 and s["error_rate"] == pytest.approx(1 / 3)
    assert out["unscored"] == 0 and s["latency_ms_mean"] == pytest.approx(120.0)
    # A replay of every event changes nothing (idempotent by event id and by the first-value-wins merge).
    await ingest_events(events, db=db, settings=settings)
    assert (await model_outcomes(db, v1))["summary"]["samples"] == 3
    external = await model_outcomes(db, "gpt-4o-mini")
    assert not external["registered"] and external["summary"]["samples"] == 1
    # A served execution whose score never came counts as unscored, not as a sample.
    await ingest_events([fb.response_event("e-waiting", v1)], db=db, settings=settings)
    assert (await model_outcomes(db, v1))["unscored"] == 1
    # Time windows: nothing before the first outcome, everything in a window around now, buckets of it.
    now = utcnow()
    assert (await model_outcomes(db, v1, until=now - timedelta(hours=1)))["summary"]["samples"] == 0
    windowed = await model_outcomes(db, v1, since=now - timedelta(hours=1), until=now + timedelta(minutes=1),
                                    bucket=timedelta(minutes=10))
    assert windowed["summary"]["samples"] == 3 and sum(b["samples"] for b in windowed["series"]) == 3
    with pytest.raises(L07Error) as exc:
        await model_outcomes(db, "never-seen")
    assert exc.value.code.value == "E7250"
    with pytest.raises(L07Error) as exc:
        await model_outcomes(db, v1, since=now, until=now - timedelta(hours=1))
    assert exc.value.code.value == "E7110"


async def test_bad_served_by_fields_are_rejected_with_a_code(sqlite_db, settings, sample_cloud_event):
    bad_trace = trace_event(sample_cloud_event, "e-bad", "m")
    bad_trace["data"]["metadata"]["model_id"] = 42
    long_response = fb.response_event("e-long", "x" * 300)
    result = await ingest_events([bad_trace, long_response], db=sqlite_db, settings=settings)
    assert [i.code for i in result.items] == ["E7110", "E7110"]
    assert "metadata.model_id" in result.items[0].reason and "model_name" in result.items[1].reason


async def test_rest_outcomes_by_model_and_window(sqlite_db, settings, tmp_path):
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    v1 = await fb.register(registry, tmp_path, "1.0.0", seed=1)
    await fb.add_outcomes(sqlite_db, v1, fb.outcomes(40, 70.0, 5.0, 0.1, seed=3))
    viewer = (await AuthService(AccessService(sqlite_db)).create_key("reviewer", name="reader"))[1]
    app = create_app(settings=settings, db=sqlite_db, config=ApiConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.test") as api:
        headers = {"Authorization": f"Bearer {viewer}"}
        r = await api.get(f"/api/v1/models/{v1}/outcomes", headers=headers, params={"bucket_seconds": 3600})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["summary"]["samples"] == 40 and body["by_task_type"][0]["task_type"] == "support"
        assert sum(b["samples"] for b in body["series"]) == 40
        later = (utcnow() + timedelta(hours=1)).isoformat()
        r = await api.get(f"/api/v1/models/{v1}/outcomes", headers=headers, params={"since": later})
        assert r.status_code == 200 and r.json()["summary"]["samples"] == 0
        r = await api.get("/api/v1/models/nobody/outcomes", headers=headers)
        assert r.status_code == 404 and r.json()["code"] == "E7250"
        assert (await api.get(f"/api/v1/models/{v1}/outcomes")).status_code == 401
        # A model that was never released has no watch to run.
        r = await api.post(f"/api/v1/models/{v1}/watch", headers=headers)
        assert r.status_code == 403


def test_cli_outcomes_json_and_table(settings, tmp_path):
    async def seed() -> str:
        db = Database(settings.database_url, auto_migrate=True)
        try:
            registry = ModelRegistry(db=db, settings=settings)
            v1 = await fb.register(registry, tmp_path, "1.0.0", seed=1)
            await fb.add_outcomes(db, v1, fb.outcomes(25, 80.0, 5.0, 0.0, seed=4))
            return v1
        finally:
            await db.dispose()

    v1 = asyncio.run(seed())
    result = CliRunner().invoke(cli, ["models", "outcomes", v1, "--since", "1h", "--bucket", "10m", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["summary"]["samples"] == 25 and out["series"][0]["samples"] == 25
    table = CliRunner().invoke(cli, ["models", "outcomes", v1])
    assert table.exit_code == 0 and "per task type" in table.stdout and "support" in table.stdout
    bad = CliRunner().invoke(cli, ["models", "outcomes", v1, "--since", "yesterday"])
    assert bad.exit_code == 2 and "E7110" in bad.output
