"""``l07 run``: the autonomous loop as one long-running process (contract §9).

Sources (watched folders, Redis Streams, the REST API with ``--api``) feed ingestion and the quality filter; the
loop triggers training per policy, validates and releases; the embedded worker runs the jobs unless ``--no-worker``;
the outbox relay delivers every event. SIGINT or SIGTERM stop it in order: the API first (no new requests), then the
stream consumers, the loop (its lease given up), the worker (a running job resumes from its checkpoint elsewhere)
and the relay; the exit code is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
import uvicorn

from ..api.app import create_app
from ..models.error_codes import L07Error, L07ErrorCode
from ..services.loop import LearningLoop
from ..settings import get_settings
from ._common import JsonOpt, emit_json, run

DEFAULT_GROUP = "l07-training-extractor"


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: ``l07 run`` owns SIGINT and SIGTERM and stops the API itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _pair_streams(redis: list[str], streams: list[str], groups: list[str]) -> list[tuple[str, str, str]]:
    """``(url, stream, group)`` per ``--stream``: the n-th ``--redis`` and ``--group``, or the only one given."""
    if not streams:
        if redis or groups:
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, "--redis and --group need at least one --stream")
        return []

    def nth(values: list[str], i: int, what: str, default: str | None = None) -> str:
        if len(values) == len(streams):
            return values[i]
        if len(values) == 1:
            return values[0]
        if not values and default is not None:
            return default
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND,
                       f"give one {what} for all streams or one per --stream ({len(streams)}), not {len(values)}")

    return [(nth(redis, i, "--redis"), s, nth(groups, i, "--group", DEFAULT_GROUP)) for i, s in enumerate(streams)]


def _listen(api: str) -> tuple[str, int]:
    host, _, port = api.rpartition(":")
    if not port.isdigit():
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"--api wants HOST:PORT, got {api!r}")
    return host or "127.0.0.1", int(port)


async def _serve(loop: LearningLoop, *, api: str | None, log_level: str) -> None:
    """Run the loop (and the API on its services) until SIGINT or SIGTERM."""
    signalled = asyncio.Event()
    loop_stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        running.add_signal_handler(sig, signalled.set)
    server: _EmbeddedServer | None = None
    api_task: asyncio.Task | None = None
    await loop.start()
    if api is not None:
        host, port = _listen(api)
        server = _EmbeddedServer(uvicorn.Config(
            create_app(loop.settings, loop=loop), host=host, port=port, log_level=log_level,
            access_log=False, log_config=None, lifespan="on"))
        api_task = asyncio.create_task(server.serve())

    async def shutdown() -> None:
        await signalled.wait()
        if server is not None and api_task is not None:
            server.should_exit = True
            await asyncio.gather(api_task, return_exceptions=True)
        loop_stop.set()

    stopper = asyncio.create_task(shutdown())
    try:
        await loop.run_forever(loop_stop)
    finally:
        stopper.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            running.remove_signal_handler(sig)


def register(app: typer.Typer) -> None:
    """Add the top-level ``run`` command."""

    @app.command("run")
    @run
    async def run_cmd(
        watch: list[Path] = typer.Option([], "--watch", help="Ingest every *.jsonl dropped here (repeatable); "
                                                            "processed files move to DIR/done/ or DIR/failed/."),
        redis: list[str] = typer.Option([], "--redis", help="Redis URL of a --stream (repeatable, or one for all)."),
        stream: list[str] = typer.Option([], "--stream", help="Redis stream to consume (repeatable)."),
        group: list[str] = typer.Option([], "--group", help=f"Consumer group (repeatable; default {DEFAULT_GROUP})."),
        api: str = typer.Option(None, "--api", help="Also serve the REST API here, HOST:PORT."),
        policy: Path = typer.Option(None, "--policy", help="Policy YAML (default: one group per task type, "
                                                           "triggers from L07_LOOP_* settings)."),
        worker: bool = typer.Option(True, "--worker/--no-worker",
                                    help="Run training jobs in this process (else only `l07 worker` processes do)."),
        tick: float = typer.Option(5.0, "--tick", min=0.05, help="Seconds between loop passes."),
        json_out: bool = JsonOpt,
    ) -> None:
        """Run the autonomous loop: ingest, filter, train per policy, validate, release; until SIGINT/SIGTERM."""
        settings = get_settings()
        streams = _pair_streams(redis, stream, group)
        loop = LearningLoop.build(settings, policy_file=policy, watch=watch, streams=streams, run_worker=worker,
                                  tick_s=tick)
        started: dict[str, Any] = {
            "running": "l07 run", "database": loop.db.safe_url, "watch": [str(w) for w in watch],
            "streams": [f"{u} {s} ({g})" for u, s, g in streams],
            "api": f"http://{api}" if api else None, "worker": worker,
            "policies": [p.name for p in loop.policies.policies], "process": loop.lease.holder,
        }
        if json_out:
            emit_json(started)
        else:
            typer.echo(f"l07 run on {started['database']}: watching {started['watch'] or 'no folder'}, "
                       f"streams {started['streams'] or 'none'}, API {started['api'] or 'off'}, "
                       f"worker {'on' if worker else 'off'}; Ctrl-C to stop", err=True)
        await _serve(loop, api=api, log_level=settings.log_level.lower())
