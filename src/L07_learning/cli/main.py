"""The ``l07`` command. Each resource has its own sub-app module; this file only wires them together.

Heavy libraries (torch, transformers) are imported inside the commands that need them, so ``l07 --help`` is fast.
"""

from __future__ import annotations

import typer

from .. import __version__
from ..settings import get_settings
from ._common import JsonOpt, emit_json, run, table

app = typer.Typer(name="l07", help="L07 Learning Layer: events -> datasets -> LoRA fine-tuning -> signed releases.",
                  no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema management.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@app.callback()
def _configure() -> None:
    """Structured logs (JSON lines on stderr by default; ``L07_LOG_FORMAT=text`` for plain text)."""
    from ..observability.logging import configure_logging

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
    from ..store.db import Database

    settings = get_settings()
    db = Database(settings.database_url or "", auto_migrate=False)
    try:
        before = await db.current_revision()
        await db.upgrade(revision)
        after = await db.current_revision()
    finally:
        await db.dispose()
    if json_out:
        emit_json({"database": db.safe_url, "from": before, "to": after})
    else:
        typer.echo(f"{db.safe_url}: {before or 'empty'} -> {after}")


@db_app.command("downgrade")
@run
async def db_downgrade(revision: str = typer.Argument("base"), json_out: bool = JsonOpt) -> None:
    """Revert migrations down to REVISION (default: empty schema)."""
    from ..store.db import Database

    db = Database(get_settings().database_url or "")
    try:
        await db.downgrade(revision)
        after = await db.current_revision()
    finally:
        await db.dispose()
    emit_json({"to": after}) if json_out else typer.echo(f"now at {after or 'base'}")


@app.command()
@run
async def status(json_out: bool = JsonOpt) -> None:
    """Show what is stored, table by table."""
    from ..store.db import get_database
    from ..store.repositories.status import table_counts

    settings = get_settings()
    db = get_database()
    async with db.session() as session:
        counts = await table_counts(session)
    revision = await db.current_revision()
    await db.dispose()
    if json_out:
        emit_json({"database": db.safe_url, "revision": revision, "artifact_root": settings.artifact_root, "tables": counts})
        return
    typer.echo(f"database {db.safe_url} (schema revision {revision})")
    table("L07 storage", ["table", "rows"], sorted(counts.items()))


def _register_subcommands() -> None:
    # One line per resource module; each module defines `app` (a typer.Typer) and its name.
    import importlib

    for module_name, command_name in SUBCOMMANDS:
        module = importlib.import_module(f".{module_name}", __package__)
        if hasattr(module, "app"):
            app.add_typer(module.app, name=command_name)
        if hasattr(module, "register"):
            module.register(app)


# (module in cli/, command name). Modules with `register(app)` add top-level commands (e.g. `l07 ingest`).
SUBCOMMANDS: list[tuple[str, str]] = [
    ("ingest", "ingest"),
    ("keys", "keys"),
    ("models", "models"),
    ("serve", "serve"),
    ("insights", "patterns/strategies/curriculum"),
    ("examples", "examples"),
    ("datasets", "datasets"),
    ("demo", "demo"),
    ("rlhf", "rlhf"),
    ("distill", "distill"),
    ("train", "jobs"),
    ("serve_model", "serve-model"),
]

_register_subcommands()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
