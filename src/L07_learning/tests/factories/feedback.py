"""Production-feedback test input: two signed releases of one model name, and generated outcome series.

``release_pair`` registers two real (small, signed) artifacts and promotes both to PRODUCTION through the registry's
own approvals, so the second is ACTIVE and the first STANDBY, superseded by it: the state a watch starts from.
Outcomes are generated (quality ~ Normal(mean, sd) clipped to 0-100, errors ~ Bernoulli(rate)) and written with
``OutcomeRepository.merge``, the code ingestion uses; ``score_events`` / ``response_events`` are the CloudEvents that
carry the same facts through the full ingestion path.
"""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path
from typing import Any

from L07_learning.models import ModelArtifact, ModelType, Recommendation, StageOutcome, StageResult, ValidationResult, Verdict
from L07_learning.models._base import new_id, utcnow
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.db import Database
from L07_learning.store.repositories.loop import LoopRepository, LoopRun
from L07_learning.store.repositories.outcomes import OutcomeRepository

NAME = "support-agent"
POLICY = "default.support"


def _model_dir(path: Path, seed: int) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "seed": seed}))
    (path / "model.safetensors").write_bytes(bytes((seed * 31 + i * 7) % 256 for i in range(2048)))
    return path


def _deploy_report(model_id: str) -> ValidationResult:
    return ValidationResult(
        model_id=model_id, passed=True, recommendation=Recommendation.DEPLOY, verdict=Verdict.APPROVED,
        regression_detected=False,
        stages={"regression": StageResult(passed=True, outcome=StageOutcome.PASS, metrics={"pass_rate": 1.0}),
                "safety": StageResult(passed=True, outcome=StageOutcome.PASS)})


async def register(registry: ModelRegistry, tmp_path: Path, version: str, seed: int) -> str:
    src = _model_dir(tmp_path / f"model-{version}", seed)
    return await registry.register_model(ModelArtifact(name=NAME, version=version, model_type=ModelType.LORA_ADAPTER),
                                         source_dir=str(src))


async def to_production(registry: ModelRegistry, model_id: str) -> None:
    await registry.record_validation(_deploy_report(model_id))
    await registry.promote_model(model_id, "staging", actor="ci")
    await registry.promote_model(model_id, "PRODUCTION", actor="ci", approvals=["deployer=dana", "ml_manager=max"])


async def loop_made(db: Database, model_id: str, policy: str = POLICY) -> None:
    """Record that a loop policy's run produced ``model_id`` (what the watch pauses on a rollback)."""
    now = utcnow()
    async with db.session() as session:
        repo = LoopRepository(session)
        await repo.ensure_policy(policy, now)
        await repo.add_run(LoopRun(run_id=new_id(), policy=policy, job_type="SFT", dataset_id="ds-support",
                                   dataset_version=f"1.{random.randrange(1 << 30)}.0", examples=100, model_id=model_id,
                                   status="STAGED", verdict="DEPLOY", started_at=now))


def outcomes(n: int, mean: float, sd: float, error_rate: float, seed: int, task_type: str = "support",
             served_at: datetime | None = None) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    served_at = served_at or utcnow()
    rows = []
    for _ in range(n):
        err = rng.random() < error_rate
        rows.append({"execution_id": f"exec-{new_id()}", "quality_score": min(max(rng.gauss(mean, sd), 0.0), 100.0),
                     "failure": "error" if err else "success", "is_error": err, "task_type": task_type,
                     "model_source": "response", "served_at": served_at, "scored_at": utcnow()})
    return rows


async def add_outcomes(db: Database, model_id: str, rows: list[dict[str, Any]]) -> None:
    """Store generated outcomes as served by ``model_id`` (already joined with their scores)."""
    async with db.session() as session:
        await OutcomeRepository(session).merge([{**r, "model_id": model_id, "model_ref": model_id} for r in rows],
                                               utcnow())


async def release_pair(registry: ModelRegistry, db: Database, tmp_path: Path, baseline: int = 2000,
                       seed: int = 1) -> tuple[str, str]:
    """v1 ACTIVE with ``baseline`` outcomes (quality ~ N(80, 10), 2% errors), then v2 ACTIVE (v1 STANDBY), made by
    the loop policy ``POLICY``. Returns ``(v1, v2)``."""
    v1 = await register(registry, tmp_path, "1.0.0", seed=1)
    v2 = await register(registry, tmp_path, "1.1.0", seed=2)
    await to_production(registry, v1)
    await add_outcomes(db, v1, outcomes(baseline, 80.0, 10.0, 0.02, seed=seed))
    await to_production(registry, v2)
    await loop_made(db, v2)
    return v1, v2


def score_event(execution_id: str, quality: float, failure: str | None = "success", task_type: str = "support") -> dict:
    return {"specversion": "1.0", "id": f"score-{execution_id}", "source": "https://agentic.local/layers/l06",
            "type": "evaluation.quality_score_computed", "time": utcnow().isoformat(),
            "data": {"execution_id": execution_id, "quality_score": quality, "confidence_level": 0.9,
                     "failure_classification": failure, "task_type": task_type}}


def response_event(execution_id: str, model_name: str) -> dict:
    return {"specversion": "1.0", "id": f"resp-{execution_id}", "source": "https://agentic.local/layers/l04",
            "type": "model.response_logged", "time": utcnow().isoformat(),
            "data": {"request_id": f"req-{execution_id}", "model_name": model_name, "response": "done",
                     "token_usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                     "latency_ms": 120.0, "execution_id": execution_id}}
