"""The autonomous loop, event to release: how long ``l07 run`` takes from the event that completes a trigger to the
signed ``model_ready_for_deployment``, stage by stage, on the embedded default (SQLite + files).

A file of tool-choice events (``tests/factories/loop.py``) is dropped into the loop's watched folder; the policy fires
once on it. Stages: ingest+filter (drop -> every example stored and filtered), dataset, queue wait, training,
validation, release (the loop's ``l07_loop_runs`` timings, the stored validation's own start and end, the release
event's arrival in the JSONL sink). The loop runs in this process with its embedded worker, exactly as ``l07 run``
(one ``tick`` every 0.5 s).

Targets (contract §7.3, issue 18): event -> stored example < 5 s here (the contract allows 5 min); regression
validation < 10 min; validation pass -> release < 15 min. Ratios are measured / target (below 1 meets it).

Run: ``PYTHONPATH=src python benchmarks/loop.py [--tiny] [--executions 150]``. Default: the packaged SmolLM2-135M
with the recipe that learns on CPU (several minutes); ``--tiny``: the 2-layer random model (seconds; its validation
ends REJECT, so there is no release and the release stages are null). The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

EVENT_TO_EXAMPLE_TARGET_S = 5.0
REGRESSION_VALIDATION_TARGET_S = 600.0
VALIDATION_TO_RELEASE_TARGET_S = 900.0


async def _run(executions: int, tiny: bool) -> dict[str, Any]:
    import logging

    logging.getLogger("L07_learning").setLevel(logging.WARNING)
    from L07_learning.services.loop import LearningLoop, load_policies
    from L07_learning.settings import Settings
    from L07_learning.store.repositories.examples import ExampleRepository
    from L07_learning.store.repositories.loop import LoopRepository
    from L07_learning.tests.factories.loop import (
        CACHE,
        SMOLLM2_TRAINING,
        TASK_TYPE,
        TINY_TRAINING,
        policy_file,
        sink_events,
        tool_choice_lines,
        write_events,
    )

    tmp = Path(tempfile.mkdtemp(prefix="l07-bench-loop-"))
    home, drop = tmp / "home", tmp / "drop"
    settings = Settings(home=home, model_cache_dir=Path(CACHE), validation_latency_requests=2,
                        validation_safety_prompts=2)
    lines = tool_choice_lines(executions, seed=3)
    min_new = int(executions * 0.66)
    training: dict[str, Any] = SMOLLM2_TRAINING
    # Built before its policy, which names the base model registered through the loop's own registry.
    loop = LearningLoop.build(settings, watch=[drop], tick_s=0.5, settle_s=0.0)
    await loop.start()
    if tiny:
        from L07_learning.pipelines.base_model import build_tiny_model

        base = await loop.service.registry.register_base(str(build_tiny_model(tmp / "tiny", cache_dir=CACHE)),
                                                         name="tiny-llama")
        training = {"kind": "sft", "base_model_id": base.model_id, "config": TINY_TRAINING}
    else:
        await loop.service.registry.ensure_base_model()  # registered once per home, before the clock starts
    loop.policies = load_policies(policy_file(tmp / "policy.yaml", {"tools": {"task_type": TASK_TYPE}}, training,
                                              min_new))
    stop = asyncio.Event()
    runner = asyncio.create_task(loop.run_forever(stop))
    try:
        t0 = time.time()
        write_events(drop / "tools.jsonl", lines)
        while not (drop / "done" / "tools.jsonl.report.json").exists():
            await asyncio.sleep(0.05)
        ingested_at = time.time()
        async with loop.db.session() as session:
            stored = await ExampleRepository(session).list()
        event_to_example = max(_utc(e.created_at) for e in stored) - t0
        run = None
        while run is None or run.status in ("TRAINING", "VALIDATING"):
            assert not runner.done(), "the loop stopped"
            await asyncio.sleep(0.5)
            async with loop.db.session() as session:
                run = (await LoopRepository(session).runs("tools", limit=1) or [None])[0]
        released = [e for e in sink_events(home) if e["data"]["model_id"] == run.model_id]
        while run.status == "STAGED" and not released:
            await asyncio.sleep(0.1)
            released = [e for e in sink_events(home) if e["data"]["model_id"] == run.model_id]
        released_at = time.time() if released else None
        validations = await loop.service.registry.get_validations(run.model_id) if run.model_id else []
    finally:
        stop.set()
        await runner
    t = run.timings
    validation_s = ((validations[-1].completed_at - validations[-1].started_at).total_seconds()
                    if validations else None)
    validation_end = validations[-1].completed_at.timestamp() if validations else None
    release_s = round(released_at - validation_end, 3) if released_at and validation_end else None
    bench = validations[-1].stages["benchmark"].metrics if validations else {}
    return {
        "benchmark": "loop_event_to_release",
        "model": "tiny-llama (random, 2 layers)" if tiny else "SmolLM2-135M-Instruct",
        "executions": executions, "events": len(lines), "examples": len(stored), "trigger_min_new_examples": min_new,
        "outcome": run.status, "verdict": run.verdict,
        "stages_s": {
            "ingest_filter": round(ingested_at - t0, 3),
            "dataset": t.get("dataset_s"),
            "queue_wait": t.get("queue_wait_s"),
            "training": t.get("training_s"),
            "validation": round(validation_s, 3) if validation_s is not None else None,
            "release": release_s,
        },
        "event_to_release_s": round(released_at - t0, 3) if released_at else None,
        "event_to_stored_example_s": round(event_to_example, 3),
        "accuracy": {"base": bench.get("baseline_accuracy"), "tuned": bench.get("candidate_accuracy")},
        "targets_s": {"event_to_stored_example": EVENT_TO_EXAMPLE_TARGET_S,
                      "regression_validation": REGRESSION_VALIDATION_TARGET_S,
                      "validation_to_release": VALIDATION_TO_RELEASE_TARGET_S},
        "ratio_event_to_example_vs_target": round(event_to_example / EVENT_TO_EXAMPLE_TARGET_S, 3),
        "ratio_validation_vs_target": round(validation_s / REGRESSION_VALIDATION_TARGET_S, 3)
        if validation_s is not None else None,
        "ratio_validation_to_release_vs_target": round(release_s / VALIDATION_TO_RELEASE_TARGET_S, 4)
        if release_s is not None else None,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "database": "sqlite",
    }


def _utc(when: Any) -> float:
    from datetime import timezone

    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()  # SQLite returns naive UTC


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=150, help="executions in the dropped file (2 events each)")
    parser.add_argument("--tiny", action="store_true", help="the tiny random model instead of SmolLM2 (seconds)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_run(args.executions, args.tiny))))


if __name__ == "__main__":
    main()
