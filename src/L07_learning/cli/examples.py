"""``l07 examples``: stored training examples and the quality filter's decisions.

Thin wrappers over ``ExampleQualityFilter`` and the read-only ``Queries``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from ..models import L07ErrorCode
from ..services.example_quality_filter import ExampleQualityFilter
from ._common import JsonOpt, emit_json, read_json_records, run, services, table

app = typer.Typer(help="Training examples: list them, filter files, see what the quality filter rejected and why.",
                  no_args_is_help=True)


def read_examples(path: Path) -> list[Any]:
    """Example dicts from a JSONL file (or a JSON array)."""
    return read_json_records(path, L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH)


@app.command("rejected")
@run
async def rejected(
    reason: str = typer.Option(None, "--reason", help="Reason (secret, pii, duplicate...), rule or code (E7111)."),
    decision: str = typer.Option(None, "--decision", help="REJECT, QUARANTINE or REVIEW."),
    limit: int = typer.Option(50, "--limit", min=1, help="Most rows to show."),
    json_out: bool = JsonOpt,
) -> None:
    """List what the quality filter did not accept, newest first, with reason and code."""
    async with services() as service:
        rows, counts = await service.queries.filter_rejections(reason=reason, decision=decision, limit=limit)
    if json_out:
        emit_json({"data": [{k: v for k, v in r.items() if k != "payload"} for r in rows], "count": len(rows),
                   "totals": counts})
        return
    table("Filter decisions (not accepted)", ["example", "decision", "reason", "code", "rule", "detail"],
          [(r["example_id"], r["decision"], r["reason"], r["code"], r["rule"], (r["detail"] or "")[:90]) for r in rows])
    typer.echo("totals: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


@app.command("list")
@run
async def list_examples(
    status: str = typer.Option(None, "--status", help="PENDING, ACCEPTED, REVIEW, REJECTED or QUARANTINED."),
    limit: int = typer.Option(50, "--limit", min=1),
    json_out: bool = JsonOpt,
) -> None:
    """List stored training examples."""
    async with services() as service:
        examples = await service.queries.examples(status=status.upper() if status else None, limit=limit,
                                                  audited=True)
        total = await service.queries.count_examples(status=status.upper() if status else None)
    if json_out:
        emit_json({"data": examples, "count": total})
        return
    table(f"Training examples ({total})", ["example", "status", "task_type", "q", "c", "input"],
          [(e.example_id, e.status.value, e.task_type, f"{e.quality_score:.1f}",
            "" if e.confidence is None else f"{e.confidence:.2f}", e.input_text[:60]) for e in examples])


@app.command("filter")
@run
async def filter_file(
    input_file: Path = typer.Argument(None, help="JSONL of training examples (or --pending)."),
    pending: bool = typer.Option(False, "--pending", help="Filter the stored PENDING examples instead of a file."),
    batch_size: int = typer.Option(1000, "--batch-size", min=1, help="Examples per filter batch (with --pending)."),
    store: bool = typer.Option(True, "--store/--dry-run", help="Persist decisions (default) or only show them."),
    json_out: bool = JsonOpt,
) -> None:
    """Run the quality filter over a file of examples and show each decision with its reason; with ``--pending``,
    drain the stored PENDING backlog in batches and count the decisions."""
    if pending:
        if input_file is not None or not store:
            raise typer.BadParameter("--pending takes no file and always stores its decisions")
        async with services() as service:
            counts = await service.filter_pending(batch_size=batch_size)
            left = await service.queries.count_examples(status="PENDING")
        counts["still_pending"] = left
        if json_out:
            emit_json(counts)
        else:
            table("PENDING examples filtered", ["decision", "examples"], list(counts.items()))
        return
    if input_file is None:
        raise typer.BadParameter("give a file of examples, or --pending")
    examples = read_examples(input_file)
    if store:
        async with services() as service:
            report = await service.filter.filter_detailed(examples)
    else:
        # Without a database the filter keeps its decisions in memory only.
        report = await ExampleQualityFilter().filter_detailed(examples)
    if json_out:
        emit_json({"decisions": [d.to_dict() for d in report.decisions], "counts": report.counts(),
                   "alerts": report.alerts, "duration_s": report.duration_s})
        return
    table("Filter decisions", ["#", "example", "decision", "reason", "code", "detail"],
          [(d.index, d.example_id, d.decision.value, d.reason, d.code, d.detail[:80]) for d in report.decisions])
    typer.echo("counts: " + ", ".join(f"{k}={v}" for k, v in sorted(report.counts().items())))
