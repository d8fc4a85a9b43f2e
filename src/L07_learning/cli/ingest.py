"""``l07 ingest``, ``l07 consume`` and ``l07 sample-events``: event ingestion from files and Redis Streams."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import typer

from ..services.demo.sample_stream import generate
from ._common import JsonOpt, emit_json, run, services, table


def _print_summary(title: str, summary: dict, json_out: bool) -> None:
    if json_out:
        emit_json(summary)
        return
    rows = [(k, v) for k, v in summary.items() if not isinstance(v, dict)]
    rows += [(f"rejected {code}", n) for code, n in sorted(summary.get("rejected_by_code", {}).items())]
    table(title, ["", "count"], rows)


@run
async def ingest(
    path: Path = typer.Argument(..., help="A JSONL file, or a folder of *.jsonl files (one CloudEvent per line)."),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Events per database transaction."),
    json_out: bool = JsonOpt,
) -> None:
    """Ingest CloudEvents from a file or folder: extract, join and store examples, each batch through the quality
    filter (``examples_accepted``; the others are listed by ``l07 examples rejected``)."""
    async with services() as service:
        summary = await service.ingest_path(path, batch_size=batch_size)
    _print_summary(f"ingested {path}", summary, json_out)


@run
async def consume(
    redis_url: str = typer.Option(..., "--redis", help="Redis URL, e.g. redis://127.0.0.1:6379/0."),
    stream: str = typer.Option(..., "--stream", help="Stream key (topic), e.g. execution.traces."),
    group: str = typer.Option(..., "--group", help="Consumer group, e.g. l07-training-extractor."),
    consumer: str = typer.Option(None, "--consumer", help="Consumer name (default <host>-<pid>)."),
    batch_size: int = typer.Option(100, "--batch-size", min=1, help="Entries per read and per DB transaction."),
    block_ms: int = typer.Option(1000, "--block-ms", min=1, help="How long a read waits for new entries."),
    claim_idle_ms: int = typer.Option(30_000, "--claim-idle-ms", min=0,
                                      help="Take over entries another consumer left unacknowledged this long."),
    max_deliveries: int = typer.Option(None, "--max-deliveries", min=1,
                                       help="Deliveries before an entry goes to the dead-letter stream "
                                            "(default L07_DEAD_LETTER_AFTER_ATTEMPTS)."),
    dead_letter_stream: str = typer.Option(None, "--dead-letter-stream", help="Default <stream>.dlq."),
    idle_exit: float = typer.Option(None, "--idle-exit", min=0,
                                    help="Exit after this many seconds with nothing new and nothing pending."),
    max_events: int = typer.Option(None, "--max-events", min=1, help="Exit after acknowledging this many entries."),
    json_out: bool = JsonOpt,
) -> None:
    """Consume a Redis Stream through a consumer group until stopped (Ctrl-C / SIGTERM finish the current batch);
    every batch goes through the quality filter."""
    async with services() as service:
        source = service.stream_source(
            redis_url, stream, group, consumer, batch_size=batch_size, block_ms=block_ms, claim_idle_ms=claim_idle_ms,
            max_deliveries=max_deliveries or service.settings.dead_letter_after_attempts,
            dead_letter_stream=dead_letter_stream, idle_exit_s=idle_exit, max_events=max_events,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, source.stop)
        try:
            summary = await service.consume(source)
        finally:
            await source.close()
    out = summary | {"consumer": source.consumer, "acknowledged": source.acked,
                               "dead_lettered": source.dead_lettered}
    _print_summary(f"consumed {stream} as {source.consumer}", out, json_out)


def sample_events(
    out: Path = typer.Option(..., "--out", help="Output JSONL file."),
    executions: int = typer.Option(200, "--executions", min=1, help="Task executions to generate (~2.2 events each)."),
    seed: int = typer.Option(0, "--seed", help="Same seed, same file."),
    json_out: bool = JsonOpt,
) -> None:
    """Write a deterministic, realistic mixed event stream (successes, failures, duplicates, malformed, PII...)."""
    stream = generate(executions, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    stream.write(str(out))
    exp = stream.expected
    summary = {
        "out": str(out), "events": exp["events"], "executions": executions, "seed": seed,
        "expected_trace_examples": len(exp["trace_examples"]), "expected_feedback_examples": len(exp["feedback_examples"]),
        "expected_plan_examples": len(exp["plan_examples"]), "unscored_traces": len(exp["unscored_traces"]),
        "malformed": sum(exp["rejected"].values()), "duplicates": exp["duplicates"], "ignored": exp["ignored"],
        "pii": exp["pii"], "poisoned": exp["poisoned"], "repeated_tasks": exp["preference_groups"],
    }
    if json_out:
        emit_json(summary)
    else:
        table(f"wrote {out}", ["", "count"], [(k, v) for k, v in summary.items() if k != "out"])


@run
async def joins(
    status: str = typer.Option(None, "--status",
                               help="waiting | joined | pending_evaluation | expired | orphan_score (default: counts)."),
    limit: int = typer.Option(50, "--limit", min=1),
    json_out: bool = JsonOpt,
) -> None:
    """Show the pending-join store (after applying the join window and TTL): counts per status, or one status."""
    async with services() as service:
        await service.ingestion.sweep()
        if status is None:
            counts = await service.queries.join_counts()
            rows = None
        else:
            rows = [{"execution_id": r.key, "status": r.status, "has_trace": r.trace is not None,
                     "scores": len(r.scores), "first_seen_at": r.first_seen_at}
                    for r in await service.queries.joins(status, limit)]
    if rows is None:
        emit_json(counts) if json_out else table("pending joins", ["status", "rows"], sorted(counts.items()))
    elif json_out:
        emit_json(rows)
    else:
        table(f"joins in {status}", ["execution_id", "trace", "scores", "first seen"],
              [(r["execution_id"], r["has_trace"], r["scores"], r["first_seen_at"]) for r in rows])


@run
async def rejected_events(
    code: str = typer.Option(None, "--code", help="Only this E70xx code."),
    limit: int = typer.Option(50, "--limit", min=1),
    json_out: bool = JsonOpt,
) -> None:
    """List rejected events with their code, reason and raw payload (contract §1.9)."""
    async with services() as service:
        rows = await service.queries.rejected_events(code=code, limit=limit)
    if json_out:
        emit_json([r.__dict__ for r in rows])
    else:
        table("rejected events", ["code", "event id", "transport", "reason"],
              [(r.code, r.event_id, r.transport, r.reason[:80]) for r in rows])


def register(app: typer.Typer) -> None:
    """Add the ingestion commands at the top level of ``l07``."""
    app.command("ingest")(ingest)
    app.command("consume")(consume)
    app.command("sample-events")(sample_events)
    app.command("joins")(joins)
    app.command("rejected-events")(rejected_events)
