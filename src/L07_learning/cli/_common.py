"""Helpers shared by CLI commands: the services, run a coroutine, print JSON or a rich table, map L07Error to an
exit code."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import datetime
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console

from ..models.error_codes import L07Error, L07ErrorCode
from ..services.audit_trail import bind_origin, cli_origin
from ..services.learning_service import LearningService
from ._tables import print_table

console = Console(stderr=False)
err_console = Console(stderr=True)

T = TypeVar("T")

JsonOpt = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


@asynccontextmanager
async def services() -> AsyncIterator[LearningService]:
    """The composed services on the configured database, closed when the command ends (the relay a command's
    ``initialize`` started included, with its sinks)."""
    service = LearningService.build()
    try:
        yield service
    finally:
        await service.cleanup()


def to_jsonable(value: Any) -> Any:
    """Pydantic models, enums and datetimes as plain JSON values."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    return value


def emit_json(value: Any) -> None:
    """Print one JSON document on stdout."""
    sys.stdout.write(json.dumps(to_jsonable(value), default=str) + "\n")
    sys.stdout.flush()


def table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Print a rich table that fits the terminal without cutting an id (``_tables.py``)."""
    print_table(console, title, columns, rows)


def read_json_records(path: Path, invalid_code: L07ErrorCode) -> list[Any]:
    """Records from a JSON-lines file or one JSON array; bad JSON raises ``invalid_code``, an unreadable file E7905."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"cannot read {path}: {exc}") from None
    try:
        stripped = text.lstrip()
        if stripped.startswith("["):
            return json.loads(stripped)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise L07Error(invalid_code, f"{path}: invalid JSON ({exc})") from None


def run(coro_fn: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """Decorator for typer commands written as ``async def``: runs them, and turns ``L07Error`` into a clean message.

    The error goes to stderr as ``E7xxx NAME: message`` (or a JSON object when ``--json`` was given) with exit code 2.
    """

    @wraps(coro_fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            # Audit rows written by the command name the OS user and host (contract §7.4 "Audit").
            with bind_origin(cli_origin()):
                return asyncio.run(coro_fn(*args, **kwargs))
        except L07Error as exc:
            if kwargs.get("json_out"):
                emit_json({"error": exc.to_dict()})
            else:
                err_console.print(f"[bold red]{exc.code.value} {exc.code.name}[/]: {exc.message}")
            raise typer.Exit(code=2) from None

    return wrapper
