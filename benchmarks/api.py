"""REST ingestion throughput: events/s accepted by ``POST /api/v1/events`` in batches of 100, over loopback.

A real ``l07 serve`` (uvicorn) runs in a child process on 127.0.0.1 against a SQLite file (or ``L07_BENCH_DB_URL``);
the client posts generated CloudEvents (traces, scores, planning records, as ``services/demo/sample_stream.py`` makes them)
as JSON arrays of 100 with an API key, from ``--concurrency`` concurrent senders, and records each request's latency.

Baseline, measured in the same run on a fresh database: the same batches handed straight to the shared ingestion
function (``services.ingestion.ingest_events``) in process, with no HTTP, auth, audit or JSON framing. The ratio
``http / in-process`` is the share of the ingestion rate that survives the REST layer.

Run: ``PYTHONPATH=src python benchmarks/api.py [--batches 200] [--concurrency 1]``. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

BATCH = 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))
    return ordered[k]


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _batches(n_batches: int, seed: int) -> list[list[str]]:
    from L07_learning.services.demo.sample_stream import generate

    needed = n_batches * BATCH
    # The sample stream plants a few unparseable lines to exercise the dead-letter path; a JSON array cannot carry
    # them (the whole request would be one unparseable event), so batches hold only the lines that are JSON.
    lines = [line for line in generate(int(needed / 2.0) + 50, seed=seed).lines if _is_json(line)]
    if len(lines) < needed:
        raise SystemExit(f"sample stream too short: {len(lines)} < {needed}")
    return [lines[i * BATCH : (i + 1) * BATCH] for i in range(n_batches)]


async def _create_key(url: str) -> str:
    from L07_learning.api.auth import AuthService
    from L07_learning.services.access import AccessService
    from L07_learning.store.db import Database

    db = Database(url, auto_migrate=True)
    try:
        # The sample stream speaks for every producing layer (L01 replays too), reviewer corrections included.
        _, token = await AuthService(AccessService(db)).create_key(
            "producer", name="benchmark", sources=["L01", "L02", "L04", "L05", "L06"],
            kinds=["trace", "score", "plan", "response", "human_review"])
    finally:
        await db.dispose()
    return token


async def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"l07 serve exited with {proc.returncode}")
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("l07 serve did not become ready")


async def _http_run(base: str, token: str, batches: list[list[str]], concurrency: int) -> dict:
    import httpx

    bodies = [("[" + ",".join(b) + "]").encode() for b in batches]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/cloudevents-batch+json"}
    latencies: list[float] = []
    accepted = 0
    failures: dict[int, int] = {}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def sender(client: httpx.AsyncClient) -> None:
        nonlocal accepted
        while not queue.empty():
            body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await client.post("/api/v1/events", content=body, headers=headers)
            latencies.append(time.perf_counter() - t0)
            if r.status_code == 202:
                accepted += r.json()["accepted"]
            else:
                failures[r.status_code] = failures.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(sender(client) for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "latencies": latencies, "accepted": accepted, "failures": failures}


async def _inprocess_run(home: str, batches: list[list[str]]) -> dict:
    from L07_learning.services.ingestion.pipeline import ingest_events
    from L07_learning.settings import Settings
    from L07_learning.store.db import Database

    url = f"sqlite+aiosqlite:///{home}/baseline.db"
    settings = Settings(home=home, database_url=url)
    db = Database(url, auto_migrate=True)
    await db.connect()
    accepted = 0
    t0 = time.perf_counter()
    for batch in batches:
        s = (await ingest_events(batch, "http", db=db, settings=settings)).summary
        accepted += s.events_read - s.events_rejected - s.duplicates
    elapsed = time.perf_counter() - t0
    await db.dispose()
    return {"elapsed": elapsed, "accepted": accepted}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=200, help="Timed batches of 100 events")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed batches first")
    parser.add_argument("--concurrency", type=int, default=1, help="Concurrent senders (SQLite has one writer)")
    args = parser.parse_args()

    import logging

    logging.getLogger("L07_learning").setLevel(logging.ERROR)
    home = tempfile.mkdtemp(prefix="l07-bench-api-")
    url = os.environ.get("L07_BENCH_DB_URL") or f"sqlite+aiosqlite:///{home}/serve.db"
    all_batches = _batches(args.warmup + args.batches, seed=11)
    warm, timed = all_batches[: args.warmup], all_batches[args.warmup :]
    token = asyncio.run(_create_key(url))

    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC), L07_HOME=home, L07_DATABASE_URL=url, L07_LOG_LEVEL="WARNING",
               # The benchmark measures ingestion, not throttling.
               L07_API_RATE_LIMIT_EVENTS_PER_S="1000000000", L07_API_RATE_LIMIT_BURST="1000000000")
    proc = subprocess.Popen(
        [sys.executable, "-m", "L07_learning.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(_wait_ready(base, proc))
        asyncio.run(_http_run(base, token, warm, 1))
        http = asyncio.run(_http_run(base, token, timed, args.concurrency))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    baseline = asyncio.run(_inprocess_run(home, all_batches))

    events = len(timed) * BATCH
    rate = events / http["elapsed"]
    base_rate = baseline["accepted"] / baseline["elapsed"] if baseline["elapsed"] else 0.0
    lat_ms = [x * 1000 for x in http["latencies"]]
    result = {
        "benchmark": "api_events_ingest",
        "transport": "uvicorn on 127.0.0.1 (l07 serve), httpx client",
        "database": "sqlite" if "L07_BENCH_DB_URL" not in os.environ else "custom",
        "batch_size": BATCH,
        "batches": len(timed),
        "concurrency": args.concurrency,
        "events": events,
        "events_accepted": http["accepted"],
        "non_2xx": http["failures"],
        "seconds": round(http["elapsed"], 3),
        "events_per_s": round(rate, 1),
        "requests_per_s": round(len(timed) / http["elapsed"], 2),
        "latency_ms_p50": round(_percentile(lat_ms, 0.50), 2),
        "latency_ms_p99": round(_percentile(lat_ms, 0.99), 2),
        "latency_ms_mean": round(statistics.fmean(lat_ms), 2),
        "baseline": "ingest_events in process, same batches of 100, fresh SQLite file",
        "baseline_events_per_s": round(base_rate, 1),
        "ratio_vs_baseline": round(rate / base_rate, 3) if base_rate else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
