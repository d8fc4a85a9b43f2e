"""``l07 retention``: the retention purge of contract §7.4 (the loop also runs it daily at 02:00 UTC)."""

from __future__ import annotations

import typer

from ..services.retention import RetentionService
from ._common import JsonOpt, emit_json, run, services, table

app = typer.Typer(help="Retention: delete what the contract keeps for a limited time.", no_args_is_help=True)


@app.command("purge")
@run
async def purge(
    dry_run: bool = typer.Option(False, "--dry-run", help="Only count what would be deleted."),
    json_out: bool = JsonOpt,
) -> None:
    """Delete expired dataset versions (90 d), failed runs (30 d), archived models (365 d), refused-input payloads
    (30 d), audit rows (7 years) and production outcomes (90 d, never those an open release watch reads); verify the
    deletion and audit it."""
    async with services() as service:
        report = await RetentionService(service.db, service.settings).purge(dry_run=dry_run)
    if json_out:
        emit_json(report.as_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    table(f"retention purge ({verb})", ["what", "rows", "older than"], [
        (name, count, report.cutoffs.get(_CUTOFF[name], "")) for name, count in report.counts.items()])
    if not dry_run:
        typer.echo(f"{len(report.files_removed)} folder(s) removed; deletion verified: {report.verified}; "
                   f"audit row {report.audit_id}")
    for kept in report.files_kept:
        typer.echo(f"kept {kept['path']} ({kept['owner']}): {kept['why']}")


_CUTOFF = {"training_jobs": "failed_runs", "loop_runs": "failed_runs", "dataset_versions": "datasets",
           "archived_models": "archived_models", "rejected_events": "rejected_payloads",
           "filter_rejections": "rejected_payloads", "audit_rows": "audit_log", "model_outcomes": "model_outcomes"}
