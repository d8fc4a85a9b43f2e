"""A small stand-in for L04's gateway: it follows L07's events in the outbox JSONL sink and serves what they say.

* ``model_ready_for_deployment``: the release is in STAGING; the gateway's two bot keys (a deployer and an
  ml_manager, the two different approvers STAGING -> PRODUCTION needs) approve it and promote it over L07's REST API.
* ``model_deployment_approved`` to PRODUCTION: the release is ACTIVE; the gateway loads it with ``l07 serve-model``
  (real inference) and puts it behind the small-model route, replacing the predecessor at the share it had.
* ``model_deployment_failed`` with ``rolled_back_to``: L07 rolled the release back; the route goes back to that
  version (still loaded, so the switch is immediate).

The route's share only grows: each round it moves one step towards the share that keeps the fleet's success within
an error budget of the expert's (``share <= budget / (expert rate - small rate)``, from the release's own measured
rate). It never lowers the share on its own: protecting agents from a bad release is L07's watch's job, which is
what the flywheel measures.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .environment import SYSTEM_PROMPT, TOOLS, Task, parse_calls

READY = "model_ready_for_deployment"
APPROVED = "model_deployment_approved"
FAILED = "model_deployment_failed"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ModelServer:
    """One ``l07 serve-model`` child process and an OpenAI-style client for it."""

    def __init__(self, env: dict[str, str], model_id: str, key: str, log: Path, allow_stage: str | None = None) -> None:
        self.model_id, self.key, self.port = model_id, key, free_port()
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        args = [sys.executable, "-m", "L07_learning.cli.main", "serve-model", model_id, "--port", str(self.port),
                "--max-tokens", "128", *(["--allow-stage", allow_stage] if allow_stage else [])]
        self.proc = subprocess.Popen(args, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"l07 serve-model {self.model_id} exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"l07 serve-model {self.model_id} did not start in {timeout_s:.0f} s")
            time.sleep(1.0)

    def ask(self, task: Task) -> tuple[list[tuple[str, Any]], float]:
        """The model's tool calls for a task, and the request's wall time."""
        # 64 tokens hold the longest right call; an untrained model would otherwise ramble for the whole budget.
        body = {"model": self.model_id, "temperature": 0, "max_tokens": 64, "tools": TOOLS,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": task.goal}]}
        started = time.perf_counter()
        r = httpx.post(f"{self.url}/v1/chat/completions", json=body, timeout=600,
                       headers={"Authorization": f"Bearer {self.key}"})
        latency = time.perf_counter() - started
        r.raise_for_status()
        message = r.json()["choices"][0]["message"]
        return parse_calls(message.get("tool_calls") or []), latency

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


@dataclass
class Route:
    """The small-model route: which release serves it and its share of the fleet's traffic."""

    model_id: str | None = None
    share: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


class Gateway:
    """Follows the sink, approves with its bot keys, serves releases, routes a share of traffic to them.

    Args:
        env: Environment of the ``l07 serve-model`` children (the loop's home and database).
        sink: The outbox JSONL file the loop writes its events to.
        api: Base URL of ``l07 run --api``.
        keys: ``deployer``, ``ml_manager`` (the bot approvers) and ``inference`` API keys.
        logs: Folder for the servers' logs.
    """

    def __init__(self, env: dict[str, str], sink: Path, api: str, keys: dict[str, str], logs: Path,
                 start_share: float, share_step: float, max_share: float, error_budget: float) -> None:
        self.env, self.sink, self.api, self.keys, self.logs = env, sink, api, keys, logs
        self.start_share, self.share_step, self.max_share, self.error_budget = \
            start_share, share_step, max_share, error_budget
        self.route = Route()
        self.servers: dict[str, ModelServer] = {}
        self._offset = 0

    def _rest(self, method: str, path: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        r = httpx.request(method, f"{self.api}{path}", json=body, timeout=300,
                          headers={"Authorization": f"Bearer {key}"})
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    def events(self) -> list[dict[str, Any]]:
        """New events in the sink since the last call."""
        if not self.sink.exists():
            return []
        with self.sink.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self._offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def poll(self) -> list[dict[str, Any]]:
        """Act on the sink's new events; returns what happened (``{"event", "model_id", ...}``)."""
        happened: list[dict[str, Any]] = []
        for event in self.events():
            kind, data = event.get("type", "").rsplit(".", 1)[-1], event.get("data") or {}
            model_id = data.get("model_id")
            if kind == READY:
                for capacity in ("deployer", "ml_manager"):
                    self._rest("POST", f"/api/v1/models/{model_id}/approve", self.keys[capacity],
                               {"stage": "production", "capacity": capacity})
                self._rest("POST", f"/api/v1/models/{model_id}/promote", self.keys["deployer"],
                           {"stage": "production", "notes": "flywheel gateway: bot approvals"})
                happened.append({"event": "released", "model_id": model_id, "version": data.get("version")})
            elif kind == APPROVED and data.get("to_stage") == "PRODUCTION":
                self.serve(model_id)
                happened.append({"event": "deployed", "model_id": model_id, "version": data.get("version")})
            elif kind == FAILED and data.get("rolled_back_to"):
                self.serve(data["rolled_back_to"])
                happened.append({"event": "rolled_back", "model_id": model_id, "to": data["rolled_back_to"],
                                 "error_code": data.get("error_code")})
        return happened

    def load(self, model_id: str, allow_stage: str | None = None) -> ModelServer:
        """The running server of a model, started on first use."""
        if model_id not in self.servers:
            server = ModelServer(self.env, model_id, self.keys["inference"], self.logs / f"serve-{model_id[:8]}.log",
                                 allow_stage)
            server.wait_ready()
            self.servers[model_id] = server
        return self.servers[model_id]

    def serve(self, model_id: str) -> None:
        """Put ``model_id`` behind the route (the first release starts at ``start_share``)."""
        self.load(model_id)
        if self.route.model_id is None:
            self.route.share = self.start_share
        self.route.model_id = model_id
        self.route.history.append({"model_id": model_id, "at": time.time(), "share": self.route.share})

    def ramp(self, small_rate: float | None, expert_rate: float | None) -> None:
        """One step up, capped by the error budget against the expert's measured rate."""
        if self.route.model_id is None or small_rate is None or expert_rate is None:
            return
        gap = expert_rate - small_rate
        cap = self.max_share if gap <= 0 else min(self.max_share, self.error_budget / gap)
        if self.route.share < cap:
            self.route.share = min(cap, self.route.share + self.share_step)

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
