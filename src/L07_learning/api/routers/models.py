"""The model registry over HTTP: list, read, approve, promote, roll back, validate, deploy (contract §4.2, §7.1,
§7.4, §9 "Release path").

Every rule about stages and approvals lives in ``ModelRegistry``; this router checks the caller's role, records
approvals under the caller's key id, and passes the key id as ``actor`` so stage history and audit name the key.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, Field

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ModelStage, ModelType
from ...models.validation import ValidationResult
from ..auth import ApprovalCapacity, Permission, PermissionDenied
from ...services.release.deploy import Operation
from ...services.release.export import export_model
from ..deps import CanDeploy, CanGetModel, CanListModels, CanRollback, CanValidate, ContextDep, PrincipalDep
from ..errors import error_responses
from ..types import UtcDateTime

router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=error_responses(400, 401, 403, 500))

ModelId = Annotated[str, Path(min_length=1, max_length=128, description="Model id")]

# Permission needed to move a model to each stage (contract §7.4 RBAC).
STAGE_PERMISSION: dict[ModelStage, Permission] = {
    ModelStage.STAGING: Permission.MODEL_DEPLOY_TO_STAGING,
    ModelStage.PRODUCTION: Permission.MODEL_DEPLOY_TO_PRODUCTION,
    ModelStage.ARCHIVED: Permission.MODEL_ARCHIVE,
    ModelStage.REJECTED: Permission.MODEL_APPROVE_FOR_STAGING,
    ModelStage.DEVELOPMENT: Permission.MODEL_DEPLOY_TO_STAGING,
}

# Which capacities approve a transition to each stage (the registry enforces the full rule).
STAGE_CAPACITIES: dict[ModelStage, tuple[ApprovalCapacity, ...]] = {
    ModelStage.STAGING: (ApprovalCapacity.REVIEWER,),
    ModelStage.PRODUCTION: (ApprovalCapacity.DEPLOYER, ApprovalCapacity.ML_MANAGER),
    ModelStage.ARCHIVED: (ApprovalCapacity.ADMIN,),
    ModelStage.REJECTED: (ApprovalCapacity.REVIEWER, ApprovalCapacity.ADMIN),
}


class TrainingInfo(BaseModel):
    training_job_id: str | None
    dataset_id: str | None
    dataset_version: str | None
    parent_model_id: str | None
    base_model: str | None
    hyperparameters: dict[str, Any]


class PerformanceMetrics(BaseModel):
    accuracy: float | None = Field(description="Benchmark accuracy of the latest validation (0-1)")
    latency_p99_ms: float | None
    improvement_vs_baseline: float | None = Field(description="Relative accuracy change against the baseline")


class ArtifactInfo(BaseModel):
    format: str
    size_bytes: int
    storage_location: str
    checksum_sha256: str
    signature: str
    signing_key_version: str | None


class StageChange(BaseModel):
    stage: str
    from_stage: str | None
    at: UtcDateTime
    by: str
    notes: str | None
    approvals: list[dict[str, Any]]


class ModelPublic(BaseModel):
    """A registered model (contract §7.1 ``GET /api/v1/models/{model_id}``)."""

    model_id: str
    model_name: str
    version: str
    model_type: str
    stage: str
    serving_state: str
    validation_status: str
    created_at: UtcDateTime
    deployed_at: UtcDateTime | None
    training_info: TrainingInfo
    performance_metrics: PerformanceMetrics
    artifact: ArtifactInfo
    stage_history: list[StageChange] = Field(default_factory=list)


class ModelList(BaseModel):
    data: list[ModelPublic]
    count: int


class PromoteRequest(BaseModel):
    stage: str = Field(min_length=1, max_length=32, description="STAGING, PRODUCTION, ARCHIVED or REJECTED (any case)")
    notes: str | None = Field(default=None, max_length=2000)
    override: bool = Field(default=False, description="Admin only: bypass the approvals and gates (audited as "
                                                      "model.gates_overridden with the reason)")
    reason: str | None = Field(default=None, max_length=2000, description="Why the gates are overridden (required "
                                                                        "with override)")


class ApproveRequest(BaseModel):
    stage: str | None = Field(
        default=None, min_length=1, max_length=32, description="Transition approved; default: the one the capacity approves"
    )
    capacity: Literal["reviewer", "deployer", "ml_manager", "admin"] | None = Field(
        default=None, description="Capacity of this approval; needed only when the key holds several for the stage"
    )
    validation_id: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="The validation report approved (STAGING, PRODUCTION); default: the latest. The approval counts "
                    "only while that report is the model's latest",
    )


class Approval(BaseModel):
    model_id: str
    role: str
    actor: str
    to_stage: str
    validation_id: str | None = Field(description="The validation report this approval was given for")


class RollbackRequest(BaseModel):
    reason: Literal["manual", "quality_degradation", "bug", "canary_failure", "security"] = "manual"
    to_version: str | None = Field(default=None, min_length=5, max_length=64, description="A STANDBY version")


class ValidateRequest(BaseModel):
    baseline_model_id: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="Admin only: the model to compare against (never a REJECTED one). Default, and for every other "
                    "role: the ACTIVE PRODUCTION version of the name, else the parent or base model",
    )


class ValidationReport(BaseModel):
    """A stored validation report (contract §3.8): the verdict and every stage's outcome, metrics and issues."""

    validation_id: str
    model_id: str
    baseline_model_id: str | None
    passed: bool
    recommendation: str = Field(examples=["DEPLOY", "REVIEW", "REJECT"])
    verdict: str = Field(examples=["APPROVED", "CONDITIONAL", "REJECTED"])
    regression_detected: bool
    stages: dict[str, dict[str, Any]]
    started_at: UtcDateTime
    completed_at: UtcDateTime | None
    report_url: str | None

    @classmethod
    def of(cls, result: ValidationResult) -> "ValidationReport":
        return cls.model_validate(result.model_dump(mode="json"))


