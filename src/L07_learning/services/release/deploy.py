"""The one release path: validate -> stage -> signed ``model_ready_for_deployment`` (contract §2.3, §4.2).

``LearningService.deploy_model``, ``l07 models deploy``, the loop and ``POST /api/v1/models/{id}/deploy`` all call
``deploy_model`` below, so a release means the same thing whichever door it comes through. REST runs it (and
validations) as ``Operations``: stored in ``l07_operations``, answered 202, polled until they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import timedelta
from collections.abc import Awaitable, Callable
from typing import Any

from ...events.outbox_relay import OutboxRelay
from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelStage, ModelType
from ...models.validation import Recommendation, ValidationResult
from ...store.db import Database
from ...store.repositories.operations import LIVE, QUEUED, RUNNING, Operation, OperationRepository
from ..model_registry import ModelRegistry
from ..model_validator import ModelValidator
from .export import exported_artifacts
from .gateway import CANARY_CONFIG, register_with_gateway

log = logging.getLogger(__name__)

# The stage transitions a deployment makes are the validator's decision, whoever asked for the deployment; the
# requester is recorded in the audit of the request itself.
VALIDATOR_ACTOR = "l07-validator"


async def deploy_model(model_id: str, *, validator: ModelValidator, registry: ModelRegistry,
                       relay: OutboxRelay | None = None,
                       on_start: Callable[[], Awaitable[None]] | None = None) -> ValidationResult:
    """Validate, then DEVELOPMENT -> STAGING on DEPLOY with ``model_ready_for_deployment`` in the same transaction;
    REJECT moves the model to REJECTED (with ``model_deployment_failed``); REVIEW leaves it for a reviewer.

    Args:
        model_id: Registered model to release.
        validator: Runs every validation stage and stores the report.
        registry: Moves the model between stages and writes the outbox rows with each move.
        relay: When given, the outbox is flushed at once so the release event leaves before this returns.
        on_start: Awaited when the validation leaves the queue of ``max_concurrent_validations``.

    Returns:
        The validation result.

    Raises:
        L07Error: E7203 when validation rejects the model (failing stages in ``details``).
    """
    result = await validator.validate_model(model_id, on_start=on_start)
    model = await registry.get_model(model_id)
    if result.recommendation is Recommendation.REJECT:
        failing = [k for k, v in result.stages.items() if v.outcome.value == "FAIL"]
        await registry.promote_model(model_id, ModelStage.REJECTED.value, actor=VALIDATOR_ACTOR,
                                     events=[("learning.model_deployment_failed", {
                                         "model_id": model_id, "version": model.version,
                                         "stage": model.stage.value,
                                         "error_code": L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED.value,
                                         "error_message": f"validation rejected the model: {', '.join(failing)}",
                                         "rolled_back_to": None, "failed_at": utcnow().isoformat()})])
        if relay is not None:
            await relay.run_once()  # the failure event leaves before the caller hears of it, like a release
        raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                       f"validation rejected model {model_id}; failing stages: {', '.join(failing)}",
                       model_id=model_id, failing_stages=failing, validation_id=result.validation_id)
    if result.recommendation is Recommendation.REVIEW:
        log.warning("model needs a reviewer before STAGING", extra={"model_id": model_id})
        return result
    release = await release_event(registry, model_id, result)
    await registry.promote_model(model_id, ModelStage.STAGING.value, actor=VALIDATOR_ACTOR,
                                 events=[("learning.model_ready_for_deployment", release)])
    staged = await registry.get_model(model_id)
    register_with_gateway(staged, int(staged.config.get("max_seq_length", 2048)))
    if relay is not None:
        await relay.run_once()
    return result


async def release_event(registry: ModelRegistry, model_id: str, result: ValidationResult) -> dict[str, Any]:
    """The ``model_ready_for_deployment`` payload (contract §2.3), read from the verified artifact."""
    model = await registry.get_model(model_id, verify=True)
    base_name = model.base_model_name
    if model.model_type is ModelType.LORA_ADAPTER and model.parent_model_id and not base_name:
        base_name = (await registry.get_model(model.parent_model_id)).name
    bench = result.stages.get("benchmark")
    lat = result.stages.get("latency")
    return {
        "model_id": model.model_id,
        "model_type": model.model_type.value,
        "base_model": base_name,
        "artifact_url": _as_url(model.artifact_path),
        "artifact_checksum": model.checksum,
        "artifact_signature": model.signature,
        "signing_key_version": model.signing_key_version,
        "validation_status": "APPROVED" if result.passed else "CONDITIONAL",
        "validation_id": result.validation_id,
        "canary_config": dict(CANARY_CONFIG),
        "performance_metrics": {
            "accuracy": bench.metrics.get("candidate_accuracy") if bench else None,
            "latency_p99_ms": (lat.metrics.get("candidate") or {}).get("p99_ms") if lat else None,
            "improvement_vs_baseline": bench.metrics.get("relative_accuracy_change") if bench else None,
        },
        "training_lineage": {
            "training_job_id": model.training_job_id, "dataset_id": model.dataset_id,
            "dataset_version": model.dataset_version, "base_model": base_name,
            "parent_model_id": model.parent_model_id,
        },
        # Runtimes outside L07 (llama.cpp, Ollama): every export of this model, each file with its URI and sha256.
        "exported_artifacts": await exported_artifacts(registry, model_id),
    }


def _as_url(path: str) -> str:
    return path if "://" in path else f"file://{path}"


# --- background operations: what REST answers 202 for -----------------------------------------------------------

# How often a running operation proves its process alive, and after how long without proof it is declared dead.
HEARTBEAT_S = 10.0
STALE_AFTER_S = 60.0
INTERRUPTED = ("interrupted: the process running this {kind} stopped (restart or crash) before it finished; "
               "start it again")
OPERATION_KINDS = ("validate", "deploy")


def _owner() -> str:
    """This process: host, pid and a random token (a restarted container often gets the same pid back)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_dead(owner: str, me: str) -> bool:
    """True when ``owner`` is a process of this host that is gone; False when it may still run (or is elsewhere)."""
    host, _, rest = owner.partition(":")
    pid_text, _, _token = rest.partition(":")
    my_host, _, my_rest = me.partition(":")
    if host != my_host or not pid_text.isdigit():
        return False
    if int(pid_text) == int(my_rest.partition(":")[0]):
        return owner != me
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Operations:
    """Runs validations and deployments as background tasks of this process, their state in ``l07_operations``.

    Both kinds validate, so both wait for one of the validator's ``max_concurrent_validations`` slots: an operation
    is stored QUEUED when none is free and turns RUNNING when it gets one. ``validate`` ends COMPLETED with the
    stored validation report as ``result`` (or FAILED); ``deploy`` ends STAGED, REVIEW, REJECTED (E7203, the model
    is REJECTED) or FAILED, with ``validation_id``, ``recommendation`` and ``stage`` in ``result``. A running operation refreshes its heartbeat; one whose process died is marked FAILED
    with an "interrupted" error by the first process that notices: at once when its owner was a process of this host
    that is gone, else once its heartbeat is ``STALE_AFTER_S`` old. An orderly shutdown marks its own FAILED at once.

    Args:
        db: Where operations are stored.
        validator: Runs ``validate_model``.
        registry: Passed to ``deploy_model``.
    """

    def __init__(self, db: Database, validator: ModelValidator, registry: ModelRegistry) -> None:
        self.db = db
        self.validator = validator
        self.registry = registry
        self.owner = _owner()
        self._tasks: dict[str, asyncio.Task] = {}
        self._recovered = False

    async def start(self, kind: str, model_id: str, requested_by: str,
                    params: dict[str, Any] | None = None) -> Operation:
        """Check the model exists (E7250 otherwise), store the operation (QUEUED when every validation slot is taken,
        else RUNNING) and start it in the background."""
        if kind not in OPERATION_KINDS:
            raise ValueError(f"unknown operation kind {kind!r}")
        await self.recover()
        await self.registry.get_model(model_id)
        now = utcnow()
        status = QUEUED if self.validator.saturated else RUNNING
        op = Operation(operation_id=str(uuid.uuid4()), kind=kind, model_id=model_id, status=status,
                       requested_by=requested_by, owner=self.owner, created_at=now, heartbeat_at=now,
                       params=dict(params or {}))
        async with self.db.session() as session:
            OperationRepository(session).add(op)
        task = asyncio.create_task(self._run(op))
        self._tasks[op.operation_id] = task
        task.add_done_callback(lambda _t, oid=op.operation_id: self._tasks.pop(oid, None))
        await asyncio.sleep(0)  # let it take a free validation slot now, so the next start sees the slot taken
        return op

    async def get(self, operation_id: str) -> Operation | None:
        """The stored operation; a live (QUEUED or RUNNING) one whose process is gone is marked FAILED first."""
        await self.recover()
        async with self.db.session() as session:
            repo = OperationRepository(session)
            op = await repo.get(operation_id)
            if op is None or op.status not in LIVE or op.operation_id in self._tasks:
                return op
            stale = op.heartbeat_at < utcnow() - timedelta(seconds=STALE_AFTER_S)
            if op.owner == self.owner or stale or _owner_dead(op.owner, self.owner):
                await repo.finish(op.operation_id, "FAILED", utcnow(), error_code=L07ErrorCode.UNHANDLED_EXCEPTION.value,
                                  error_message=INTERRUPTED.format(kind=op.kind))
                op = await repo.get(operation_id)
        return op

    async def recover(self) -> list[str]:
        """Once per process: mark FAILED the operations left RUNNING by processes that are gone (this host's dead
        pids, or a heartbeat older than ``STALE_AFTER_S``). Returns their ids."""
        if self._recovered:
            return []
        self._recovered = True
        now = utcnow()
        async with self.db.session() as session:
            repo = OperationRepository(session)
            dead = {op.owner for op in await repo.list(status=LIVE, limit=1000) if _owner_dead(op.owner, self.owner)}
            failed = await repo.fail_stale(now - timedelta(seconds=STALE_AFTER_S), now,
                                           L07ErrorCode.UNHANDLED_EXCEPTION.value, INTERRUPTED.format(kind="operation"))
            for owner in dead:
                failed += await repo.fail_stale(now, now, L07ErrorCode.UNHANDLED_EXCEPTION.value,
                                                INTERRUPTED.format(kind="operation"), owner=owner)
        if failed:
            log.warning("operations interrupted by a restart marked FAILED", extra={"operation_ids": failed})
        return failed

    async def wait(self) -> None:
        """Wait for every operation this process runs (tests and orderly shutdown)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        """Cancel running operations; each is marked FAILED (interrupted). A cancelled deployment made no stage
        change unless it had reached its promotion."""
        for task in list(self._tasks.values()):
            task.cancel()
        await self.wait()

    async def _run(self, op: Operation) -> None:
        beat = asyncio.create_task(self._heartbeat(op.operation_id))
        result: dict[str, Any] = {}
        code = message = None
        try:
            status, result = await self._execute(op)
        except asyncio.CancelledError:
            status, code, message = "FAILED", L07ErrorCode.UNHANDLED_EXCEPTION.value, INTERRUPTED.format(kind=op.kind)
        except L07Error as exc:
            rejected = op.kind == "deploy" and exc.code is L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED
            status, code, message = ("REJECTED" if rejected else "FAILED"), exc.code.value, exc.message
            result = {"validation_id": exc.details.get("validation_id"), "recommendation": "REJECT"} if rejected else {}
        except Exception as exc:  # noqa: BLE001 - a background run has no caller to raise to; the poller sees it
            log.exception("%s of %s failed", op.kind, op.model_id)
            status, code = "FAILED", L07ErrorCode.UNHANDLED_EXCEPTION.value
            message = f"{exc.__class__.__name__}: {exc}"
        finally:
            beat.cancel()
        async with self.db.session() as session:
            await OperationRepository(session).finish(op.operation_id, status, utcnow(), result=result,
                                                      error_code=code, error_message=message)

    async def _execute(self, op: Operation) -> tuple[str, dict[str, Any]]:
        async def running() -> None:
            async with self.db.session() as session:
                await OperationRepository(session).mark_running(op.operation_id, utcnow())

        if op.kind == "validate":
            report = await self.validator.validate_model(op.model_id, op.params.get("baseline_model_id"),
                                                         on_start=running)
            return "COMPLETED", report.model_dump(mode="json")
        report = await deploy_model(op.model_id, validator=self.validator, registry=self.registry, on_start=running)
        stage = (await self.registry.get_model(op.model_id)).stage.value
        status = "STAGED" if report.recommendation is Recommendation.DEPLOY else "REVIEW"
        return status, {"validation_id": report.validation_id, "recommendation": report.recommendation.value,
                        "stage": stage}

    async def _heartbeat(self, operation_id: str) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            with contextlib.suppress(Exception):
                async with self.db.session() as session:
                    await OperationRepository(session).heartbeat([operation_id], utcnow())
