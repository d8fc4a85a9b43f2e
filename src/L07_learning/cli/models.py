"""``l07 models``: list, show, verify, validate, deploy, promote, approve, roll back, watch and read outcomes, trace
lineage, register a base model."""

from __future__ import annotations

import getpass
from datetime import datetime, timedelta, timezone
from typing import Any

import typer
from rich.tree import Tree

from ..api.auth import AuthService, PermissionDenied
from ..models._base import utcnow
from ..models.error_codes import L07Error, L07ErrorCode
from ..services.feedback import ReleaseWatch, model_outcomes
from ..services.learning_service import LearningService
from ..settings import parse_duration
from ..services.release.export import export_model
from ._common import JsonOpt, console, emit_json, run, services, table

app = typer.Typer(help="Model registry: signed artifacts, stages, approvals, rollback, lineage.", no_args_is_help=True)

ActorOpt = typer.Option(None, "--actor", help="Who does this (audit log); default: the OS user.")


def _actor(actor: str | None) -> str:
    return actor or getpass.getuser()


async def _with_registry(fn: Any) -> Any:
    async with services() as service:
        return await fn(service.registry)


@app.command("list")
@run
async def list_cmd(
    model_type: str = typer.Option(None, "--type", help="BASE, FINE_TUNED, LORA_ADAPTER, DISTILLED, REWARD_MODEL."),
    stage: str = typer.Option(None, "--stage", help="Stage filter, any case."),
    name: str = typer.Option(None, "--name", help="Only this model name."),
    json_out: bool = JsonOpt,
) -> None:
    """List registered models, newest first."""
    models = await _with_registry(lambda r: r.list_models(model_type=model_type, status=stage, name=name))
    if json_out:
        emit_json({"data": models, "count": len(models)})
        return
    # Stage before type: on a narrow terminal the rightmost columns give way first (cli/_tables.py).
    table("models", ["model_id", "name", "version", "stage", "serving", "type", "validation", "key"], [
        (m.model_id, m.name, m.version, m.stage.value, m.serving_state.value, m.model_type.value, m.validation_status,
         m.signing_key_version) for m in models
    ])


@app.command("show")
@run
async def show(model_id: str, json_out: bool = JsonOpt) -> None:
    """Show one model with its stage history and validations."""

    async def go(r: Any) -> tuple[Any, Any]:
        return await r.get_model(model_id), await r.get_validations(model_id)

    model, validations = await _with_registry(go)
    if json_out:
        emit_json({"model": model, "validations": validations})
        return
    rows = [(k, v) for k, v in model.model_dump(mode="json", exclude={"stage_history", "metrics", "config"}).items()]
    table(f"{model.name} {model.version}", ["field", "value"], rows)
    table("stage history", ["at", "from", "to", "by", "approvals", "notes"], [
        (h.transitioned_at, h.from_stage.value if h.from_stage else "", h.stage.value, h.transitioned_by,
         ", ".join(f"{a['role']}={a['actor']}" for a in h.approvals), h.notes) for h in model.stage_history
    ])
    if validations:
        table("validations", ["validation_id", "recommendation", "verdict", "regression", "completed_at"], [
            (v.validation_id, v.recommendation.value, v.verdict.value, v.regression_detected, v.completed_at)
            for v in validations
        ])


@app.command("verify")
@run
async def verify(model_id: str, json_out: bool = JsonOpt) -> None:
    """Re-hash every file and check the signature. Exit code 2 when the artifact fails."""
    report = await _with_registry(lambda r: r.verify(model_id))
    if json_out:
        emit_json(report)
    elif report.ok:
        console.print(f"[green]OK[/] {report.name} {report.version}: {report.files_checked} files, "
                      f"{report.bytes_checked} bytes, signature by {report.signing_key_version}")
    else:
        console.print(f"[bold red]{report.error_code} FAILED[/] {report.name} {report.version}")
        for p in report.problems:
            console.print(f"  - {p}")
    if not report.ok:
        raise typer.Exit(code=2)


@app.command("resign")
@run
async def resign(model_id: str, actor: str = ActorOpt, json_out: bool = JsonOpt) -> None:
    """Re-sign a model registered before manifests were bound to their registry row (it must pass its old checks)."""
    result = await _with_registry(lambda r: r.resign(model_id, actor=_actor(actor)))
    if json_out:
        emit_json(result)
    elif result["resigned"]:
        console.print(f"[green]re-signed[/] {model_id} with {result['signing_key_version']}")
    else:
        console.print(f"{model_id}: manifest is bound already; nothing to do")


