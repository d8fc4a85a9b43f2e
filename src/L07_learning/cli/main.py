"""The ``l07`` command. Each resource has its own sub-app module; this file only wires them together.

Heavy libraries (torch, transformers) are imported inside the library functions that need them, so ``l07 --help``
stays fast.
"""

from __future__ import annotations

import typer

from .. import __version__
from ..observability.logging import configure_logging
from ..settings import get_settings
from . import audit as audit_cli
from . import retention as retention_cli
from . import (
    datasets, demo, distill, examples, importing, ingest, insights, keys, models, rlhf, serve, serve_model, train,
)
from . import loop as loop_cli
from . import run as run_cli
from ._common import JsonOpt, emit_json, run, services, table

app = typer.Typer(name="l07", help="L07 Learning Layer: events -> datasets -> LoRA fine-tuning -> signed releases.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.callback()
def _configure() -> None:
    """Structured logs (JSON lines on stderr by default; ``L07_LOG_FORMAT=text`` for plain text)."""
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)


@app.command()
def version(json_out: bool = JsonOpt) -> None:
    """Print the L07 version."""
    if json_out:
        emit_json({"version": __version__})
    else:
        typer.echo(__version__)


@db_app.command("upgrade")
@run
async def db_upgrade(revision: str = typer.Option("head", help="Target revision."), json_out: bool = JsonOpt) -> None:
    """Apply database migrations (PostgreSQL needs this once per release; SQLite upgrades itself)."""
    async with services() as service:
        db = service.db
        before = await db.current_revision()
        await db.upgrade(revision)
        after = await db.current_revision()
    if json_out:
        emit_json({"database": db.safe_url, "from": before, "to": after})
    else:
        typer.echo(f"{db.safe_url}: {before or 'empty'} -> {after}")


@db_app.command("downgrade")
@run
async def db_downgrade(revision: str = typer.Argument("base"), json_out: bool = JsonOpt) -> None:
    """Revert migrations down to REVISION (default: empty schema)."""
    async with services() as service:
        await service.db.downgrade(revision)
        after = await service.db.current_revision()
    emit_json({"to": after}) if json_out else typer.echo(f"now at {after or 'base'}")


@app.command()
@run
async def status(json_out: bool = JsonOpt) -> None:
    """Show what is stored, table by table."""
    settings = get_settings()
    async with services() as service:
        db = service.db
        counts = await service.queries.table_counts()
        revision = await db.current_revision()
    if json_out:
        emit_json({"database": db.safe_url, "revision": revision, "artifact_root": settings.artifact_root, "tables": counts})
        return
    typer.echo(f"database {db.safe_url} (schema revision {revision})")
    table("L07 storage", ["table", "rows"], sorted(counts.items()))


# Each module defines `app` (a typer.Typer, mounted under its command name) and/or `register(app)` (top-level
# commands such as `l07 ingest`); the name is None for modules that only register.
SUBCOMMANDS: list[tuple[object, str | None]] = [
    (ingest, None),
    (keys, "keys"),
    (models, "models"),
    (serve, None),
    (insights, None),
    (examples, "examples"),
    (datasets, "datasets"),
    (demo, None),
    (rlhf, "rlhf"),
    (distill, None),
    (train, "jobs"),
    (serve_model, None),
    (loop_cli, "loop"),
    (run_cli, None),
    (audit_cli, "audit"),
    (retention_cli, "retention"),
    (importing, None),
]

for _module, _name in SUBCOMMANDS:
    if _name is not None:
        app.add_typer(_module.app, name=_name)
    if hasattr(_module, "register"):
        _module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
