"""A seeded L07 home for the console's tests: real CloudEvents through ingestion and the filter (accepted examples,
REVIEW ones and ones carrying planted secrets), a dataset version, the tiny base model and a validated candidate,
one API key per role; and ``l07 serve`` / ``l07 worker`` run on it as real subprocesses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from L07_learning.tests.factories.loop import CACHE, TASK_TYPE, tool_choice_lines

# Secrets planted in example texts: none may appear on any console page (the filter stores them masked).
PLANTED_SECRETS = {
    "aws": "AKIAZ7QW3ERT5YUI9OPA",
    "openai": "sk-live-Qm9xYzR3UzhkVnJ0YlBxWkE1NnY",
    "github": "ghp_R8sT2vW4yZ6bD9fH1kM3nP5qS7uX0aC2eG4i",
}
REVIEW_EXECUTIONS = 4
SECRET_EXECUTIONS = 3
# Tiny-model job settings (tests/services/jobs/test_jobs.py): one epoch, the adapter registered whatever the verdict.
TINY_JOB = dict(learning_rate=1e-3, batch_size=4, lora_rank=8, lora_alpha=16, max_seq_length=1024, epochs=1,
                gradient_checkpointing=False, eval_strategy="no", save_strategy="no", early_stopping_patience=0,
                extra={"require_improvement": False})
# Validation budgets sized for the tiny model (tests/api/test_api.py QUICK_VALIDATION).
QUICK_VALIDATION = {"L07_VALIDATION_MAX_NEW_TOKENS": "12", "L07_VALIDATION_LATENCY_REQUESTS": "3",
                    "L07_VALIDATION_SAFETY_PROMPTS": "3"}


def _event(type_: str, source: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"specversion": "1.0", "type": type_, "source": source, "id": str(uuid.uuid4()),
            "datacontenttype": "application/json", "data": data}


def _trace(exec_id: str, agent: str, goal: str, answer: str) -> dict[str, Any]:
    return _event("com.agentic.execution.trace_generated", "https://agentic.local/layers/l02", {
        "execution_id": exec_id, "agent_id": agent, "task_id": f"task-{exec_id}", "task_type": "support_reply",
        "task_definition": {"goal": goal, "context": {}},
        "execution_trace": [{"step": 1, "action": "lookup", "parameters": {"q": "account"}, "output": "ok"}],
        "final_answer": answer, "outcome": "success",
        "metadata": {"execution_duration_seconds": 2.0, "tool_calls": 1, "tokens_used": 200}})


def _score(exec_id: str, quality: float, confidence: float) -> dict[str, Any]:
    return _event("com.agentic.evaluation.quality_score_computed", "https://agentic.local/layers/l06", {
        "execution_id": exec_id, "quality_score": quality, "confidence_level": confidence, "task_type": "support_reply",
        "failure_classification": "success", "evaluation_method": "automated"})


def review_and_secret_events() -> list[dict[str, Any]]:
    """Executions whose confidence sends them to REVIEW, and executions whose answers carry the planted secrets."""
    events: list[dict[str, Any]] = []
    for i in range(REVIEW_EXECUTIONS):
        exec_id = f"exec-review-{i}"
        events += [_trace(exec_id, "agent-support-7", f"Explain refund rule {i} to a customer",
                          f"Refunds for order class {i} are paid within {i + 3} working days."),
                   _score(exec_id, 90.0, 0.62)]
    secrets = list(PLANTED_SECRETS.values())
    for i in range(SECRET_EXECUTIONS):
        exec_id = f"exec-secret-{i}"
        events += [_trace(exec_id, "agent-ops-2", f"Configure the deploy job for service {i}",
                          f"Set the credential to {secrets[i % len(secrets)]} and export it before the deploy step."),
                   _score(exec_id, 92.0, 0.95)]
    return events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of an ``l07`` process on ``home`` (SQLite under it, the shared tiny-model cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("L07_")}
    env.update({"L07_HOME": str(home), "L07_MODEL_CACHE_DIR": CACHE, "L07_MINIMUM_DATASET_SIZE": "1",
                "L07_LOG_LEVEL": "WARNING", **QUICK_VALIDATION, **extra})
    return env


class Served:
    """``l07 serve`` on a free port of this host, stopped on ``close``."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (home / "serve.log").open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "L07_learning.cli.main", "serve", "--port", str(self.port)],
                                     env=home_env(home), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"l07 serve exited with {self.proc.returncode}: {(home / 'serve.log').read_text()}")
            try:
                if httpx.get(self.url + "/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("l07 serve did not answer within 60 s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def start_worker(home: Path) -> subprocess.Popen[bytes]:
    """``l07 worker --once``: claims the waiting job and trains it in its child process."""
    return subprocess.Popen([sys.executable, "-m", "L07_learning.cli.main", "worker", "--once"],
                            env=home_env(home), stdout=(home / "worker.log").open("wb"), stderr=subprocess.STDOUT)


async def seed(home: Path) -> dict[str, Any]:
    """Fill ``home`` through the real services; returns the keys (token per role) and the ids the tests use."""
    from L07_learning.api.auth import AuthService
    from L07_learning.models import ModelArtifact, ModelType
    from L07_learning.pipelines.base_model import build_tiny_model
    from L07_learning.services.learning_service import LearningService
    from L07_learning.services.loop.datasets import version_group
    from L07_learning.services.loop.policies import GroupSelector
    from L07_learning.settings import Settings
    from L07_learning.tests.factories.validation import chatty, record_golden_suite

    settings = Settings(home=home, minimum_dataset_size=1)
    service = LearningService.build(settings)
    await service.initialize(start_relay=False)
    try:
        auth = AuthService(service.access)
        keys = {role: (await auth.create_key(role, name=f"console-{role}"))[1]
                for role in ("trainer", "reviewer", "deployer", "auditor", "admin")}
        keys["ml_manager"] = (await auth.create_key("reviewer", name="console-manager",
                                                    attributes={"ml_manager": True}))[1]
        events = [json.loads(line) for line in tool_choice_lines(24, seed=3)] + review_and_secret_events()
        summary = await service.process_events(events)
        dataset = await version_group(service.curator, service.db, "console-tools", GroupSelector(task_type=TASK_TYPE),
                                      min_examples=1, reason="console test seed", created_by="console-test")
        tiny = build_tiny_model(home.parent / "tiny", seed=0, cache_dir=CACHE)
        base = await service.registry.register_base(str(tiny), name="tiny-llama")
        talker = chatty(tiny, home.parent / "chatty")
        candidate = await service.registry.register_model(
            ModelArtifact(name="console-candidate", model_type=ModelType.FINE_TUNED), source_dir=str(talker))
        # Golden suite = the candidate's own answers, so re-running the same weights passes regression.
        await record_golden_suite(service.db, talker, "console-candidate")
    finally:
        await service.cleanup()
    return {"keys": keys, "ingested": summary, "dataset_id": dataset.dataset_id, "base_id": base.model_id,
            "candidate_id": candidate}
