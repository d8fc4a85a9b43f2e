"""The flywheel, measured (issue 21): does the loop make the agents better over time, and does it protect them?

A warehouse-desk fleet (``services/flywheel``: three tools, a checker, a scripted expert as the expensive policy)
sends its traces and L06 scores into ``l07 run`` (watched folder, SQLite + files). The loop trains SmolLM2 and
releases it; a gateway stand-in approves it with bot keys, serves it with ``l07 serve-model`` and routes a growing
share of traffic to it; the small model's attempts are scored and sent back too. Then an adapter trained on
corrupted labels is pushed to PRODUCTION by an audited admin override, and L07's release watch must roll it back.
The watch's window is lowered from the contract's 1000 samples to ``--min-samples`` (env
``L07_WATCH_MIN_SAMPLES``) so the run takes minutes.

Acceptance (issue 21): the first release lifts the small model's success from the base by >= 30 points; while it
takes traffic the fleet's success stays within 2 points of the expert-only rounds; the bad release is rolled back
within the minimum samples plus one evaluation window (2 x min samples served); the success rate recovers.

Run: ``PYTHONPATH=src python benchmarks/flywheel.py [--home DIR]`` (22 minutes measured on 2 quiet CPU cores, 40+ on
shared ones). Prints the table as it goes, the per-release summary, writes ``flywheel.png`` and ``flywheel.json``
into the home, and the last stdout line is the JSON. A measured run is kept in ``benchmarks/results/``.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="fresh L07 home (default: a temporary folder)")
    parser.add_argument("--backlog", type=int, default=80, help="expert executions before the first round")
    parser.add_argument("--tasks-per-round", type=int, default=10)
    parser.add_argument("--min-samples", type=int, default=30, help="the release watch's window (>= 30)")
    parser.add_argument("--recovery-rounds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=2700.0,
                        help="seconds before the rounds stop (a loaded 2-core machine needs 30+ minutes)")
    args = parser.parse_args()

    import logging

    logging.getLogger("L07_learning").setLevel(logging.WARNING)
    from L07_learning.services.flywheel import Flywheel, FlywheelConfig
    from L07_learning.services.flywheel.report import HEADER, plot, release_lines, round_line

    home = args.home or Path(tempfile.mkdtemp(prefix="l07-flywheel-"))
    cache = os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models"))
    config = FlywheelConfig(home=home, model_cache_dir=Path(cache), backlog=args.backlog,
                            tasks_per_round=args.tasks_per_round, min_samples=args.min_samples,
                            recovery_rounds=args.recovery_rounds, timeout_s=args.timeout)
    print(f"home {home}", flush=True)
    print(HEADER, flush=True)
    started = time.time()
    wheel = Flywheel(config, on_round=lambda r: print(round_line(r), flush=True),
                     on_note=lambda m: print(f"  -- {m}", flush=True))
    result = asyncio.run(wheel.run())
    for line in release_lines(result):
        print(line, flush=True)
    png = plot(result, home / "flywheel.png")
    out = {"benchmark": "flywheel", "model": "SmolLM2-135M-Instruct (LoRA)", "database": "sqlite",
           "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
           "wall_s": round(time.time() - started, 1), "plot": str(png) if png else None,
           "plot_note": None if png else "matplotlib is not installed: JSON only", **result}
    (home / "flywheel.json").write_text(json.dumps(out, indent=2, default=str))
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
