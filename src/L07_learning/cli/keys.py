"""``l07 keys``: credentials. ``create``/``list-api``/``revoke-api`` manage REST API keys (stored only as hashes;
producer keys bound to sources and event kinds); ``producers add|list|remove|sign`` manage the producer public keys
that sign consumed events (contract §1.9, §7.4); ``rotate``/``list`` manage the artifact signing keys."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import typer

from ..api.auth import AuthService
from ..services.ingestion.provenance import EVENT_KINDS, sign_event
from ..services.registry.signing import keyring_for
from ..settings import get_settings
from ._common import JsonOpt, console, emit_json, err_console, run, services, table

app = typer.Typer(help="API keys for the REST service (and signing keys).", no_args_is_help=True)
producers = typer.Typer(help="Producer public keys that sign consumed events (verify_event_signatures).",
                        no_args_is_help=True)
app.add_typer(producers, name="producers")

SOURCE_HELP = "Layer (L02) or exact event source the key speaks for; repeatable or comma-separated."
KINDS_HELP = (f"Event kinds it may send, comma-separated: {', '.join(EVENT_KINDS)}. Default: what the layers produce "
              "(L02 trace, L04 response, L05 plan, L06 score); human_review (reviewer corrections) only when named.")


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
    role: str = typer.Option(..., "--role", help="trainer, reviewer, deployer, auditor, admin, producer or inference."),
    name: str | None = typer.Option(None, "--name", help="Who or what the key is for."),
    attr: list[str] = typer.Option(
        [], "--attr", help="Attribute NAME=VALUE (JSON value), e.g. --attr ml_manager=true. Repeatable."
    ),
    source: list[str] = typer.Option([], "--source", help="Producer keys (required): " + SOURCE_HELP),
    kinds: str = typer.Option(None, "--kinds", help="Producer keys: " + KINDS_HELP),
    json_out: bool = JsonOpt,
) -> None:
    """Create an API key bound to ROLE. The key is printed once; only its SHA-256 is stored.

    A producer key is also bound to the sources it speaks for and the event kinds it may send, e.g.
    ``--role producer --source L02 --kinds trace``; events outside the binding are rejected with E7115.
    """
    if role.strip().lower() == "producer" and not source:
        raise typer.BadParameter("a producer key must be bound to its sources: --source L0N (and --kinds ...)",
                                 param_hint="--source")
    async with services() as service:
        record, token = await AuthService(service.access).create_key(
            role, name=name, attributes=_attributes(attr), sources=source or None, kinds=[kinds] if kinds else None)
    if json_out:
        emit_json({"key_id": record.key_id, "role": record.role, "name": record.name,
                   "attributes": record.attributes, "sources": list(record.sources), "kinds": list(record.kinds),
                   "api_key": token})
        return
    typer.echo(token)
    bound = f"; sources {', '.join(record.sources)}, kinds {', '.join(record.kinds)}" if record.sources else ""
    err_console.print(f"created {record.key_id} (role {record.role}{bound}); store the key now, it cannot be shown again")


@app.command("list-api")
@run
async def list_api(
    all_keys: bool = typer.Option(False, "--all", help="Include revoked keys."), json_out: bool = JsonOpt
) -> None:
    """List API keys (ids, roles, attributes; never the keys)."""
    async with services() as service:
        records = await AuthService(service.access).list_keys(include_revoked=all_keys)
    rows = [
        {"key_id": r.key_id, "role": r.role, "name": r.name, "attributes": r.attributes, "sources": list(r.sources),
         "kinds": list(r.kinds), "created_at": r.created_at, "revoked_at": r.revoked_at}
        for r in records
    ]
    if json_out:
        emit_json(rows)
        return
    table("API keys", ["key_id", "role", "name", "attributes", "sources", "kinds", "created_at", "revoked_at"],
          [[r["key_id"], r["role"], r["name"], json.dumps(r["attributes"]), ",".join(r["sources"]), ",".join(r["kinds"]),
            r["created_at"], r["revoked_at"]] for r in rows])


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
    keys = keyring_for(settings).list_keys()
    if json_out:
        emit_json({"data": keys, "count": len(keys)})
        return
    table("signing keys", ["version", "status", "created_at", "fingerprint"],
          [(k.version, k.status, k.created_at, k.fingerprint[:16]) for k in keys])


# --- producer public keys ----------------------------------------------------------------------------------------


def _producer_row(r) -> dict:  # type: ignore[no-untyped-def]
    return {"key_id": r.key_id, "name": r.name, "fingerprint": r.fingerprint, "sources": list(r.sources),
            "kinds": list(r.kinds), "created_at": r.created_at, "revoked_at": r.revoked_at,
            "public_key_pem": r.public_key_pem}


@producers.command("add")
@run
async def producers_add(
    public_key: Path = typer.Option(..., "--public-key", exists=True, dir_okay=False, readable=True,
                                    help="The producer's ECDSA P-256 public key (PEM)."),
    source: list[str] = typer.Option(..., "--source", help=SOURCE_HELP),
    kinds: str = typer.Option(None, "--kinds", help=KINDS_HELP),
    key_id: str = typer.Option(None, "--key-id", help="Id producers send in 'signaturekeyid'; default: the first "
                                                      "16 hex digits of the key's fingerprint."),
    name: str | None = typer.Option(None, "--name", help="Who or what the key is for."),
    actor: str = typer.Option(None, "--actor", help="Who registers it (audit log); default: the OS user."),
    json_out: bool = JsonOpt,
) -> None:
    """Register a producer's public key, bound to sources and event kinds. With L07_VERIFY_EVENT_SIGNATURES=true,
    events must carry 'signaturekeyid' and 'signature' (ECDSA P-256/SHA-256 over the RFC 8785 canonical JSON of the
    event without 'signature'); other events are rejected with E7115."""
    async with services() as service:
        record = await service.access.add_producer_key(
            public_key.read_text(), sources=source, kinds=[kinds] if kinds else None, name=name, key_id=key_id,
            actor=actor or getpass.getuser())
    if json_out:
        emit_json(_producer_row(record))
        return
    console.print(f"registered producer key [bold]{record.key_id}[/] (fingerprint {record.fingerprint[:16]}); "
                  f"sources {', '.join(record.sources)}, kinds {', '.join(record.kinds)}")


@producers.command("list")
@run
async def producers_list(
    all_keys: bool = typer.Option(False, "--all", help="Include revoked keys."), json_out: bool = JsonOpt
) -> None:
    """List registered producer keys (public parts only) with their bindings."""
    async with services() as service:
        records = await service.access.list_producer_keys(include_revoked=all_keys)
    rows = [_producer_row(r) for r in records]
    if json_out:
        emit_json(rows)
        return
    table("producer keys", ["key_id", "name", "sources", "kinds", "fingerprint", "created_at", "revoked_at"],
          [[r["key_id"], r["name"], ",".join(r["sources"]), ",".join(r["kinds"]), r["fingerprint"][:16],
            r["created_at"], r["revoked_at"]] for r in rows])


@producers.command("remove")
@run
async def producers_remove(
    key_id: str = typer.Argument(..., help="Key id from `l07 keys producers list`."),
    actor: str = typer.Option(None, "--actor", help="Who revokes it (audit log); default: the OS user."),
    json_out: bool = JsonOpt,
) -> None:
    """Revoke a producer key: events it signs are rejected (E7115) from the next batch on."""
    async with services() as service:
        revoked = await service.access.remove_producer_key(key_id, actor=actor or getpass.getuser())
    if json_out:
        emit_json({"key_id": key_id, "revoked": revoked})
    else:
        typer.echo(f"{key_id}: {'revoked' if revoked else 'not found or already revoked'}")
    if not revoked:
        raise typer.Exit(code=1)


@producers.command("sign")
def producers_sign(
    event: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                 help="A CloudEvent in structured mode (JSON), or a JSONL file of them."),
    private_key: Path = typer.Option(..., "--private-key", exists=True, dir_okay=False, readable=True,
                                     help="The producer's ECDSA P-256 private key (PEM); it never leaves this machine."),
    key_id: str = typer.Option(..., "--key-id", help="The registered producer key id."),
) -> None:
    """Sign events the way a producer does (for tests, replays and producers without a CloudEvents SDK): prints
    each event with 'signaturekeyid' and 'signature' added, one JSON object per line."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise typer.BadParameter("not an ECDSA P-256 private key", param_hint="--private-key")
    text = event.read_text()
    try:
        items = [json.loads(text)]
    except ValueError:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    for item in items:
        typer.echo(json.dumps(sign_event(item, key, key_id), ensure_ascii=False))
