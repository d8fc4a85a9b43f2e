"""Event files for the loop's end-to-end tests and ``benchmarks/loop.py``: one task family the demo never saw.

``tool_choice``: a user request names a topic, and the agent calls the one tool that serves that topic with the topic
and the request's reference number as arguments (``ledger_search({"ref":1663,"topic":"invoice"})``, result ``ok``),
then answers with the tool's name; trained as that conversation with the four tools' schemas in the prompt. The tool names are made up, so the base model cannot already produce them; the mapping is
a lookup a small model learns from about a hundred examples. The reference number makes every output distinct: with
one fixed output per topic, the filter's poisoning rule rightly flags the topic words as triggers. Requests are phrased many ways (templates, names, order numbers, trailing remarks) so the quality
filter's near-duplicate rule keeps them, and three agents share the work so no agent exceeds the filter's 50% source
share. Every execution succeeds and is scored high by L06, so every trace becomes an ACCEPTED example.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, IO

from L07_learning.models.error_codes import L07Error, L07ErrorCode
from L07_learning.settings import Settings
from L07_learning.tests.factories.envelopes import envelope_maker
from L07_learning.store.db import Database
from L07_learning.tests.paths import SRC

TASK_TYPE = "tool_choice"
# Four tools: every trace shows one, and the dataset offers all four (schemas derived and merged per task type), so
# each prompt carries four schemas; more would make every CPU training step of the loop tests longer for nothing.
TOOL_FOR = {"invoice": "ledger_search", "parcel": "shipment_trace", "forecast": "sky_report",
            "password": "vault_reset"}
AGENTS = ["agent-router-11", "agent-router-12", "agent-router-13"]
NAMES = ["Alice", "Bob", "Chen", "Dana", "Emil", "Farah", "Gita", "Hugo", "Ines", "Jonas", "Kemal", "Lena"]
TEMPLATES = ["Customer {name} asks about a {kw} for order {n}.",
             "{name} needs help with the {kw} of account {n}.",
             "Request {n}: {name} has a {kw} question.",
             "Hi, this is {name}; my {kw} (ref {n}) needs attention.",
             "Ticket {n} from {name} concerns a {kw}.",
             "{name} wrote in about {kw} number {n}."]
REMARKS = ["", " Please be quick.", " Thanks!", " It is urgent.", " Second message today.", " Reply soon."]
BASE_TIME = datetime(2026, 3, 2, 8, 0, 0, tzinfo=timezone.utc)

# The recipe that makes SmolLM2 learn this task on CPU: the demo's (preset cpu-small, all-linear LoRA, alpha 32, no
# dropout, the top 20 blocks) without the per-epoch eval.
SMOLLM2_TRAINING: dict[str, Any] = {"kind": "sft", "preset": "cpu-small", "config": {
    "early_stopping_patience": 0, "epochs": 3, "lora_alpha": 32, "lora_dropout": 0.0, "lora_top_layers": 20,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "extra": {"generation_eval": False}, "eval_strategy": "no", "seed": 3}}
# Tiny jobs that checkpoint every 2 steps (so a kill has something to resume from). A row of this family is ~340
# SmolLM2 tokens (the four tool schemas ride in every prompt), so 512 keeps every row.
# The tiny random model may not beat its base, so its adapter is registered despite the no-improvement verdict.
TINY_TRAINING: dict[str, Any] = {
    "learning_rate": 1e-3, "batch_size": 4, "lora_rank": 8, "max_seq_length": 512, "epochs": 3, "eval_strategy": "no",
    "save_strategy": "steps", "save_checkpoint_every_n_steps": 2, "early_stopping_patience": 0,
    "gradient_checkpointing": False, "extra": {"require_improvement": False}}


def policy_file(path: Path, groups: dict[str, dict[str, str]], training: dict[str, Any], min_new: int) -> Path:
    """A policy YAML: one policy per group, each firing once at ``min_new`` new examples (then a day's cool-down)."""
    import yaml

    path.write_text(yaml.safe_dump({"policies": [
        {"name": name, "group": group, "training": training,
         "trigger": {"min_new_examples": min_new, "min_dataset_size": min_new, "cooldown": "24h"}}
        for name, group in groups.items()]}))
    return path


def tool_choice_lines(executions: int, seed: int = 0) -> list[str]:
    """JSON lines: an L02 trace and its L06 score per execution, deterministic for a seed."""
    rng = random.Random(seed)
    envelope = envelope_maker(rng, BASE_TIME)
    lines: list[str] = []

    topics = sorted(TOOL_FOR)
    for i in range(executions):
        kw = topics[i % len(topics)]
        tool = TOOL_FOR[kw]
        ref = rng.randint(1000, 9999)
        goal = "Pick the tool for this request. " + rng.choice(TEMPLATES).format(
            name=rng.choice(NAMES), kw=kw, n=ref) + rng.choice(REMARKS)
        exec_id = f"exec-tool-{seed}-{i:05d}"
        lines.append(envelope("com.agentic.execution.trace_generated", "https://agentic.local/layers/l02", {
            "execution_id": exec_id, "agent_id": AGENTS[i % len(AGENTS)], "task_id": f"task-tool-{i:05d}",
            "task_type": TASK_TYPE, "task_definition": {"goal": goal, "context": {}},
            "execution_trace": [{"step": 1, "action": tool, "parameters": {"topic": kw, "ref": ref}, "output": "ok"}],
            "final_answer": tool, "outcome": "success",
            "metadata": {"execution_duration_seconds": 1.5, "tool_calls": 1, "tokens_used": 300}}))
        lines.append(envelope("com.agentic.evaluation.quality_score_computed", "https://agentic.local/layers/l06", {
            "execution_id": exec_id, "quality_score": round(rng.uniform(85, 98), 1),
            "confidence_level": round(rng.uniform(0.88, 0.99), 3), "task_type": TASK_TYPE,
            "failure_classification": "success", "evaluation_method": "automated",
            "metrics": {"goal_achievement_rate": 0.95}, "dimensions": {"correctness": 95.0}}))
    return lines


def write_events(path: Path, lines: list[str]) -> Path:
    """Write the lines beside ``path`` and rename into place, so a watcher never sees a half-written file."""
    part = path.with_suffix(".part")
    part.write_text("\n".join(lines) + "\n", encoding="utf-8")
    part.replace(path)
    return path


# --- ``l07 run`` as a subprocess ---------------------------------------------------------------------------------

CACHE = os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models"))
RELEASE_EVENT = "com.agentic.learning.model_ready_for_deployment"


def loop_env(home: Path, **settings: Any) -> dict[str, str]:
    """The environment of an ``l07 run`` child: its own home, the shared converted-model cache, ``L07_<NAME>``
    for every keyword (``database_url=...`` becomes ``L07_DATABASE_URL``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("L07_")}
    env.update({"PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""), "L07_HOME": str(home),
                "L07_MODEL_CACHE_DIR": CACHE, "L07_LOG_FORMAT": "text",
                # test groups are tens to hundreds of examples; training refuses fewer than this (default 5000)
                "L07_MINIMUM_DATASET_SIZE": "1"})
    env.update({f"L07_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class LoopProcess:
    """One ``l07 run`` child process, its output in ``log``."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.log = log
        self._out: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.proc = subprocess.Popen([sys.executable, "-m", "L07_learning.cli.main", "run", *args], env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; returns the exit code (SIGKILL after ``timeout``)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the loop and its job children (one process group), as a crash would."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._out.close()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


async def wait_for(check: Callable[[], Awaitable[Any]], timeout_s: float, what: str,
                   procs: tuple[LoopProcess, ...] = (), every_s: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy; fails with the loops' logs when they die or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = await check()
        if got:
            return got
        for p in procs:
            assert p.alive(), f"l07 run exited ({p.proc.returncode}) while waiting for {what}:\n{p.tail()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout_s:.0f} s:\n" + "\n".join(p.tail() for p in procs)
        await asyncio.sleep(every_s)


def sink_events(home: Path, type_: str = RELEASE_EVENT) -> list[dict[str, Any]]:
    """Events of one type that reached the JSONL outbox sink of a home."""
    path = Settings(home=home).outbox_jsonl_path
    if path is None or not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [e for e in events if e.get("type") == type_]


async def open_db(home: Path, url: str | None = None, timeout_s: float = 120.0) -> Database:
    """The database a home's loop uses (or ``url``), connected once the loop has brought its schema to head (a
    loop that has just started may still be migrating), for reading what the loop stored."""
    deadline = time.monotonic() + timeout_s
    db = Database(url or Settings(home=home).database_url or "", auto_migrate=False)
    while True:
        try:
            await db.connect()
            return db
        except L07Error as exc:
            if exc.code is not L07ErrorCode.CONFIGURATION_NOT_FOUND or time.monotonic() > deadline:
                raise
            await asyncio.sleep(1.0)
