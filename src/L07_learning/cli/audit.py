"""``l07 audit``: read the audit log and verify its hash chain (contract §7.4 "Audit")."""

from __future__ import annotations

import typer

from ..services.audit_trail import AuditTrail
from ._common import JsonOpt, emit_json, run, services, table

app = typer.Typer(help="The audit log: list rows, verify the hash chain.", no_args_is_help=True)


@app.command("verify")
@run
async def verify(json_out: bool = JsonOpt) -> None:
    """Check every audit row against the hash chain. Exit code 1 names the first row that was edited or deleted."""
    async with services() as service:
        report = await AuditTrail(service.db).verify()
    if json_out:
        emit_json(report.as_dict())
    elif report.ok:
        typer.echo(f"audit chain intact: {report.rows_checked} rows (seq {report.first_seq or 0}-{report.last_seq or 0}); "
                   f"head {report.head_hash} - record it elsewhere to detect a rewritten chain")
    else:
        broken = report.broken or {}
        typer.echo(f"audit chain BROKEN at seq {broken.get('seq')} (audit_id {broken.get('audit_id') or '-'}): "
                   f"{broken.get('reason')}; {report.rows_checked} rows before it verified", err=True)
    if not report.ok:
        raise typer.Exit(code=1)


@app.command("list")
@run
async def list_rows(
    action: str = typer.Option(None, help="Exact action, or a prefix ending in *."),
    actor: str = typer.Option(None, help="Key id, user@host or other actor."),
    limit: int = typer.Option(50, min=1, max=1000),
    json_out: bool = JsonOpt,
) -> None:
    """Audit rows, newest first."""
    async with services() as service:
        rows, total = await service.queries.audit_log(action=action, actor=actor, limit=limit)
    if json_out:
        emit_json({"data": rows, "count": total})
        return
    table(f"audit log ({len(rows)} of {total})", ["seq", "time", "actor", "from", "action", "resource", "result"], [
        (r["seq"], r["timestamp"], f"{r['actor']['type']}:{r['actor']['identifier']}",
         r["actor"].get("ip_address") or r["actor"].get("user_agent"), r["action"],
         f"{r['resource']['type']}:{r['resource']['id'] or ''}", r["result"]) for r in rows])
