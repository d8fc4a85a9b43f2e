"""``l07 run`` end to end with the real base model (contract §9, issue 18): a file of events dropped into the watched
folder of an empty home becomes, with no further command, a fine-tuned SmolLM2 in STAGING that beats its base on the
group's held-out cases, and exactly one signed ``model_ready_for_deployment`` in the JSONL outbox sink.

The task family (``tests/factories/loop.py``: tool choice) is one the demo never trained on. The recipe is the demo's
(``SMOLLM2_TRAINING``: preset ``cpu-small`` with all-linear LoRA, alpha 32, the top 20 blocks) without per-epoch eval;
the validator measures with small budgets from the settings, so the whole run takes a few minutes on 2 cores.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from L07_learning.models.model_artifact import ModelStage
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.settings import Settings
from L07_learning.store.repositories.loop import LoopRepository
from L07_learning.tests.factories.loop import (
    SMOLLM2_TRAINING,
    TASK_TYPE,
    LoopProcess,
    loop_env,
    open_db,
    policy_file,
    sink_events,
    tool_choice_lines,
    wait_for,
    write_events,
)

pytestmark = pytest.mark.slow

# 150 executions (142 ACCEPTED, 14 held out) reach 100% held-out exact match; 120 (11 held out) reached 82%, and
# the regression gate wants 100% for DEPLOY.
EXECUTIONS = 150
# Validation budgets (settings, so they reach the loop process): a generation cap of 48 tokens fits the longest
# reference turn (a tool call, ~36 tokens); six timed requests (each decodes the same number of tokens for both
# models) and two probes per model keep the measuring to a few minutes on CPU.
VALIDATION_ENV = {"validation_latency_requests": 6, "validation_safety_prompts": 2, "validation_max_new_tokens": 48}


async def test_dropped_file_reaches_staging_and_one_signed_release_with_no_command(tmp_path: Path) -> None:
    home, drop = tmp_path / "home", tmp_path / "drop"
    assert not home.exists()
    policy = policy_file(tmp_path / "policy.yaml", {"tools": {"task_type": TASK_TYPE}}, SMOLLM2_TRAINING, min_new=100)
    started = time.monotonic()
    loop = LoopProcess(loop_env(home, **VALIDATION_ENV),
                       ["--watch", str(drop), "--policy", str(policy), "--tick", "1"], tmp_path / "loop.log")
    db = None
    try:
        await wait_for(lambda: _exists(drop / "done"), 120, "watched folder", (loop,))
        write_events(drop / "tools.jsonl", tool_choice_lines(EXECUTIONS, seed=3))
        db = await open_db(home)

        async def finished_run():  # type: ignore[no-untyped-def]
            async with db.session() as session:
                runs = await LoopRepository(session).runs("tools")
            return runs if runs and runs[0].status not in ("TRAINING", "VALIDATING") else None

        (run,) = await wait_for(finished_run, 1800, "finished run", (loop,), every_s=2.0)
        assert run.status == "STAGED", (run.verdict, run.error_code, run.error_message,
                                        await _gate_issues(db, home, run.model_id), loop.tail())
        await wait_for(lambda: _truthy(sink_events(home)), 60, "release event in the sink", (loop,))
        elapsed = time.monotonic() - started
    finally:
        rc = loop.stop()
    assert rc == 0, loop.tail()

    report = (drop / "done" / "tools.jsonl.report.json").read_text()
    assert '"rejected": 0' in report
    settings = Settings(home=home)
    registry = ModelRegistry(db=db, settings=settings)
    staged = await registry.list_models(status=ModelStage.STAGING.value)
    assert [m.model_id for m in staged] == [run.model_id]
    (release,) = sink_events(home)
    data = release["data"]
    verified = await registry.get_model(run.model_id, verify=True)  # checksum and signature check out
    assert data["model_id"] == run.model_id and data["artifact_signature"] == verified.signature
    assert data["signing_key_version"] and data["validation_status"] == "APPROVED"

    (validation,) = await registry.get_validations(run.model_id)
    bench = validation.stages["benchmark"].metrics
    assert validation.baseline_model_id == verified.parent_model_id  # the base: no production model yet
    assert bench["cases"] >= 8 and bench["candidate_accuracy"] > bench["baseline_accuracy"], bench
    timings = run.timings
    assert {"dataset_s", "queue_wait_s", "training_s", "validation_release_s"} <= set(timings)
    await db.dispose()
    print(f"\nloop e2e: {elapsed:.0f} s wall, run timings {timings}, accuracy "
          f"{bench['baseline_accuracy']:.0%} -> {bench['candidate_accuracy']:.0%}")


async def _exists(path: Path) -> bool:
    return path.exists()


async def _truthy(value: object) -> object:
    return value


async def _gate_issues(db, home: Path, model_id: str | None) -> dict:  # type: ignore[no-untyped-def]
    """Every validation stage's outcome and issues, so a run that stopped short of STAGING says which gate held it."""
    if model_id is None:
        return {}
    validations = await ModelRegistry(db=db, settings=Settings(home=home)).get_validations(model_id)
    return {name: (stage.outcome.value, stage.issues, {k: v for k, v in stage.metrics.items() if k != "failures"})
            for v in validations for name, stage in v.stages.items()}
