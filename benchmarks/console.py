"""Web console page render time with 100,000 stored examples (target: < 300 ms per page, paginated queries).

Two SQLite homes are filled the way the filter leaves them: examples in every status over the last ten days, five
task types, twenty agents, and a non-accept decision (reason, code) for each non-ACCEPTED example. Each console
page is then requested through the real app (httpx over ASGI, an admin's signed session, the audit rows each read
writes included) ``--repeat`` times; the median is reported.

Baseline, measured in the same run: the same pages over 1,000 stored examples. The ratio ``large / baseline``
says how much of the page time grows with the data (1.0: none).

Run: ``PYTHONPATH=src python benchmarks/console.py [--examples 100000] [--baseline 1000] [--repeat 15]``.
The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TARGET_MS = 300.0
STATUSES = ["ACCEPTED"] * 6 + ["REJECTED", "REVIEW", "QUARANTINED", "PENDING"]
REASONS = {"REJECTED": ("low_quality", None), "REVIEW": ("low_confidence", "E7021"),
           "QUARANTINED": ("secret", "E7111")}
TASK_TYPES = ["qa", "summarization", "tool_choice", "classification", "extraction"]
# /ui/overview/loop is the overview's loop section, fetched after the page renders (GET /api/v1/loop's own cost).
PAGES = ["/ui/", "/ui/overview/loop", "/ui/examples", "/ui/examples?status=REVIEW", "/ui/examples?task_type=tool_choice&agent_id=agent-7",
         "/ui/examples?reason=secret", "/ui/examples?page=200", "/ui/examples?q=order+4242", "/ui/datasets",
         "/ui/jobs", "/ui/models", "/ui/audit"]


def _examples(n: int, start: int) -> list:
    from L07_learning.models import ExampleSource, TrainingExample
    from L07_learning.models._base import utcnow

    now = utcnow()
    out = []
    for i in range(start, start + n):
        out.append(TrainingExample(
            example_id=f"bench-{i:07d}", source_type=ExampleSource.EXECUTION_TRACE,
            input_text=f"Customer asks about order {i} and the refund rules for region {i % 17}.",
            output_text=f"Order {i} ships in {i % 9 + 1} days; refunds follow policy {i % 5}.",
            quality_score=60 + i % 40, confidence=0.5 + (i % 50) / 100, status=STATUSES[i % len(STATUSES)],
            metadata={"agent_id": f"agent-{i % 20}", "task_type": TASK_TYPES[i % len(TASK_TYPES)]},
            created_at=now - timedelta(seconds=(i * 8.64) % 864_000)))
    return out


async def _fill(db, n: int) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.store.repositories.examples import ExampleRepository
    from L07_learning.store.repositories.filter_decisions import FilterDecisionRepository

    for start in range(0, n, 10_000):
        batch = _examples(min(10_000, n - start), start)
        async with db.session() as session:
            await ExampleRepository(session).add_many(batch)
            decisions = FilterDecisionRepository(session)
            for ex in batch:
                if ex.status.value in REASONS:
                    reason, code = REASONS[ex.status.value]
                    decisions.add_rejection(ex.example_id, ex.status.value[:10], reason, code, reason,
                                            f"benchmark {reason}", ex.agent_id, {})


async def _measure(n: int, repeat: int) -> dict[str, float]:
    import httpx

    from L07_learning.api import create_app
    from L07_learning.api.auth import AuthService
    from L07_learning.services.access import AccessService
    from L07_learning.settings import Settings
    from L07_learning.store.db import Database

    home = Path(tempfile.mkdtemp(prefix=f"l07-console-bench-{n}-"))
    settings = Settings(home=home)
    db = Database(f"sqlite+aiosqlite:///{home / 'l07.db'}", auto_migrate=True)
    await db.connect()
    started = time.perf_counter()
    await _fill(db, n)
    print(f"{n} examples stored in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    _, token = await AuthService(AccessService(db)).create_key("admin", name="bench")
    app = create_app(settings=settings, db=db)
    out: dict[str, float] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        form = (await client.get("/ui/login")).text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        r = await client.post("/ui/login", data={"api_key": token, "csrf_token": csrf, "next": "/ui/"})
        assert r.status_code == 303, r.text
        for page in PAGES:
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                r = await client.get(page)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, (page, r.status_code, r.text[:300])
            out[page] = round(statistics.median(times), 1)
    await db.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    os.environ.setdefault("L07_LOG_LEVEL", "WARNING")
    baseline = asyncio.run(_measure(args.baseline, args.repeat))
    large = asyncio.run(_measure(args.examples, args.repeat))
    rows = [{"page": p, f"ms_at_{args.baseline}": baseline[p], f"ms_at_{args.examples}": large[p],
             "ratio": round(large[p] / baseline[p], 2) if baseline[p] else None} for p in PAGES]
    width = max(len(p) for p in PAGES)
    print(f"{'page':<{width}}  {args.baseline:>9}  {args.examples:>9}  ratio  (median ms of {args.repeat})")
    for r in rows:
        print(f"{r['page']:<{width}}  {r[f'ms_at_{args.baseline}']:>9}  {r[f'ms_at_{args.examples}']:>9}  "
              f"{r['ratio']:>5}")
    worst = max(large.values())
    print(json.dumps({"benchmark": "console", "examples": args.examples, "baseline_examples": args.baseline,
                      "repeat": args.repeat, "pages": rows, "worst_ms": worst,
                      "worst_ratio": max(r["ratio"] or 0 for r in rows), "target_ms": TARGET_MS,
                      "meets_target": worst < TARGET_MS}))


if __name__ == "__main__":
    main()