@app.command("validate")
@run
async def validate(
    model_id: str,
    baseline: str = typer.Option(None, "--baseline", help="Baseline model id (never a REJECTED one); default: the "
                                                          "current PRODUCTION model of the name, else the parent or base."),
    json_out: bool = JsonOpt,
) -> None:
    """Run every validation stage against the baseline and store the report (the release path's first step; no
    stage change). Exit code 0 on DEPLOY, 1 on REVIEW or REJECT. Runs the models: minutes on CPU."""
    async with services() as service:
        result = await service.validator.validate_model(model_id, baseline_model_id=baseline)
    if json_out:
        emit_json(result)
    else:
        table(f"validation {result.validation_id} of {model_id} (baseline {result.baseline_model_id or 'none'})",
              ["stage", "outcome", "metrics", "issues"],
              [(name, st.outcome.value,
                ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in st.metrics.items()
                          if not isinstance(v, (dict, list)))[:100],
                "; ".join(st.issues)[:100]) for name, st in result.stages.items()])
        typer.echo(f"recommendation {result.recommendation.value} (verdict {result.verdict.value}, "
                   f"regression {'detected' if result.regression_detected else 'none'})")
    if result.recommendation.value != "DEPLOY":
        raise typer.Exit(code=1)


@app.command("deploy")
@run
async def deploy(model_id: str, json_out: bool = JsonOpt) -> None:
    """Validate, then release: STAGING with a signed model_ready_for_deployment sent through the outbox.

    REJECT moves the model to REJECTED (E7203, exit code 2, failing stages named); REVIEW leaves it for a reviewer
    (exit code 1). Validation runs the models, which takes minutes on CPU.
    """
    service = LearningService.build()
    await service.initialize(start_relay=False)
    try:
        result = await service.deploy_model(model_id)
        model = await service.registry.get_model(model_id)
    finally:
        await service.cleanup()
    if json_out:
        emit_json({"model_id": model_id, "stage": model.stage.value, "validation": result})
    else:
        typer.echo(f"{model.name} {model.version}: {result.recommendation.value} -> {model.stage.value} "
                   f"(validation {result.validation_id})")
    if model.stage.value != "STAGING":
        raise typer.Exit(code=1)


