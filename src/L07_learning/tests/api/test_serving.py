"""`l07 serve-model`: the official openai client calls a verified registered model as an agent would (its own
system prompt, tools in the request) and gets parsed tool calls, streaming, concurrency, keys and limits."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from L07_learning.api.auth import AuthService
from L07_learning.models import ModelArtifact, ModelType
from L07_learning.models.tool_calls import same_calls
from L07_learning.tests.factories.serving import TEACH, TEACH_TEXT, TOOLS, conversation, taught_tool_caller
from L07_learning.tests.paths import SRC

pytestmark = pytest.mark.slow  # trains a tiny model and starts a server process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model

    tmp = tmp_path_factory.mktemp("taught")
    return taught_tool_caller(build_tiny_model(tmp / "tiny"), tmp / "taught")


async def _register(model_dir: Path) -> tuple[str, str, str]:
    from L07_learning.services.learning_service import LearningService

    service = LearningService.build()
    try:
        await service.initialize()
        model_id = await service.registry.register_model(
            ModelArtifact(name="field-ops", model_type=ModelType.FINE_TUNED), source_dir=str(model_dir))
        auth = AuthService(service.access)
        _, agent_key = await auth.create_key("inference", name="agent")
        _, producer_key = await auth.create_key("producer", name="l02", sources=["L02"])
    finally:
        await service.cleanup()
    return model_id, agent_key, producer_key


@pytest.fixture
def served(request: pytest.FixtureRequest, l07_home: Path, taught: Path):  # type: ignore[no-untyped-def]
    """``serve-model`` in its own process, on the engine the test names (indirect parameter; transformers if none)."""
    engine = getattr(request, "param", "transformers")
    model_id, agent_key, producer_key = asyncio.run(_register(taught))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "L07_INFERENCE_BACKEND": engine}
    proc = subprocess.Popen(
        [sys.executable, "-m", "L07_learning.cli.main", "serve-model", model_id, "--port", str(port),
         "--allow-stage", "DEVELOPMENT", "--max-tokens", "96", "--max-request-bytes", "20000"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:] if proc.stderr else "server exited"
            try:
                health = httpx.get(f"{base}/health", timeout=1)
                if health.status_code == 200:
                    assert health.json()["engine"] == engine
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve-model did not start"
            time.sleep(0.3)
        yield {"model_id": model_id, "base": base, "agent_key": agent_key, "producer_key": producer_key}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("served", ["transformers", pytest.param("ctranslate2", marks=pytest.mark.skipif(
    importlib.util.find_spec("ctranslate2") is None, reason="ctranslate2 is not installed (extra fast-cpu)"))],
    indirect=True)
def test_agents_get_tool_calls_streams_and_concurrency_through_the_openai_client(served) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=served["base"] + "/v1", api_key=served["agent_key"], max_retries=0)
    assert [m.id for m in client.models.list().data] == [served["model_id"]]

    for goal, expected in TEACH:
        answer = client.chat.completions.create(model=served["model_id"], messages=conversation(goal), tools=TOOLS,
                                                max_tokens=64)
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        calls = [c.model_dump() for c in choice.message.tool_calls or []]
        assert same_calls([expected], calls), calls
        assert json.loads(calls[0]["function"]["arguments"]) == json.loads(expected["function"]["arguments"])

    # Streaming: the same call arrives as chunks; without tools the text matches the non-streamed text exactly.
    goal, expected = TEACH[0]
    chunks = list(client.chat.completions.create(model=served["model_id"], messages=conversation(goal), tools=TOOLS,
                                                 max_tokens=64, stream=True))
    streamed_calls = [tc.model_dump() for c in chunks for tc in (c.choices[0].delta.tool_calls or [])] if chunks else []
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert same_calls([expected], [{"function": c["function"]} for c in streamed_calls])
    # Text without tools streams in pieces, and the pieces make the same text as the whole answer.
    plain = client.chat.completions.create(model=served["model_id"], messages=conversation(TEACH_TEXT[0]),
                                           max_tokens=24)
    assert plain.choices[0].message.content == TEACH_TEXT[1]
    pieces = list(client.chat.completions.create(model=served["model_id"], messages=conversation(TEACH_TEXT[0]),
                                                 max_tokens=24, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in pieces)
    assert len([c for c in pieces if c.choices[0].delta.content]) > 1
    assert text.strip() == TEACH_TEXT[1]

    # 8 agents at once: every request answered, each with its own right call.
    def ask(k: int) -> bool:
        goal, expected = TEACH[k % len(TEACH)]
        out = client.chat.completions.create(model=served["model_id"], messages=conversation(goal), tools=TOOLS,
                                             max_tokens=64)
        return same_calls([expected], [c.model_dump() for c in out.choices[0].message.tool_calls or []])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(ask, range(8)))
    metrics = httpx.get(served["base"] + "/metrics", headers={"Authorization": f"Bearer {served['agent_key']}"}).text
    assert "l07_serving_tokens_total" in metrics and "l07_serving_request_latency_seconds_bucket" in metrics


def test_keys_roles_and_limits_are_enforced(served) -> None:  # type: ignore[no-untyped-def]
    no_key = openai.OpenAI(base_url=served["base"] + "/v1", api_key="not-a-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        no_key.chat.completions.create(model=served["model_id"], messages=[{"role": "user", "content": "hi"}])
    missing = httpx.post(served["base"] + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert missing.status_code == 401
    producer = openai.OpenAI(base_url=served["base"] + "/v1", api_key=served["producer_key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError):
        producer.chat.completions.create(model=served["model_id"], messages=[{"role": "user", "content": "hi"}])

    agent = openai.OpenAI(base_url=served["base"] + "/v1", api_key=served["agent_key"], max_retries=0)
    with pytest.raises(openai.BadRequestError) as too_many:
        agent.chat.completions.create(model=served["model_id"], messages=[{"role": "user", "content": "hi"}],
                                      max_tokens=500)
    assert too_many.value.body["code"] == "E7110"
    with pytest.raises(openai.APIStatusError) as too_big:
        agent.chat.completions.create(model=served["model_id"], messages=[{"role": "user", "content": "x" * 30000}])
    assert too_big.value.status_code == 413


def test_only_staging_or_production_models_are_served_unless_allowed(l07_home: Path, tmp_path: Path) -> None:
    from L07_learning.pipelines.base_model import build_tiny_model
    from L07_learning.services.learning_service import LearningService

    async def in_service(action):  # type: ignore[no-untyped-def]
        service = LearningService.build()
        await service.initialize()
        try:
            return await action(service.registry)
        finally:
            await service.cleanup()

    model_id = asyncio.run(in_service(lambda registry: registry.register_model(
        ModelArtifact(name="unreviewed", model_type=ModelType.FINE_TUNED),
        source_dir=str(build_tiny_model(tmp_path / "tiny")))))
    runner = CliRunner()
    refused = runner.invoke(_app(), ["serve-model", model_id, "--port", str(_free_port())])
    assert refused.exit_code == 2 and "DEVELOPMENT" in refused.output and "E7251" in refused.output
    asyncio.run(in_service(lambda registry: registry.promote_model(model_id, "rejected", actor="test",
                                                                   approvals=["admin=test"])))
    rejected = runner.invoke(_app(), ["serve-model", model_id, "--allow-stage", "DEVELOPMENT"])
    assert rejected.exit_code == 2 and "REJECTED" in rejected.output


def _app():  # type: ignore[no-untyped-def]
    from L07_learning.cli.main import app

    return app