class OperationStatus(BaseModel):
    """A validation or deployment run in the background (``l07_operations``); poll ``status_url`` until it ends."""

    operation_id: str
    kind: str = Field(examples=["validate", "deploy"])
    model_id: str
    status: str = Field(examples=["RUNNING", "COMPLETED", "STAGED", "REVIEW", "REJECTED", "FAILED"])
    requested_by: str
    started_at: UtcDateTime
    completed_at: UtcDateTime | None
    result: dict[str, Any] = Field(description="validate: the stored validation report; deploy: validation_id, "
                                               "recommendation, stage")
    error: dict[str, Any] | None = Field(description="``{code, message}`` when REJECTED or FAILED")
    status_url: str

    @classmethod
    def of(cls, op: Operation, request: Request) -> "OperationStatus":
        url = request.url_for("models.operation", model_id=op.model_id, operation_id=op.operation_id)
        return cls(operation_id=op.operation_id, kind=op.kind, model_id=op.model_id, status=op.status,
                   requested_by=op.requested_by, started_at=op.created_at, completed_at=op.finished_at,
                   result=op.result, error=op.error, status_url=str(url.path))


class DeploymentStatus(BaseModel):
    """One deployment (validate -> STAGING -> release event), an operation of kind ``deploy``: ``deployment_id`` is
    its ``operation_id``, and ``status_url`` its deployment view."""

    deployment_id: str
    operation_id: str
    model_id: str
    status: str = Field(examples=["RUNNING", "STAGED", "REVIEW", "REJECTED", "FAILED"])
    requested_by: str
    started_at: UtcDateTime
    completed_at: UtcDateTime | None
    validation_id: str | None
    recommendation: str | None = Field(examples=["DEPLOY", "REVIEW", "REJECT"])
    error: dict[str, Any] | None = Field(description="``{code, message}`` when REJECTED or FAILED")
    status_url: str

    @classmethod
    def of(cls, op: Operation, request: Request) -> "DeploymentStatus":
        url = request.url_for("models.deployment", model_id=op.model_id, deployment_id=op.operation_id)
        return cls(
            deployment_id=op.operation_id, operation_id=op.operation_id, model_id=op.model_id, status=op.status,
            requested_by=op.requested_by, started_at=op.created_at, completed_at=op.finished_at,
            validation_id=op.result.get("validation_id"), recommendation=op.result.get("recommendation"),
            error=op.error, status_url=str(url.path),
        )


