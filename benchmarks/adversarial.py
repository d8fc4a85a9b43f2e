"""Worst-case event handling: pathological events against the parse + content-scan path (issue 22).

Measures, per event of a corpus of pathological events, the time to handle it on the path that reads untrusted
text: ``IngestionPipeline.parse`` (envelope, type, allow-list, ``data`` fields) then, for events that carry text,
``ContentScanner.scan`` (secrets, poisoning, PII over the NFKC/confusables skeleton) of the example built from it.
The corpus: deep nesting, 1 MB fields built to trigger backtracking in each detector family (the quadratic traps of
the old patterns: ``union select`` runs, ``%`` runs before an ``@``, ``eyJ-`` runs, ``a+a+...://`` schemes,
``curl`` runs), many keys, long ids, 1 MB of homoglyphs / fullwidth text, 1 MB of CJK text, and 1 MB dense with
PII-like numbers. Target: every event handled in < 50 ms.

Also measured in the same run:

* ``normal_scan_per_s``: ``ContentScanner.scan`` throughput on 5,000 ordinary generated examples. The old code path
  is not in the tree; its figure before the change, measured with the same loop on this (shared, then lightly
  loaded) machine, was 12,757 examples/s (best of 5). ``ratio_vs_before`` divides by it (>= 0.9 meets "not lower
  than before by more than 10 %"); a later machine load lowers it, so the report also gives an interleaved old/new
  run. ``worst_vs_normal`` is the worst pathological event's time over an ordinary example's (same run).
* ``max_loop_stall_ms``: the longest the event loop went without running another task while
  ``annotate_many_async`` (the ingestion scan) handled a maximal batch (three 1 MB pathological examples).
* ``health_during_batch``: the app ``l07 serve`` runs (``create_app``, driven in process over httpx's ASGI transport,
  so it shares one event loop as a one-worker server does) takes a maximal batch on ``POST /api/v1/events``: three
  0.95 MB traces whose answers are the detector traps above, each with its score, so three examples are composed,
  scanned, stored and filtered (2.85 MB, the batch of the finding). Meanwhile ``GET /health/live`` is polled every
  5 ms; reported: its worst latency (target < 100 ms) and the longest the ingestion write transaction stayed open
  (SQLAlchemy ``begin`` to ``commit``/``rollback``: the SQLite write lock is held inside it). Run twice, first with
  the scan ahead of the transaction (``ingestion.prescan``, the code path), then with the scan placed inside the
  transaction as before issue 22 (the pipeline's last-resort round, forced from the first attempt), each on a fresh
  database with the scan pool already started.

Run: ``python benchmarks/adversarial.py`` (``--health-only``: the ``/health/live`` case alone). Prints a table, then
one JSON line (the last line).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from L07_learning.api.app import create_app  # noqa: E402
from L07_learning.api.auth import AuthService  # noqa: E402
from L07_learning.services.access import AccessService  # noqa: E402
from L07_learning.services.filtering import ContentScanner  # noqa: E402
from L07_learning.services.ingestion import pipeline as ingestion_pipeline  # noqa: E402
from L07_learning.services.ingestion import prescan  # noqa: E402
from L07_learning.services.ingestion.pipeline import IngestionPipeline  # noqa: E402
from L07_learning.settings import Settings  # noqa: E402
from L07_learning.store.db import Database  # noqa: E402
from L07_learning.tests.factories.curation import AWS_KEY, make_example  # noqa: E402

MB = 1_000_000
TARGET_MS = 50.0
BEFORE_NORMAL_PER_S = 12_757.0
L02 = "https://agentic.local/layers/l02"
L06 = "https://agentic.local/layers/l06"


def trace(answer: str = "Booked.", goal: str = "Book a flight.", exec_id: str | None = None, **extra) -> dict:
    body = {
        "execution_id": exec_id or f"exec-{uuid.uuid4().hex[:10]}", "agent_id": "agent-1", "task_id": "task-1",
        "task_type": "flight_booking", "task_definition": {"goal": goal, "context": {}},
        "execution_trace": [{"step": 1, "action": "search", "parameters": {"q": "x"}, "output": "ok"}],
        "final_answer": answer, "outcome": "success", "metadata": {"tool_calls": 1},
    }
    body.update(extra)
    return {"specversion": "1.0", "type": "com.agentic.execution.trace_generated", "source": L02,
            "id": str(uuid.uuid4()), "time": "2026-02-10T09:15:02Z", "data": body}


def text_cases() -> dict[str, str]:
    """1 MB fields, each a trap for one family of patterns, with a real key at the end (it must still be found)."""
    tail = f" key {AWS_KEY}"
    rng = random.Random(0)
    cases = {
        "sql_union_select_run": "union select " * (MB // 13),
        "email_percent_run": "%" * (MB - 1) + "@",
        "jwt_dash_run": "eyJ-" * (MB // 4),
        "scheme_plus_run": "a+" * (MB // 2 - 3) + "://",
        "curl_run": "curl " * (MB // 5),
        "slack_dash_run": "xoxb-" * (MB // 5) + "_",
        "card_digit_run": "1 " * (MB // 2),
        "pii_dense": " ".join(f"call 555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}"
                              for _ in range(MB // 22)),
        "homoglyph_fullwidth": "ＰＷＮＥＤ：ｏｂｅｙ " * (MB // 11),
        "homoglyph_cyrillic": "раѕѕwоrd=ѕесrеt " * (MB // 16),
        "cjk": "漢字テスト" * (MB // 5),
        "prompt_injection_run": "ignore previous " * (MB // 16),
        "plain_words": "alpha beta gamma " * (MB // 17),
    }
    return {k: v + tail for k, v in cases.items()}


def envelope_cases() -> dict[str, str]:
    """Raw JSON events (as a transport delivers them)."""
    deep = json.dumps(trace(extra_field="NEST")).replace('"NEST"', '{"a":' * 5_000 + "{}" + "}" * 5_000)
    return {
        "deep_nesting": deep,
        "many_keys": json.dumps(trace(metadata={f"k{i}": i for i in range(50_000)})),
        "long_id": json.dumps({**trace(), "id": "i" * 500_000}),
        "long_execution_id": json.dumps(trace(exec_id="e" * 500_000)),
    }


def best_ms(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return min(times)


async def loop_stall(scanner: ContentScanner, texts: list[str]) -> float:
    examples = [make_example(i, output_text=t) for i, t in enumerate(texts)]
    await scanner.annotate_many_async(examples[:1])  # start the pool's workers outside the measurement
    stall = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal stall
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            stall = max(stall, now - last - 0.001)
            last = now

    task = asyncio.create_task(ticker())
    await scanner.annotate_many_async(examples)
    done.set()
    await task
    return stall * 1000


def score(exec_id: str) -> dict:
    return {"specversion": "1.0", "type": "com.agentic.evaluation.quality_score_computed", "source": L06,
            "id": str(uuid.uuid4()), "time": "2026-02-10T09:15:03Z",
            "data": {"execution_id": exec_id, "quality_score": 90, "confidence_level": 0.9,
                     "evaluation_method": "automated"}}


def maximal_batch() -> str:
    """Three 0.95 MB traces (detector traps as answers) with their scores: 2.85 MB, three examples to scan."""
    cases = text_cases()
    batch = []
    for name in ("sql_union_select_run", "email_percent_run", "jwt_dash_run"):
        t = trace(answer=cases[name][:950_000])
        batch += [t, score(t["data"]["execution_id"])]
    return json.dumps(batch)


async def health_during_batch(scan_in_transaction: bool) -> dict:
    """Worst ``/health/live`` latency and longest write transaction while the app ingests ``maximal_batch``."""
    import httpx
    from sqlalchemy import event

    tmp = tempfile.mkdtemp()
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp}/health.db", home=Path(tmp) / "home")
    db = Database(settings.database_url, auto_migrate=True)
    await db.connect()
    _, token = await AuthService(AccessService(db)).create_key("producer", name="bench", sources=["L02", "L06"])
    await ContentScanner().annotate_many_async([make_example(0, output_text="x" * 40_000)])  # start the pool
    opened: dict[int, float] = {}
    held: list[float] = []

    def begin(conn) -> None:  # type: ignore[no-untyped-def]
        opened[id(conn)] = time.perf_counter()

    def end(conn) -> None:  # type: ignore[no-untyped-def]
        t = opened.pop(id(conn), None)
        if t is not None:
            held.append(time.perf_counter() - t)

    engine = db.engine.sync_engine
    event.listen(engine, "begin", begin)
    event.listen(engine, "commit", end)
    event.listen(engine, "rollback", end)
    real_prepare, real_rounds = prescan.ScanCache.prepare, ingestion_pipeline.SCAN_ROUNDS
    if scan_in_transaction:
        async def no_prescan(self, *args) -> None:  # type: ignore[no-untyped-def]
            return None
        prescan.ScanCache.prepare = no_prescan  # type: ignore[method-assign]
        ingestion_pipeline.SCAN_ROUNDS = 0
    body = maximal_batch()
    app = create_app(settings=settings, db=db)
    worst, polls, done = 0.0, 0, False
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.bench",
                                     timeout=600) as client:
            await client.get("/health/live")

            async def poll() -> None:
                nonlocal worst, polls
                while not done:
                    t0 = time.perf_counter()
                    r = await client.get("/health/live")
                    assert r.status_code == 200, r.text
                    worst = max(worst, time.perf_counter() - t0)
                    polls += 1
                    await asyncio.sleep(0.005)

            poller = asyncio.create_task(poll())
            held.clear()
            t0 = time.perf_counter()
            r = await client.post("/api/v1/events", content=body, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents-batch+json"})
            post_s = time.perf_counter() - t0
            done = True
            await poller
    finally:
        prescan.ScanCache.prepare, ingestion_pipeline.SCAN_ROUNDS = real_prepare, real_rounds  # type: ignore[method-assign]
        await db.dispose()
    assert r.status_code == 202 and r.json()["examples_extracted"] == 3, r.text
    return {"mode": "scan_in_transaction" if scan_in_transaction else "prescan", "batch_bytes": len(body),
            "post_ms": round(post_s * 1000), "worst_health_live_ms": round(worst * 1000, 1), "health_polls": polls,
            "longest_transaction_ms": round(max(held) * 1000), "target_health_ms": 100.0}


def main() -> None:
    if "--health-only" in sys.argv:
        print(json.dumps([asyncio.run(health_during_batch(False)), asyncio.run(health_during_batch(True))]))
        return
    scanner = ContentScanner()
    tmp = tempfile.mkdtemp()
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp}/bench.db")
    pipeline = IngestionPipeline(db=Database(settings.database_url), settings=settings)
    rows = []
    for name, text in text_cases().items():
        event = trace(answer=text)
        ex = make_example(1, output_text=text)
        parse = best_ms(lambda: pipeline.parse(0, event), 1)
        scan = best_ms(lambda: scanner.scan(ex), 2)
        report = scanner.scan(ex)
        rows.append({"case": name, "bytes": len(text.encode()), "parse_ms": round(parse, 1),
                     "scan_ms": round(scan, 1), "total_ms": round(parse + scan, 1),
                     "tail_key_found": any(f.kind == "aws_access_key_id" for f in report.secrets)})
    for name, event in envelope_cases().items():
        parse = best_ms(lambda: pipeline.parse(0, event), 1)
        parsed = pipeline.parse(0, event)
        rows.append({"case": name, "bytes": len(event), "parse_ms": round(parse, 1), "scan_ms": 0.0,
                     "total_ms": round(parse, 1),
                     "outcome": parsed.error.code.value if parsed.error else "parsed"})
    rng = random.Random(0)
    normal = [make_example(i, rng=rng) for i in range(5000)]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        for ex in normal:
            scanner.scan(ex)
        times.append(time.perf_counter() - t0)
    normal_per_s = len(normal) / min(times)
    stall = asyncio.run(loop_stall(scanner, [text_cases()[k] for k in ("sql_union_select_run", "email_percent_run",
                                                                       "jwt_dash_run")]))
    worst = max(rows, key=lambda r: r["total_ms"])
    print(f"{'case':28s} {'bytes':>9s} {'parse ms':>9s} {'scan ms':>8s} {'total ms':>9s}  note")
    for r in rows:
        note = ("tail key found" if r.get("tail_key_found") else "TAIL KEY MISSED") if "tail_key_found" in r \
            else r.get("outcome", "")
        flag = "" if r["total_ms"] < TARGET_MS else "  > target"
        print(f"{r['case']:28s} {r['bytes']:9d} {r['parse_ms']:9.1f} {r['scan_ms']:8.1f} {r['total_ms']:9.1f}  {note}{flag}")
    result = {
        "worst_case": worst["case"], "worst_ms": worst["total_ms"], "target_ms": TARGET_MS,
        "all_under_target": all(r["total_ms"] < TARGET_MS for r in rows),
        "over_target": [r["case"] for r in rows if r["total_ms"] >= TARGET_MS],
        "normal_scan_per_s": round(normal_per_s), "before_normal_scan_per_s": BEFORE_NORMAL_PER_S,
        "ratio_vs_before": round(normal_per_s / BEFORE_NORMAL_PER_S, 3),
        "median_case_ms": round(statistics.median(r["total_ms"] for r in rows), 1),
        "worst_vs_normal": round(worst["total_ms"] / (1000 / normal_per_s)),
        "max_loop_stall_ms": round(stall, 1), "cases": rows,
    }
    health = [asyncio.run(health_during_batch(False)), asyncio.run(health_during_batch(True))]
    result["health_during_batch"] = health
    for h in health:
        print(f"{h['mode']:20s} {h['batch_bytes'] / MB:.2f} MB batch: POST {h['post_ms']} ms, worst /health/live "
              f"{h['worst_health_live_ms']} ms over {h['health_polls']} polls, longest write transaction "
              f"{h['longest_transaction_ms']} ms")
    print(f"normal scan: {normal_per_s:,.0f} examples/s ({result['ratio_vs_before']:.2f}x the pre-change "
          f"{BEFORE_NORMAL_PER_S:,.0f}/s); longest event-loop stall during a 3 MB batch scan: {stall:.1f} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
