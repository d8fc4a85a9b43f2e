"""The flywheel, measured: an agent fleet on the warehouse desk (``environment``), ``l07 run`` learning from it, a
gateway stand-in (``gateway``) serving each release, and a bad release that L07 must roll back on its own.

Story, round by round (one round: ``tasks_per_round`` requests every ``round_s`` seconds):

1. The fleet's history (``backlog`` requests answered by the scripted expert, the expensive policy) is dropped into
   the loop's watched folder as L02 traces with L06 scores; the loop's policy fires, trains SmolLM2 and releases it
   (signed ``model_ready_for_deployment`` in the JSONL sink). The base model's success is probed first, through
   ``l07 serve-model``, on ``probe`` fixed requests.
2. The gateway approves the release with its bot keys, promotes it, loads it and routes a growing share of each
   round to it. Every attempt, the expert's and the small model's, is checked, scored and sent back with the
   serving model in ``metadata`` (the small model's successes are ACCEPTED examples for later rounds).
3. Fault injection: labels from a broken pipeline (``environment.corrupted``) are ingested under their own task type
   and trained into an adapter of the same name; once the first release has ``min_samples`` scored outcomes (the
   watch's baseline), an admin pushes the adapter to PRODUCTION with the audited gate override. The gateway serves
   it at the route's share; L07's release watch (window ``min_samples``) rolls it back, the gateway returns to the
   version L07 rolled back to, and ``recovery_rounds`` rounds show the success rate after.

No command is given after the start: the gateway's bot keys give the approvals PRODUCTION needs; the override is the
experiment's fault, audited as ``model.gates_overridden``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from ...models.error_codes import L07Error
from ...models.training_job import JobStatus
from ...settings import Settings
from ...store.repositories.loop import LoopRepository
from ..fine_tuning_engine import load_preset
from ..learning_service import LearningService
from ..loop.datasets import version_group
from ..loop.policies import GroupSelector
from .environment import TASK_TYPE, Task, Verdict, check, corrupted, expert, make_task
from .events import Attempt, attempt_lines
from .gateway import Gateway, free_port

EXPERT = "scripted-expert"
RELABELLER = "relabelling-pipeline"
RELABELLED = TASK_TYPE + "_relabelled"
POLICY = "flywheel"
# Training refuses datasets below this (default 5000); the flywheel's run of minutes trains on tens of examples.
MINIMUM_DATASET_SIZE = 20
AGENTS = ["agent-desk-01", "agent-desk-02", "agent-desk-03"]
# The recipe that teaches SmolLM2 a tool-call family on CPU in a few minutes (cpu-small, all linear layers, alpha 32,
# top 20 blocks), without the per-epoch evaluation a loop release does not need (its validation measures instead).
TRAINING: dict[str, Any] = {"kind": "sft", "preset": "cpu-small", "config": {
    "early_stopping_patience": 0, "epochs": 3, "lora_alpha": 32, "lora_dropout": 0.0, "lora_top_layers": 20,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "extra": {"generation_eval": False}, "eval_strategy": "no", "seed": 3}}


@dataclass
class FlywheelConfig:
    """Scale and thresholds of one flywheel run (defaults: the reduced scale that runs in minutes on 2 CPU cores)."""

    home: Path
    model_cache_dir: Path | None = None
    backlog: int = 80
    corrupt_examples: int = 32
    bad_epochs: int = 2
    tasks_per_round: int = 10
    round_s: float = 8.0
    probe: int = 8
    min_samples: int = 30
    start_share: float = 0.2
    share_step: float = 0.2
    max_share: float = 0.8
    error_budget: float = 0.02
    recovery_rounds: int = 3
    seed: int = 11
    timeout_s: float = 1800.0
    training: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(TRAINING)))


@dataclass
class Round:
    """One round's numbers (a row of the table)."""

    round: int
    t_s: float
    phase: str
    release: str | None
    share: float
    small_n: int
    small_success: float | None
    expert_n: int
    expert_success: float | None
    fleet_success: float
    latency_ms: float
    small_latency_ms: float | None
    events: list[str]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _agent(task: Task) -> str:
    """Three agents share the work evenly (the quality filter caps any one source's share of a batch)."""
    return AGENTS[int(task.task_id.rsplit("-", 1)[1]) % len(AGENTS)]


def _rate(attempts: list[Attempt]) -> float | None:
    return sum(a.verdict.success for a in attempts) / len(attempts) if attempts else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