@app.command("promote")
@run
async def promote(
    model_id: str,
    stage: str = typer.Argument(..., help="staging, production, archived or rejected."),
    approve: list[str] = typer.Option([], "--approve", help="Approval given with the request, role=actor (repeatable)."),
    notes: str = typer.Option(None, "--notes"),
    override: bool = typer.Option(False, "--override", help="Bypass approvals and gates (admin key only; audited as "
                                                             "model.gates_overridden). Needs --reason and --admin-key."),
    reason: str = typer.Option(None, "--reason", help="Why the gates are overridden."),
    admin_key: str = typer.Option(None, "--admin-key", envvar="L07_ADMIN_KEY",
                                  help="An admin API key (env L07_ADMIN_KEY); the override is recorded under its id."),
    actor: str = ActorOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Move a model to another stage (contract §4.2 rules and approvals apply, unless an admin overrides them)."""
    if override:
        if not (reason or "").strip():
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "--override needs --reason")
        async with services() as service:
            principal = await AuthService(service.access).authenticate(admin_key)
            if not principal.is_admin:
                raise PermissionDenied(principal, "override the promotion gates")
            model = await service.registry.promote_model(model_id, stage, actor=principal.key_id, notes=notes,
                                                         override_reason=reason)
    else:
        model = await _with_registry(lambda r: r.promote_model(model_id, stage, actor=_actor(actor), approvals=approve,
                                                               notes=notes))
    if json_out:
        emit_json(model)
    else:
        typer.echo(f"{model.name} {model.version} is now {model.stage.value} ({model.serving_state.value})")


@app.command("approve")
@run
async def approve(
    model_id: str,
    role: str = typer.Argument(..., help="reviewer, deployer, ml_manager or admin."),
    to_stage: str = typer.Option(None, "--to", help="Transition approved; default: the one the role approves."),
    validation_id: str = typer.Option(None, "--validation-id", help="The validation report approved (STAGING, "
                                      "PRODUCTION); default: the latest. The approval counts while it stays the latest."),
    actor: str = ActorOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Record an approval for a model's next transition, bound to the validation report it approves."""
    result = await _with_registry(lambda r: r.approve(model_id, role, _actor(actor), to_stage=to_stage,
                                                      validation_id=validation_id))
    emit_json(result) if json_out else typer.echo(f"{result['actor']} approved {model_id} -> {result['to_stage']} as {result['role']}")


@app.command("rollback")
@run
async def rollback(
    name_or_id: str = typer.Argument(..., help="Model name, or the id of one of its versions."),
    to_version: str = typer.Option(None, "--to", help="A specific STANDBY version; default: the previous one."),
    reason: str = typer.Option("manual", "--reason", help="manual, quality_degradation, bug, canary_failure, security."),
    actor: str = ActorOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Make the previous PRODUCTION version ACTIVE again."""
    model = await _with_registry(lambda r: r.rollback(name_or_id, actor=_actor(actor), reason=reason, to_version=to_version))
    emit_json(model) if json_out else typer.echo(f"{model.name} {model.version} ({model.model_id}) is ACTIVE again")


def _when(value: str | None, what: str) -> datetime | None:
    """An RFC 3339 time, or a duration before now (``24h``, ``30m``, ``7d``)."""
    if value is None:
        return None
    try:
        ago = parse_duration(value)
        if isinstance(ago, timedelta):
            return utcnow() - ago
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                       f"{what} {value!r} is neither an RFC 3339 time nor a duration like 24h") from None
    return at if at.tzinfo else at.replace(tzinfo=timezone.utc)


def _width(value: str | None) -> timedelta | None:
    try:
        width = parse_duration(value) if value else None
    except OverflowError:
        width = value
    if value and not isinstance(width, timedelta):
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"--bucket {value!r} is not a duration like 1h")
    return width


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return "" if value is None else fmt.format(value)


@app.command("outcomes")
@run
async def outcomes(
    model_id: str = typer.Argument(..., help="Model id (or an external model's name as the gateway reports it)."),
    since: str = typer.Option(None, "--since", help="Window start: RFC 3339 or a duration before now (24h)."),
    until: str = typer.Option(None, "--until", help="Window end: RFC 3339 or a duration before now."),
    bucket: str = typer.Option(None, "--bucket", help="Also show a time series in buckets of this width (1h, 10m)."),
    json_out: bool = JsonOpt,
) -> None:
    """Scored executions the model served: quality, error rate, per task type, its release watch and incidents."""
    async with services() as service:
        out = await model_outcomes(service.db, model_id, _when(since, "--since"), _when(until, "--until"),
                                   _width(bucket))
    if json_out:
        emit_json(out)
        return
    s = out["summary"]
    table(f"outcomes of {out['model_name'] or ''} {model_id}", ["samples", "quality mean", "error rate", "unscored",
                                                                  "latency ms", "first", "last"],
          [(s.get("samples", 0), _num(s.get("quality_mean")), _num(s.get("error_rate"), "{:.2%}"), out["unscored"],
            _num(s.get("latency_ms_mean"), "{:.0f}"), s.get("first_at") or "", s.get("last_at") or "")])
    table("per task type", ["task type", "samples", "quality mean", "error rate"], [
        (t["task_type"], t["samples"], _num(t["quality_mean"]), _num(t["error_rate"], "{:.2%}")) for t in out["by_task_type"]])
    if out["series"]:
        table("series", ["from", "samples", "quality mean", "error rate"], [
            (b["start"], b["samples"], _num(b["quality_mean"]), _num(b["error_rate"], "{:.2%}")) for b in out["series"]])
    if out["watch"]:
        w = out["watch"]
        typer.echo(f"watch: {w['status']} against {w['baseline_model_id']}, {w['windows_evaluated']} windows judged; "
                   f"{(w['last_result'] or {}).get('state', '')}")
    for i in out["incidents"]:
        typer.echo(f"incident {i['created_at']}: {i['kind']} {i['error_code']}, rolled back to {i['rolled_back_to']}")


@app.command("watch")
@run
async def watch(model_id: str, json_out: bool = JsonOpt) -> None:
    """Judge a released model against its predecessor now; roll it back on a sustained drop (as `l07 run` does)."""
    async with services() as service:
        out = await ReleaseWatch(service.db, service.registry, service.settings).evaluate(model_id)
    if json_out:
        emit_json(out)
        return
    s = out["since_release"]
    typer.echo(f"{out['model_name']} {model_id}: {out['status']} against {out['baseline_model_id']}; "
               f"{out['windows_evaluated']} windows of {out['window_size']} judged, {s.get('samples', 0)} scored outcomes "
               f"since release; {out['state']}")
    for i in out["incidents"]:
        typer.echo(f"incident {i['created_at']}: {i['kind']} {i['error_code']}, rolled back to {i['rolled_back_to']}")


@app.command("lineage")
@run
async def lineage(model_id: str, json_out: bool = JsonOpt) -> None:
    """Print where a model came from: job, dataset version, source events, parent models."""
    tree_data = await _with_registry(lambda r: r.lineage(model_id))
    if json_out:
        emit_json(tree_data)
        return

    def add(node: Tree, lin: Any) -> None:
        if lin.training_job_id:
            job = node.add(f"job {lin.training_job_id}")
            if lin.hyperparameters:
                job.add("hyperparameters: " + ", ".join(f"{k}={v}" for k, v in sorted(lin.hyperparameters.items())[:12]))
        if lin.dataset_id:
            ds = node.add(f"dataset {lin.dataset_id} {lin.dataset_version or ''} (sha256 {lin.dataset_checksum or '?'})")
            shown = lin.source_event_ids[:10]
            ds.add(f"{lin.source_event_count} source events" + (f": {', '.join(shown)}" if shown else "")
                   + (" ..." if lin.source_event_count > len(shown) else ""))
        for parent in lin.parents:
            add(node.add(f"parent [bold]{parent.model_id}[/] base={parent.base_model_name or '?'}"), parent)

    root = Tree(f"[bold]{tree_data.model_id}[/] base={tree_data.base_model_name or '?'}")
    add(root, tree_data)
    console.print(root)


@app.command("compare")
@run
async def compare(model_a: str, model_b: str, json_out: bool = JsonOpt) -> None:
    """Two models' metrics and validation results side by side."""
    result = await _with_registry(lambda r: r.compare_models(model_a, model_b))
    if json_out:
        emit_json(result)
        return
    table("metrics", ["metric", "a", "b", "b - a"], [(m["metric"], m["a"], m["b"], m["delta"]) for m in result["metrics"]])
    table("validation stages", ["stage", "a", "b"], [(s["stage"], s["a"], s["b"]) for s in result["validation_stages"]])


@app.command("register-base")
@run
async def register_base(
    source: str = typer.Argument(None, help="Local Hugging Face folder or hub id; default: the bundled SmolLM2."),
    name: str = typer.Option(None, "--name", help="Model name; default: folder name or hub id."),
    version: str = typer.Option(None, "--version"),
    actor: str = ActorOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Copy a base model into the registry (signed, stage DEVELOPMENT)."""
    if source is None:
        model = await _with_registry(lambda r: r.ensure_base_model())
    else:
        model = await _with_registry(lambda r: r.register_base(source, name=name, version=version, actor=_actor(actor)))
    emit_json(model) if json_out else typer.echo(f"{model.name} {model.version}: {model.model_id} ({model.artifact_path})")


@app.command("export")
@run
async def export(
    model_id: str,
    fmt: str = typer.Option("hf", "--format", help="hf (merged safetensors), gguf (plus model.gguf), ollama (plus a Modelfile)."),
    quant: str = typer.Option("q8_0", "--quant", help="GGUF weights: q8_0 or f16."),
    actor: str = ActorOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Merge an adapter into its base and export it (registered as its own signed model) for llama.cpp or Ollama."""
    result = await _with_registry(lambda r: export_model(r, model_id, fmt, quant, actor=_actor(actor)))
    if json_out:
        emit_json(result)
        return
    console.print(f"{'reused' if result['reused'] else 'registered'} {result['name']} {result['version']} "
                  f"({result['model_id']}, {result['model_type']})")
    table("exported artifacts", ["format", "uri", "sha256"],
          [(a["format"], a["uri"], a["sha256"]) for a in result["artifacts"]])