class ValidationList(BaseModel):
    data: list[ValidationReport]
    count: int


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def to_public(model: ModelArtifact, with_history: bool = False) -> ModelPublic:
    """A registry model in the API's shape."""
    metrics = model.metrics or {}
    bench = metrics.get("benchmark") if isinstance(metrics.get("benchmark"), dict) else {}
    latency = metrics.get("latency") if isinstance(metrics.get("latency"), dict) else {}
    cand_latency = latency.get("candidate") if isinstance(latency.get("candidate"), dict) else {}
    return ModelPublic(
        model_id=model.model_id,
        model_name=model.name,
        version=model.version,
        model_type=model.model_type.value,
        stage=model.stage.value,
        serving_state=model.serving_state.value,
        validation_status=model.validation_status,
        created_at=model.created_at,
        deployed_at=model.deployed_at,
        training_info=TrainingInfo(
            training_job_id=model.training_job_id,
            dataset_id=model.dataset_id,
            dataset_version=model.dataset_version,
            parent_model_id=model.parent_model_id,
            base_model=model.base_model_name,
            hyperparameters=model.config or {},
        ),
        performance_metrics=PerformanceMetrics(
            accuracy=_num(bench.get("candidate_accuracy", metrics.get("accuracy"))),
            latency_p99_ms=_num(cand_latency.get("p99_ms", metrics.get("latency_p99_ms"))),
            improvement_vs_baseline=_num(bench.get("relative_accuracy_change", metrics.get("improvement_vs_baseline"))),
        ),
        artifact=ArtifactInfo(
            format=model.artifact_format,
            size_bytes=model.artifact_size_bytes,
            storage_location=model.artifact_path,
            checksum_sha256=model.checksum,
            signature=model.signature,
            signing_key_version=model.signing_key_version,
        ),
        stage_history=[
            StageChange(
                stage=t.stage.value, from_stage=t.from_stage.value if t.from_stage else None, at=t.transitioned_at,
                by=t.transitioned_by, notes=t.notes, approvals=t.approvals,
            )
            for t in model.stage_history
        ]
        if with_history
        else [],
    )


def _enum_value(enum: type[ModelStage] | type[ModelType], value: str, what: str) -> Any:
    try:
        return enum(value.strip().upper())
    except ValueError:
        raise L07Error(
            L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
            f"unknown {what} {value!r}; allowed: {', '.join(m.value for m in enum)}",
            allowed=[m.value for m in enum],
        ) from None


@router.get("", name="models.list", response_model=ModelList)
async def list_models(
    _: CanListModels,
    ctx: ContextDep,
    stage: Annotated[str | None, Query(max_length=32, description="DEVELOPMENT, STAGING, PRODUCTION, ARCHIVED, REJECTED; any case")] = None,
    model_type: Annotated[str | None, Query(max_length=32, description="BASE, FINE_TUNED, LORA_ADAPTER, DISTILLED, REWARD_MODEL")] = None,
    name: Annotated[str | None, Query(max_length=256)] = None,
) -> ModelList:
    """Registered models, newest first, filtered by stage, type and name."""
    stage_v = _enum_value(ModelStage, stage, "stage") if stage is not None else None
    type_v = _enum_value(ModelType, model_type, "model_type") if model_type is not None else None
    models = await ctx.registry.list_models(model_type=type_v, status=stage_v, name=name)
    return ModelList(data=[to_public(m) for m in models], count=len(models))


@router.get("/{model_id}", name="models.get", response_model=ModelPublic, responses=error_responses(404))
async def get_model(model_id: ModelId, _: CanGetModel, ctx: ContextDep) -> ModelPublic:
    """One model with its stage history."""
    return to_public(await ctx.registry.get_model(model_id), with_history=True)


@router.get(
    "/{model_id}/validations", name="models.validations", response_model=ValidationList, responses=error_responses(404)
)
async def list_validations(model_id: ModelId, _: CanGetModel, ctx: ContextDep) -> ValidationList:
    """Every stored validation report of a model, oldest first."""
    results = await ctx.registry.get_validations(model_id)
    return ValidationList(data=[ValidationReport.of(r) for r in results], count=len(results))


def _capacity_for(principal: Any, target: ModelStage | None, asked: str | None) -> ApprovalCapacity:
    held = principal.capacities
    if asked is not None:
        capacity = ApprovalCapacity(asked)
        if capacity not in held:
            raise PermissionDenied(principal, f"approve as {capacity.value}")
        return capacity
    wanted = [c for c in STAGE_CAPACITIES.get(target, ()) if c in held] if target else sorted(held, key=lambda c: c.value)
    if len(wanted) == 1:
        return wanted[0]
    if not wanted:
        raise PermissionDenied(principal, f"approve {target.value if target else 'models'}")
    raise L07Error(
        L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
        f"this key may approve as {', '.join(c.value for c in wanted)}; say which with 'capacity'",
        capacities=[c.value for c in wanted],
    )


