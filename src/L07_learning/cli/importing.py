"""``l07 import FORMAT PATH``: bring training data from elsewhere (OpenAI chat or preference JSONL, Langfuse or
LangSmith exports, Hugging Face datasets) through the quality filter, with a per-line report."""

from __future__ import annotations

from pathlib import Path

import typer

from ..services.importers import FORMATS
from ..services.importers.run import Importer
from ._common import JsonOpt, emit_json, run, services, table


@run
async def import_file(
    format: str = typer.Argument(..., metavar="FORMAT", help=f"One of: {', '.join(FORMATS)}."),  # noqa: A002
    path: Path = typer.Argument(..., help="The file (a folder for a Hugging Face save_to_disk dataset)."),
    quality: float = typer.Option(None, "--quality", min=0, max=100,
                                  help="Quality declared for records without their own score (default: 100 for "
                                       "training files; none for traces, whose unscored records go to REVIEW)."),
    agent_id: str = typer.Option(None, "--agent-id", help="Agent the examples are stored under (import:FORMAT)."),
    task_type: str = typer.Option(None, "--task-type", help="Task type of the examples (imported)."),
    json_out: bool = JsonOpt,
) -> None:
    """Import PATH as FORMAT: each record becomes an example (or preference pair) with its provenance, through
    the quality filter; every record is reported as imported, filtered (with its reason) or refused (line number
    and E7xxx code). Exits 1 when a record was refused."""
    async with services() as service:
        report = await Importer(service.db, service.filter).import_file(
            format, path, quality=quality, agent_id=agent_id, task_type=task_type)
    if json_out:
        emit_json(report.to_dict())
    else:
        counts = report.counts()
        table(f"import {format} {path.name}", ["", "count"], list(counts.items()))
        if report.filtered:
            table("filtered", ["line", "decision", "reason", "code", "detail"],
                  [(r["line"], r["decision"], r["reason"], r["code"] or "", (r["detail"] or "")[:80])
                   for r in report.filtered])
        if report.refused:
            table("refused", ["line", "code", "why"], [(r["line"], r["code"], r["message"][:100])
                                                       for r in report.refused])
    if report.refused:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("import")(import_file)
