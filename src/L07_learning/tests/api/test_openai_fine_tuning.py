"""The OpenAI-compatible fine-tuning API on `l07 serve`, driven by the official `openai` client as a migrating user's
code drives it: files, jobs (with the quality filter's per-line report in the job's events), models, errors in
OpenAI's shape, pagination and roles; `POST /api/v1/imports`. The slow test trains for real and chats with the
tuned model through `l07 serve-model`."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from L07_learning.api import create_app
from L07_learning.api.config import ApiConfig
from L07_learning.store.db import Database
from L07_learning.tests.api.test_api import auth, make_keys
from L07_learning.tests.factories.openai_files import TOOLS, jsonl, tool_lines

BASE = "http://l07.test"
CACHE = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
IMPORTERS = Path(__file__).parents[1] / "services" / "importers" / "fixtures"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama", seed=0, cache_dir=CACHE)


@pytest.fixture
async def stack(settings, sqlite_db: Database,  # type: ignore[no-untyped-def]
                tiny_model: Path) -> AsyncIterator[dict[str, Any]]:
    app = create_app(settings=settings, db=sqlite_db, config=ApiConfig(max_request_bytes=200_000))
    service = app.state.l07.service
    base = await service.registry.register_base(str(tiny_model), name="tiny-llama")
    keys = await make_keys(sqlite_db, settings)
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)

    def client(role: str = "trainer") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key=keys[role], http_client=http, max_retries=0)

    yield {"app": app, "service": service, "base": base, "keys": keys, "http": http, "client": client}
    await http.aclose()


async def test_upload_create_list_events_and_errors_through_the_openai_client(stack: dict[str, Any]) -> None:
    client = stack["client"]()
    lines = [jsonl([line]) for line in tool_lines()[:30]]
    broken = b'{"messages": [{"role": "user", "content": "half a line\n'
    no_answer = jsonl([{"messages": [{"role": "user", "content": "What time is it in Lima?"}], "tools": TOOLS}])
    body = b"".join(lines[:10]) + broken + b"".join(lines[10:20]) + no_answer + lines[3] + b"".join(lines[20:])
    uploaded = await client.files.create(file=("oslo.jsonl", body), purpose="fine-tune")
    assert (uploaded.object, uploaded.purpose, uploaded.bytes, uploaded.filename) == (
        "file", "fine-tune", len(body), "oslo.jsonl")
    stored = Path(stack["service"].settings.home) / "files" / uploaded.id
    assert stored.read_bytes() == body and stored.stat().st_mode & 0o777 == 0o600
    assert [f.id for f in (await client.files.list()).data] == [uploaded.id]
    assert (await client.files.retrieve(uploaded.id)).bytes == len(body)
    assert (await client.files.content(uploaded.id)).content == body

    job = await client.fine_tuning.jobs.create(
        model="tiny-llama", training_file=uploaded.id, suffix="oslo",
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 25})
    assert job.status == "queued" and job.training_file == uploaded.id and job.fine_tuned_model is None
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (2, 4)
    l07_job = await stack["service"].sft_engine.get_job_status(await _l07_job_id(stack, job.id))
    assert l07_job.config["learning_rate"] == pytest.approx(25 * 2e-5) and l07_job.config["epochs"] == 2
    assert l07_job.config["model_name"] == "tiny-llama-ft-oslo" and l07_job.status.value == "PENDING"

    events = (await client.fine_tuning.jobs.list_events(job.id, limit=50)).data
    messages = [e.message for e in reversed(events)]
    # 33 lines: 30 accepted, one duplicate filtered; the broken and answerless lines refused with their line numbers.
    summary = next(m for m in messages if m.startswith("Training file"))
    assert "30 lines accepted, 1 filtered (REJECT/duplicate: 1), 2 refused" in summary
    assert any(m.startswith("Training file line 11 refused: E7015") for m in messages)
    assert any(m.startswith("Training file line 22 refused: E7110") for m in messages)
    assert any("queued as L07 training job" in m for m in messages) and "Job queued (PENDING)" in messages

    page = await client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [job.id] and page.has_more is False
    second = await client.fine_tuning.jobs.create(model=stack["base"].model_id, training_file=uploaded.id)
    page = await client.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in page.data] == [second.id] and page.has_more is True
    rest = await client.fine_tuning.jobs.list(limit=5, after=second.id)
    assert [j.id for j in rest.data] == [job.id] and rest.has_more is False
    # The file was imported once: the second job trains on the same accepted lines, none of them now a duplicate.
    assert any("30 lines accepted, 1 filtered" in e.message
               for e in (await client.fine_tuning.jobs.list_events(second.id)).data)

    cancelled = await client.fine_tuning.jobs.cancel(second.id)
    assert cancelled.status == "cancelled"
    assert (await client.fine_tuning.jobs.checkpoints.list(job.id)).data == []

    models = await client.models.list()
    assert stack["base"].model_id in [m.id for m in models.data]
    assert (await client.models.retrieve("tiny-llama")).id == stack["base"].model_id

    # Errors in OpenAI's shape: the client raises its usual exceptions with param and code.
    with pytest.raises(openai.NotFoundError) as err:
        await client.fine_tuning.jobs.create(model="gpt-4o-mini-2024-07-18", training_file=uploaded.id)
    assert err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        await client.fine_tuning.jobs.retrieve("ftjob-missing")
    with pytest.raises(openai.BadRequestError) as err:
        await client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id,
                                             hyperparameters={"n_epochs": 50})
    assert err.value.code == "E7500" and err.value.param == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as err:
        await client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id,
                                             method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}})
    assert err.value.code == "E7500" and err.value.param == "hyperparameters.beta"
    with pytest.raises(openai.BadRequestError) as err:
        await client.files.create(file=("x.jsonl", b"{}\n"), purpose="assistants")
    assert err.value.param == "purpose"
    with pytest.raises(openai.APIStatusError) as err:  # the app's body limit (L07_API_MAX_REQUEST_BYTES), 200 kB here
        await client.files.create(file=("big.jsonl", b"x" * 250_000), purpose="fine-tune")
    assert err.value.status_code == 413 and "larger than 200000 bytes" in err.value.message
    assert [f.id for f in (await client.files.list()).data] == [uploaded.id]  # nothing of the refused uploads kept
    with pytest.raises(openai.AuthenticationError) as err:
        await openai.AsyncOpenAI(base_url=f"{BASE}/v1", api_key="l07_wrong", http_client=stack["http"],
                                 max_retries=0).models.list()
    assert err.value.body["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(openai.PermissionDeniedError):  # inference keys call serve-model, they do not train
        await stack["client"]("inference").fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id)

    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted is True and not stored.exists()


async def _l07_job_id(stack: dict[str, Any], ft_job_id: str) -> str:
    from L07_learning.store.repositories.fine_tuning import FineTuningRepository

    async with stack["service"].db.session() as session:
        row = await FineTuningRepository(session).job(ft_job_id)
    assert row is not None and row["job_id"]
    return row["job_id"]


async def test_a_file_with_nothing_to_train_on_fails_the_job_with_its_reasons(stack: dict[str, Any]) -> None:
    client = stack["client"]()
    bad = b'{"prompt": "a", "completion": "b"}\nnot json\n'
    uploaded = await client.files.create(file=("legacy.jsonl", bad), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(model="tiny-llama", training_file=uploaded.id)
    assert job.status == "failed" and job.error is not None
    assert (job.error.code, job.error.param) == ("invalid_training_file", "training_file")
    events = [e.message for e in (await client.fine_tuning.jobs.list_events(job.id)).data]
    assert any("line 1 refused: E7010" in m for m in events) and any("line 2 refused: E7015" in m for m in events)


async def test_rest_imports_report_every_line(stack: dict[str, Any]) -> None:
    http, keys = stack["http"], stack["keys"]
    files = {"file": ("runs.jsonl", (IMPORTERS / "langsmith_runs.jsonl").read_bytes())}
    r = await http.post("/api/v1/imports", files=files, data={"format": "langsmith"}, headers=auth(keys["trainer"]))
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["counts"] == {"imported": 2, "filtered": 2, "refused": 2, "skipped": 1, "preference_pairs": 0}
    assert [(x["line"], x["code"]) for x in report["refused"]] == [(4, "E7010"), (5, "E7015")]

    text = (IMPORTERS / "openai_preference.jsonl").read_text()
    r = await http.post("/api/v1/imports", json={"format": "openai-preference", "filename": "prefs.jsonl",
                                                 "content": text}, headers=auth(keys["trainer"]))
    assert r.status_code == 200 and r.json()["counts"]["preference_pairs"] == 2
    r = await http.post("/api/v1/imports", json={"format": "csv", "content": "a,b"}, headers=auth(keys["trainer"]))
    assert r.status_code == 400 and r.json()["code"] == "E7110"
    r = await http.post("/api/v1/imports", json={"format": "langsmith", "content": "{}"},
                        headers=auth(keys["producer"]))
    assert r.status_code == 403


def test_cli_import_prints_the_report_and_exits_1_on_refused_lines(l07_home: Path) -> None:
    from typer.testing import CliRunner

    from L07_learning.cli.main import app

    out = CliRunner().invoke(app, ["import", "langfuse", str(IMPORTERS / "langfuse_traces.json"), "--json"])
    assert out.exit_code == 1, out.output
    report = json.loads(out.stdout)
    assert report["counts"]["imported"] == 2 and [r["line"] for r in report["refused"]] == [5, 6, 7]
    ok = CliRunner().invoke(app, ["import", "openai-chat", str(IMPORTERS / "openai_chat.jsonl"), "--quality", "90"])
    assert ok.exit_code == 1 and "refused" in ok.stdout and "E7012" in ok.stdout


async def _right_calls(served_dir: str, adapter_dir: str | None, model_id: str, auth_service: Any, key: str,
                       held_out: list[dict[str, Any]]) -> int:
    """How many held-out lines a served model answers with the expected tool call, asked through the openai client
    exactly as an agent asks ``l07 serve-model``."""
    from L07_learning.api.serving import ServingLimits, create_serving_app
    from L07_learning.models.tool_calls import same_calls
    from L07_learning.services.release.serving_model import ServedModel

    served = await asyncio.to_thread(ServedModel.load, served_dir, adapter_dir)
    app = create_serving_app(served, model_id, auth_service.authenticate, ServingLimits(max_completion_tokens=48))
    right = 0
    async with app.router.lifespan_context(app), httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://serve.test") as http:
        client = openai.AsyncOpenAI(base_url="http://serve.test/v1", api_key=key, http_client=http, max_retries=0)
        for line in held_out:
            reply = await client.chat.completions.create(model=model_id, messages=line["messages"][:-1],
                                                         tools=line["tools"], max_tokens=48)
            got = [c.model_dump() for c in reply.choices[0].message.tool_calls or []]
            right += same_calls(line["messages"][-1]["tool_calls"], got)
    return right


@pytest.mark.slow
async def test_openai_client_fine_tunes_and_the_tuned_model_beats_the_base_on_held_out_lines(
        stack: dict[str, Any], tmp_path: Path) -> None:
    from L07_learning.services.registry.loading import resolve_model_dirs
    from L07_learning.tests.factories.openai_files import tool_user_base

    service, keys = stack["service"], stack["keys"]
    taught = await asyncio.to_thread(tool_user_base, Path(await service.registry.local_path(stack["base"].model_id)),
                                     tmp_path / "tiny-tool-user")
    base = await service.registry.register_base(str(taught), name="tiny-tool-user")
    lines = tool_lines(seed=1)
    train, held_out = lines[:128], lines[128:]
    client = stack["client"]()
    uploaded = await client.files.create(file=("oslo-office.jsonl", jsonl(train)), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        model="tiny-tool-user", training_file=uploaded.id, suffix="oslo",
        # learning_rate_multiplier x 2e-5 = the tiny recipe's 1e-3; target_modules is an L07 extension.
        hyperparameters={"n_epochs": 4, "batch_size": 4, "learning_rate_multiplier": 50,
                         "target_modules": ["all-linear"]})
    started = time.monotonic()
    worker = asyncio.create_task(service.sft_engine.run_worker_once())
    seen = set()
    while (job := await client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        seen.add(job.status)
        assert time.monotonic() - started < 600, job
        await asyncio.sleep(0.5)
    await worker
    training_s = time.monotonic() - started
    # The client follows has_more/after through every page (newest first).
    events = [e.message async for e in client.fine_tuning.jobs.list_events(job.id, limit=50)]
    assert job.status == "succeeded", (job.error, events[:5])
    assert seen <= {"queued", "running"} and job.fine_tuned_model and job.trained_tokens
    assert any("128 lines accepted, 0 filtered" in m for m in events)
    assert any(m.startswith("Step ") and "training loss=" in m for m in events)
    assert any("fine-tuned model " + job.fine_tuned_model in m for m in events)

    tuned = await service.registry.get_model(job.fine_tuned_model)
    assert tuned.parent_model_id == base.model_id and tuned.name == "tiny-tool-user-ft-oslo"
    model_dir, adapter_dir = await resolve_model_dirs(service.registry, job.fine_tuned_model)
    auth_service = stack["app"].state.l07.auth
    tuned_right = await _right_calls(model_dir, adapter_dir, job.fine_tuned_model, auth_service, keys["inference"],
                                     held_out)
    base_right = await _right_calls(model_dir, None, base.model_id, auth_service, keys["inference"], held_out)
    print(f"training {training_s:.1f} s; held-out right calls: tuned {tuned_right}/{len(held_out)}, "
          f"base {base_right}/{len(held_out)}")
    assert tuned_right > base_right and tuned_right >= len(held_out) // 2