@router.post(
    "/{model_id}/approve",
    name="models.approve",
    response_model=Approval,
    status_code=201,
    responses=error_responses(404, 409),
)
async def approve(
    model_id: ModelId, request: Request, principal: PrincipalDep, ctx: ContextDep, body: ApproveRequest
) -> Approval:
    """Record this key's approval of the model's next transition.

    A reviewer approves REVIEW -> STAGING; STAGING -> PRODUCTION needs a deployer approval and an ml_manager
    approval (a key with the ``ml_manager`` attribute), from two different keys; an admin approves a manual archive.
    """
    target = _enum_value(ModelStage, body.stage, "stage") if body.stage is not None else None
    capacity = _capacity_for(principal, target, body.capacity)
    request.state.audit_details = {"capacity": capacity.value, "to_stage": target.value if target else None}
    result = await ctx.registry.approve(model_id, capacity.value, principal.key_id, to_stage=target,
                                        validation_id=body.validation_id)
    request.state.audit_details["validation_id"] = result.get("validation_id")
    return Approval.model_validate(result)


@router.post("/{model_id}/promote", name="models.promote", response_model=ModelPublic, responses=error_responses(404, 409))
async def promote(
    model_id: ModelId, request: Request, principal: PrincipalDep, ctx: ContextDep, body: PromoteRequest
) -> ModelPublic:
    """Move the model to ``stage`` under the stage table and approval rules (E7251, E7252, E7203, E7204 otherwise;
    a refused promotion changes nothing). ``override`` (admin keys only, with a ``reason``) bypasses approvals and
    gates, never the stage table or the artifact's verification."""
    target = _enum_value(ModelStage, body.stage, "stage")
    principal.require(STAGE_PERMISSION[target])
    if body.override and not principal.is_admin:
        raise PermissionDenied(principal, "override the promotion gates")
    if body.override and not (body.reason or "").strip():
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "an override needs a reason")
    request.state.audit_details = {"to_stage": target.value, "override": body.override}
    model = await ctx.registry.promote_model(model_id, target, actor=principal.key_id, notes=body.notes,
                                             override_reason=body.reason if body.override else None)
    return to_public(model, with_history=True)


@router.post("/{model_id}/rollback", name="models.rollback", response_model=ModelPublic, responses=error_responses(404, 409))
async def rollback(
    model_id: ModelId,
    request: Request,
    principal: CanRollback,
    ctx: ContextDep,
    body: Annotated[RollbackRequest | None, Body()] = None,
) -> ModelPublic:
    """Make the previous PRODUCTION version of this model's name ACTIVE again (the current one goes STANDBY).

    Returns the model that is ACTIVE afterwards.
    """
    body = body or RollbackRequest()
    await ctx.registry.get_model(model_id)  # 404 for an unknown id rather than a name lookup
    request.state.audit_details = {"reason": body.reason, "to_version": body.to_version}
    active = await ctx.registry.rollback(model_id, actor=principal.key_id, reason=body.reason, to_version=body.to_version)
    request.state.audit_resource_id = active.model_id
    return to_public(active, with_history=True)


@router.post(
    "/{model_id}/validate",
    name="models.validate",
    status_code=202,
    response_model=OperationStatus,
    responses=error_responses(404),
)
async def validate(
    model_id: ModelId,
    request: Request,
    principal: CanValidate,
    ctx: ContextDep,
    body: Annotated[ValidateRequest | None, Body()] = None,
) -> OperationStatus:
    """Start every validation stage in the background and store the report (it runs the models: seconds to
    minutes), so the answer is 202 with ``status_url``; the finished operation holds the report in ``result``.

    The server picks the baseline. Only an admin may name one (403 E7904 otherwise), and never a REJECTED model
    (400 E7110): the baseline decides whether the candidate counts as a regression.
    """
    baseline = body.baseline_model_id if body else None
    if baseline is not None:
        if not principal.is_admin:
            raise PermissionDenied(principal, "choose the validation baseline")
        chosen = await ctx.registry.get_model(baseline)
        if chosen.stage is ModelStage.REJECTED or chosen.model_id == model_id:
            raise L07Error(
                L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                f"model {baseline} cannot be a baseline: it is "
                + ("the candidate itself" if chosen.model_id == model_id else "REJECTED, so any candidate would beat it"),
                baseline_model_id=baseline, stage=chosen.stage.value,
            )
    op = await ctx.operations.start("validate", model_id, principal.key_id, {"baseline_model_id": baseline})
    request.state.audit_details = {"baseline_model_id": baseline, "operation_id": op.operation_id}
    return OperationStatus.of(op, request)


