"""``l07 keys``: credentials. ``create``/``list-api``/``revoke-api`` manage REST API keys (stored only as hashes);
``rotate``/``list`` manage the artifact signing keys."""

from __future__ import annotations

import getpass
import json

import typer

from ..api.auth import AuthService
from ..services.registry.signing import SigningKeyring
from ..settings import get_settings
from ._common import JsonOpt, console, emit_json, err_console, run, services, table

app = typer.Typer(help="API keys for the REST service (and signing keys).", no_args_is_help=True)


def _attributes(values: list[str]) -> dict:
    attrs: dict = {}
    for item in values:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"'{item}' is not NAME=VALUE", param_hint="--attr")
        try:
            attrs[name] = json.loads(raw)
        except ValueError:
            attrs[name] = raw
    return attrs


@app.command("create")
@run
async def create(
    role: str = typer.Option(..., "--role", help="trainer, reviewer, deployer, auditor, admin or producer."),
    name: str | None = typer.Option(None, "--name", help="Who or what the key is for."),
    attr: list[str] = typer.Option(
        [], "--attr", help="Attribute NAME=VALUE (JSON value), e.g. --attr ml_manager=true. Repeatable."
    ),
    json_out: bool = JsonOpt,
) -> None:
    """Create an API key bound to ROLE. The key is printed once; only its SHA-256 is stored."""
    async with services() as service:
        record, token = await AuthService(service.access).create_key(role, name=name, attributes=_attributes(attr))
    if json_out:
        emit_json({"key_id": record.key_id, "role": record.role, "name": record.name,
                   "attributes": record.attributes, "api_key": token})
        return
    typer.echo(token)
    err_console.print(f"created {record.key_id} (role {record.role}); store the key now, it cannot be shown again")


@app.command("list-api")
@run
async def list_api(
    all_keys: bool = typer.Option(False, "--all", help="Include revoked keys."), json_out: bool = JsonOpt
) -> None:
    """List API keys (ids, roles, attributes; never the keys)."""
    async with services() as service:
        records = await AuthService(service.access).list_keys(include_revoked=all_keys)
    rows = [
        {"key_id": r.key_id, "role": r.role, "name": r.name, "attributes": r.attributes,
         "created_at": r.created_at, "revoked_at": r.revoked_at}
        for r in records
    ]
    if json_out:
        emit_json(rows)
        return
    table("API keys", ["key_id", "role", "name", "attributes", "created_at", "revoked_at"],
          [[r["key_id"], r["role"], r["name"], json.dumps(r["attributes"]), r["created_at"], r["revoked_at"]] for r in rows])


@app.command("revoke-api")
@run
async def revoke_api(key_id: str = typer.Argument(..., help="Key id from `l07 keys list-api`."), json_out: bool = JsonOpt) -> None:
    """Revoke an API key at once; requests with it get 401 from then on."""
    async with services() as service:
        revoked = await AuthService(service.access).revoke_key(key_id)
    if json_out:
        emit_json({"key_id": key_id, "revoked": revoked})
    else:
        typer.echo(f"{key_id}: {'revoked' if revoked else 'not found or already revoked'}")
    if not revoked:
        raise typer.Exit(code=1)


@app.command("rotate")
@run
async def rotate(
    actor: str = typer.Option(None, "--actor", help="Who rotates (audit log); default: the OS user."),
    json_out: bool = JsonOpt,
) -> None:
    """Make a new active artifact signing key; the previous 2 keys keep verifying existing signatures."""
    async with services() as service:
        result = await service.registry.rotate_signing_key(actor=actor or getpass.getuser())
    if json_out:
        emit_json(result)
        return
    console.print(f"active signing key is now [bold]{result['key'].version}[/] (fingerprint {result['key'].fingerprint[:16]})")
    if result["retired"]:
        console.print(f"retired (no longer verify): {', '.join(result['retired'])}; "
                      f"{result['models_on_retired_keys']} registered models were signed with them")


@app.command("list")
@run
async def list_signing(json_out: bool = JsonOpt) -> None:
    """List the artifact signing keys (public parts only) with their status."""
    settings = get_settings()
    keys = SigningKeyring(settings.signing_key_path or settings.home / "keys").list_keys()
    if json_out:
        emit_json({"data": keys, "count": len(keys)})
        return
    table("signing keys", ["version", "status", "created_at", "fingerprint"],
          [(k.version, k.status, k.created_at, k.fingerprint[:16]) for k in keys])