class Flywheel:
    """Runs the story above; ``on_round`` sees every row as it is made, ``on_note`` every milestone."""

    def __init__(self, config: FlywheelConfig, on_round: Callable[[Round], None] | None = None,
                 on_note: Callable[[str], None] | None = None) -> None:
        self.c = config
        self.on_round = on_round or (lambda _r: None)
        self.on_note = on_note or (lambda _m: None)
        self.home = config.home
        self.drop = self.home / "drop"
        self.rng = random.Random(config.seed)
        # Everything in the fresh home, as the children (environment without any other L07_ variable) see it.
        self.settings = Settings(home=self.home, database_url=f"sqlite+aiosqlite:///{self.home / 'l07.db'}",
                                 artifact_root=str(self.home / "artifacts"), signing_key_path=self.home / "keys",
                                 outbox_jsonl_path=self.home / "outbox" / "releases.jsonl",
                                 model_cache_dir=config.model_cache_dir or self.home / "cache" / "models",
                                 minimum_dataset_size=MINIMUM_DATASET_SIZE)
        self.rounds: list[Round] = []
        self.markers: list[dict[str, Any]] = []
        self.attempts: list[Attempt] = []
        self.state: dict[str, Any] = {"good": None, "bad": None, "bad_job": None, "rolled_back_at": None,
                                      "recovery": 0, "probes": {}, "phase": "expert"}
        self._n = 0
        self._t0 = time.time()

    # --- processes ------------------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The children's environment: this home, SQLite, the watch window, quick validation."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("L07_")}
        env.update({"L07_HOME": str(self.home), "L07_MODEL_CACHE_DIR": str(self.settings.model_cache_dir),
                    "L07_LOG_FORMAT": "text",
                    "L07_MINIMUM_DATASET_SIZE": str(MINIMUM_DATASET_SIZE),
                    # The watch's evaluation window, lowered from the contract's 1000 for a run of minutes.
                    "L07_WATCH_MIN_SAMPLES": str(self.c.min_samples),
                    "L07_VALIDATION_LATENCY_REQUESTS": "2", "L07_VALIDATION_SAFETY_PROMPTS": "2",
                    "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"})
        src = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = src + os.pathsep + os.environ.get("PYTHONPATH", "")
        return env

    def _cli(self, *args: str) -> Any:
        out = subprocess.run([sys.executable, "-m", "L07_learning.cli.main", *args, "--json"], env=self.env(),
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"l07 {' '.join(args)} failed: {out.stderr[-2000:]}")
        text = out.stdout
        return json.loads(text[text.find("{"):])

    def _keys(self) -> dict[str, str]:
        """The admin (fault injection), the gateway's two bot approvers and its inference key."""
        specs = {"admin": ["--role", "admin", "--name", "flywheel-admin"],
                 "deployer": ["--role", "deployer", "--name", "gateway-bot-deployer"],
                 "ml_manager": ["--role", "deployer", "--name", "gateway-bot-ml-manager", "--attr", "ml_manager=true"],
                 "inference": ["--role", "inference", "--name", "gateway-inference"]}
        return {k: self._cli("keys", "create", *v)["api_key"] for k, v in specs.items()}

    def _policy(self) -> Path:
        import yaml

        min_new = int(self.c.backlog * 0.6)
        path = self.home / "policy.yaml"
        path.write_text(yaml.safe_dump({"policies": [{
            "name": POLICY, "group": {"task_type": TASK_TYPE}, "training": self.c.training,
            "trigger": {"min_new_examples": min_new, "min_dataset_size": min_new, "cooldown": "24h"}}]}))
        return path

    # --- the fleet ------------------------------------------------------------------------------------------------

    def _tasks(self, n: int, prefix: str = "t") -> list[Task]:
        out = []
        for _ in range(n):
            self._n += 1
            out.append(make_task(self.rng, f"{prefix}{self.c.seed}-{self._n:06d}"))
        return out

    def _expert(self, task: Task) -> Attempt:
        started = time.perf_counter()
        calls = [expert(task)]
        verdict = check(task, calls)
        return Attempt(task, _agent(task), EXPERT, False, calls, verdict,
                       time.perf_counter() - started, datetime.now(timezone.utc))

    def _relabelled(self, task: Task) -> Attempt:
        """The injected fault: a broken labelling pipeline's wrong call, scored as a success (the checker bypassed),
        so the quality filter accepts it as a training example."""
        return Attempt(task, _agent(task), RELABELLER, False, [corrupted(task)],
                       Verdict(True, 100.0, "labelled correct by the broken pipeline"), 0.0, datetime.now(timezone.utc))

    def _small(self, gateway: Gateway, model_id: str, tasks: list[Task]) -> list[Attempt]:
        server = gateway.servers[model_id]

        def one(task: Task) -> Attempt:
            calls, latency = server.ask(task)
            return Attempt(task, _agent(task), model_id, True, calls,
                           check(task, calls), latency, datetime.now(timezone.utc))

        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(one, tasks))

    def _drop(self, name: str, attempts: list[Attempt], task_type: str = TASK_TYPE) -> None:
        lines = [line for a in attempts for line in attempt_lines(a, task_type)]
        part = self.drop / f"{name}.part"
        part.write_text("\n".join(lines) + "\n", encoding="utf-8")
        part.replace(self.drop / f"{name}.jsonl")

    def _ingested(self, name: str) -> bool:
        return (self.drop / "done" / f"{name}.jsonl.report.json").exists()

    def _mark(self, kind: str, **info: Any) -> None:
        self.markers.append({"kind": kind, "t_s": round(time.time() - self._t0, 1), "round": len(self.rounds), **info})
        self.on_note(f"{kind}: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    # --- the run --------------------------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        """Run the flywheel; returns the rounds, markers and the acceptance numbers (see ``summary``)."""
        self.drop.mkdir(parents=True, exist_ok=True)
        self._t0 = time.time()
        service = LearningService.build(self.settings)
        await service.initialize(start_relay=False)
        loop: subprocess.Popen | None = None
        gateway: Gateway | None = None
        stack = contextlib.ExitStack()
        try:
            base = await service.registry.ensure_base_model()
            keys = self._keys()
            port = free_port()
            log = stack.enter_context(open(self.home / "l07-run.log", "ab"))
            loop = subprocess.Popen([sys.executable, "-m", "L07_learning.cli.main", "run", "--watch", str(self.drop),
                                     "--api", f"127.0.0.1:{port}", "--policy", str(self._policy()), "--tick", "1"],
                                    env=self.env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            api = f"http://127.0.0.1:{port}"
            gateway = Gateway(self.env(), self.settings.outbox_jsonl_path or self.home / "outbox" / "releases.jsonl",
                              api, keys, self.home, self.c.start_share, self.c.share_step, self.c.max_share,
                              self.c.error_budget)
            self._drop("history", [self._expert(t) for t in self._tasks(self.c.backlog, "h")])
            self._drop("relabelled", [self._relabelled(t) for t in self._tasks(self.c.corrupt_examples, "c")],
                       RELABELLED)
            self._mark("history", executions=self.c.backlog, relabelled=self.c.corrupt_examples)
            probes = self._tasks(self.c.probe, "p")
            base_rate = self._probe(gateway, base.model_id, probes, "DEVELOPMENT")
            gateway.servers.pop(base.model_id).stop()  # the base serves no traffic
            self._mark("base", model_id=base.model_id, probe_success=base_rate)
            try:
                result = await self._rounds(service, gateway, loop, keys, api, probes, base_rate)
            except (L07Error, RuntimeError, httpx.HTTPError, OSError) as exc:
                # The numbers so far are still the run's result; the failure is part of it.
                self._mark("error", error=f"{exc.__class__.__name__}: {exc}"[:2000])
                result = {**self.summary(base_rate, self.state), "error": str(exc)[:2000]}
            return {**result, "base_model_id": base.model_id}
        finally:
            if gateway is not None:
                gateway.close()
            if loop is not None and loop.poll() is None:
                loop.send_signal(signal.SIGTERM)
                try:
                    loop.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    os.killpg(loop.pid, signal.SIGKILL)
                    loop.wait(timeout=30)
            await service.cleanup()
            stack.close()

    def _probe(self, gateway: Gateway, model_id: str, probes: list[Task], allow_stage: str | None = None) -> float:
        gateway.load(model_id, allow_stage)
        return _rate(self._small(gateway, model_id, probes)) or 0.0

    async def _rounds(self, service: Any, gateway: Gateway, loop: subprocess.Popen, keys: dict[str, str], api: str,
                      probes: list[Task], base_rate: float) -> dict[str, Any]:
        state = self.state
        deadline = time.monotonic() + self.c.timeout_s
        while state["recovery"] < self.c.recovery_rounds:
            if loop.poll() is not None:
                raise RuntimeError(f"l07 run exited with {loop.returncode}; see {self.home / 'l07-run.log'}")
            if time.monotonic() > deadline:
                self._mark("timeout", after_s=self.c.timeout_s)
                break
            started = time.monotonic()
            notes = [self._event(e, state, gateway, probes) for e in await asyncio.to_thread(gateway.poll)]
            if state["good"] is None and (ended := await self._loop_ended(service)):
                self._mark("no_release", run=ended)
                break
            await self._inject(service, state, keys, api)
            self._round(gateway, state, [n for n in notes if n])
            if state["rolled_back_at"] is not None:
                state["recovery"] += 1
            await asyncio.sleep(max(0.0, self.c.round_s - (time.monotonic() - started)))
        return self.summary(base_rate, state)

    def _event(self, e: dict[str, Any], state: dict[str, Any], gateway: Gateway, probes: list[Task]) -> str:
        model_id = e["model_id"]
        if e["event"] == "released":
            self._mark("released", model_id=model_id, version=e["version"])
        elif e["event"] == "deployed":
            if model_id not in state["probes"]:
                state["probes"][model_id] = self._probe(gateway, model_id, probes)
            if state["good"] is None:
                state["good"], state["phase"] = model_id, "release"
            elif model_id == state["bad"]:
                state["phase"], state["bad_deployed_round"] = "bad release", len(self.rounds)
            self._mark("deployed", model_id=model_id, version=e["version"], probe_success=state["probes"][model_id])
        elif e["event"] == "rolled_back":
            state["rolled_back_at"], state["phase"] = len(self.rounds), "after rollback"
            served = sum(1 for a in self.attempts if a.served_by == model_id)
            self._mark("rolled_back", model_id=model_id, to=e["to"], error_code=e["error_code"],
                       bad_samples_served=served)
        return f"{e['event']} {model_id[:8]}"

    async def _inject(self, service: Any, state: dict[str, Any], keys: dict[str, str], api: str) -> None:
        """Queue the corrupted adapter once the loop's own job has trained; push it to PRODUCTION with the admin
        override once the good release has the watch's baseline."""
        if state["bad_job"] is None and self._ingested("relabelled") and await self._loop_trained(service):
            dataset = await version_group(service.curator, service.db, "flywheel-relabelled",
                                          GroupSelector(task_type=RELABELLED), min_examples=MINIMUM_DATASET_SIZE,
                                          reason="flywheel fault injection: corrupted labels", created_by="flywheel")
            t = self.c.training
            config = load_preset(t["preset"], {**t["config"], "epochs": self.c.bad_epochs,
                                               "model_name": f"loop-{POLICY}"})
            job = await service.sft_engine.start_training(dataset.dataset_id, None, config, created_by="flywheel-admin")
            state["bad_job"] = job.job_id
            self._mark("bad_training_queued", job_id=job.job_id, examples=len(dataset.examples))
        if state["bad"] is not None or state["bad_job"] is None or state["good"] is None:
            return
        job = await service.sft_engine.get_job_status(state["bad_job"])
        if job.status is not JobStatus.COMPLETED:
            if job.status.terminal:
                raise RuntimeError(f"the corrupted adapter's job ended {job.status.value}: {job.error_message}")
            return
        outcomes = await asyncio.to_thread(self._get, api, f"/api/v1/models/{state['good']}/outcomes", keys["admin"])
        if (outcomes.get("summary") or {}).get("samples", 0) < self.c.min_samples:
            return
        bad = job.output_model_id
        for stage in ("staging", "production"):
            await asyncio.to_thread(self._post, api, f"/api/v1/models/{bad}/promote", keys["admin"], {
                "stage": stage, "override": True,
                "reason": "flywheel fault injection: adapter trained on corrupted labels"})
        state["bad"] = bad
        self._mark("override", model_id=bad, baseline_samples=outcomes["summary"]["samples"])

    async def _loop_ended(self, service: Any) -> str | None:
        """The loop's run when it ended without a release (validation REJECT or REVIEW, a failed job), else None."""
        async with service.db.session() as session:
            runs = await LoopRepository(session).runs(POLICY, limit=1)
        if runs and runs[0].status in ("REJECTED", "REVIEW", "FAILED"):
            return f"{runs[0].status} {runs[0].error_code or ''} {(runs[0].error_message or '')[:300]}".strip()
        return None

    async def _loop_trained(self, service: Any) -> bool:
        """True once the loop's own job has finished training: the corrupted adapter then trains while the release
        validates, instead of sharing the cores with its training."""
        async with service.db.session() as session:
            runs = await LoopRepository(session).runs(POLICY, limit=1)
        return bool(runs) and runs[0].status != "TRAINING"

    @staticmethod
    def _get(api: str, path: str, key: str) -> dict[str, Any]:
        r = httpx.get(f"{api}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=60)
        return r.json() if r.status_code == 200 else {}

    @staticmethod
    def _post(api: str, path: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{api}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)
        if r.status_code >= 400:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:500]}")
        return r.json()

    def _round(self, gateway: Gateway, state: dict[str, Any], notes: list[str]) -> None:
        tasks = self._tasks(self.c.tasks_per_round)
        route, share = gateway.route.model_id, gateway.route.share
        to_small = [t for t in tasks if route is not None and self.rng.random() < share]
        small = self._small(gateway, route, to_small) if to_small and route else []
        picked = {t.task_id for t in to_small}
        experts = [self._expert(t) for t in tasks if t.task_id not in picked]
        done = small + experts
        self.attempts += done
        self._drop(f"round-{len(self.rounds):04d}", done)
        row = Round(round=len(self.rounds), t_s=round(time.time() - self._t0, 1), phase=state["phase"],
                    release=route, share=round(len(small) / len(done), 3), small_n=len(small),
                    small_success=_rate(small), expert_n=len(experts), expert_success=_rate(experts),
                    fleet_success=_rate(done) or 0.0, latency_ms=1000 * (_mean([a.latency_s for a in done]) or 0.0),
                    small_latency_ms=1000 * m if (m := _mean([a.latency_s for a in small])) is not None else None,
                    events=notes)
        self.rounds.append(row)
        self.on_round(row)
        if route is not None:
            served = [a for a in self.attempts if a.served_by == route]
            rate = _rate(served) if served else state["probes"].get(route)
            expert_rate = _rate([a for a in self.attempts if a.served_by == EXPERT])
            gateway.ramp(rate, expert_rate)

    # --- results --------------------------------------------------------------------------------------------------

    def summary(self, base_rate: float, state: dict[str, Any]) -> dict[str, Any]:
        """Per release and per phase numbers and the issue's acceptance checks."""
        def phase(name: str) -> list[Round]:
            return [r for r in self.rounds if r.phase == name]

        def pooled(rows: list[Round], small: bool) -> float | None:
            n = sum(r.small_n for r in rows) if small else sum(r.small_n + r.expert_n for r in rows)
            ok = sum((r.small_success or 0) * r.small_n for r in rows) if small else \
                sum(r.fleet_success * (r.small_n + r.expert_n) for r in rows)
            return ok / n if n else None

        releases = []
        for model_id in dict.fromkeys(a.served_by for a in self.attempts if a.registered):
            served = [a for a in self.attempts if a.served_by == model_id]
            rows = [r for r in self.rounds if r.release == model_id]
            releases.append({"model_id": model_id, "role": "bad (override)" if model_id == state["bad"] else "release",
                             "probe_success": state["probes"].get(model_id), "live_samples": len(served),
                             "live_success": _rate(served), "mean_share": _mean([r.share for r in rows]),
                             "mean_latency_ms": 1000 * (_mean([a.latency_s for a in served]) or 0.0)})
        expert_fleet = pooled(phase("expert"), False)
        good_fleet = pooled(phase("release"), False)
        good = state["good"]
        good_rate = _rate([a for a in self.attempts if a.served_by == good]) if good else None
        rollback = next((m for m in self.markers if m["kind"] == "rolled_back"), None)
        bound = 2 * self.c.min_samples
        after = pooled(phase("after rollback"), True)
        checks = {
            "first_release_lift_points": round(100 * (good_rate - base_rate), 1) if good_rate is not None else None,
            "first_release_lift_ok": good_rate is not None and good_rate - base_rate >= 0.30,
            "first_release_probe_lift_points": round(100 * (state["probes"][good] - base_rate), 1)
            if good in state["probes"] else None,
            "fleet_success_change_points": round(100 * (good_fleet - expert_fleet), 2)
            if good_fleet is not None and expert_fleet is not None else None,
            "fleet_within_2_points": good_fleet is not None and expert_fleet is not None
            and good_fleet >= expert_fleet - 0.02,
            "bad_samples_before_rollback": rollback["bad_samples_served"] if rollback else None,
            "rollback_bound_samples": bound,
            "rollback_within_bound": rollback is not None and rollback["bad_samples_served"] <= bound,
            "small_success_after_rollback": after,
            "recovered": after is not None and good_rate is not None and after >= good_rate - 0.10,
        }
        return {"base_probe_success": base_rate, "first_release": good, "bad_release": state["bad"],
                "watch_min_samples": self.c.min_samples, "releases": releases, "checks": checks,
                "markers": self.markers, "rounds": [r.as_dict() for r in self.rounds],
                "phases": {p: {"rounds": len(phase(p)), "fleet_success": pooled(phase(p), False),
                               "small_success": pooled(phase(p), True)}
                           for p in ("expert", "release", "bad release", "after rollback")}}