@router.post(
    "/{model_id}/deploy",
    name="models.deploy",
    status_code=202,
    response_model=DeploymentStatus,
    responses=error_responses(404),
)
async def deploy(model_id: ModelId, request: Request, principal: CanDeploy, ctx: ContextDep) -> DeploymentStatus:
    """Start the release path in the background: validate, then STAGING with a signed
    ``model_ready_for_deployment`` in the outbox (REJECT: REJECTED; REVIEW: left for a reviewer).

    Validation runs the models (minutes on CPU), so the answer is 202 with ``status_url`` to poll.
    """
    op = await ctx.operations.start("deploy", model_id, principal.key_id)
    request.state.audit_details = {"deployment_id": op.operation_id}
    return DeploymentStatus.of(op, request)


OperationIdPath = Annotated[str, Path(min_length=1, max_length=64)]


async def _operation(ctx: Any, model_id: str, operation_id: str, kind: str | None) -> Operation:
    op = await ctx.operations.get(operation_id)
    if op is None or op.model_id != model_id or (kind is not None and op.kind != kind):
        raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"no {kind or 'operation'} {operation_id} of model {model_id}",
                       model_id=model_id, operation_id=operation_id)
    return op


@router.get(
    "/{model_id}/deployments/{deployment_id}",
    name="models.deployment",
    response_model=DeploymentStatus,
    responses=error_responses(404),
)
async def get_deployment(
    model_id: ModelId, deployment_id: OperationIdPath, request: Request, _: CanGetModel, ctx: ContextDep
) -> DeploymentStatus:
    """A deployment; one interrupted by a restart of the process running it reads FAILED (interrupted)."""
    return DeploymentStatus.of(await _operation(ctx, model_id, deployment_id, "deploy"), request)


@router.get(
    "/{model_id}/operations/{operation_id}",
    name="models.operation",
    response_model=OperationStatus,
    responses=error_responses(404),
)
async def get_operation(
    model_id: ModelId, operation_id: OperationIdPath, request: Request, _: CanGetModel, ctx: ContextDep
) -> OperationStatus:
    """A validation or deployment; one interrupted by a restart of the process running it reads FAILED."""
    return OperationStatus.of(await _operation(ctx, model_id, operation_id, None), request)


class ExportRequest(BaseModel):
    format: Literal["hf", "gguf", "ollama"] = Field("hf", description="hf: merged safetensors folder; gguf: plus "
                                                    "model.gguf; ollama: plus a Modelfile")
    quant: Literal["q8_0", "f16"] = Field("q8_0", description="GGUF weight type (gguf and ollama)")


class ExportedArtifact(BaseModel):
    model_id: str
    format: str
    uri: str
    sha256: str
    size_bytes: int
    quant: str | None = None


class ExportResult(BaseModel):
    model_id: str = Field(description="The registered export (FINE_TUNED for a merged adapter)")
    source_model_id: str
    name: str
    version: str
    model_type: str
    format: str
    quant: str | None
    reused: bool = Field(description="True when an earlier export already held this format")
    artifacts: list[ExportedArtifact]


@router.post(
    "/{model_id}/export",
    name="models.export",
    status_code=201,
    response_model=ExportResult,
    responses=error_responses(404, 409),
)
async def export(model_id: ModelId, principal: CanDeploy, ctx: ContextDep,
                 body: Annotated[ExportRequest | None, Body()] = None) -> ExportResult:
    """Merge and export a model for llama.cpp / Ollama / Hugging Face loaders (deployer or admin); the export is
    registered as its own signed model with lineage to this one. Runs in the request (the merge and GGUF writing
    take seconds for SmolLM2-135M)."""
    body = body or ExportRequest()
    return ExportResult(**await export_model(ctx.registry, model_id, body.format, body.quant, actor=principal.key_id))
