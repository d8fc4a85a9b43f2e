"""Model registry data access: models, stage history, approvals, validation results, and read-only lineage lookups.

Rows never leave this module: callers get ``ModelArtifact``, ``StageTransition``, ``ValidationResult`` or plain dicts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ...models.model_artifact import ModelArtifact, ModelStage, ModelType, ServingState, StageTransition
from ...models.validation import ValidationResult
from ..tables import (
    SqlDatasetVersion,
    SqlModel,
    SqlModelApproval,
    SqlModelStageHistory,
    SqlTrainingJob,
    SqlValidationResult,
)

# ModelArtifact fields without their own column live in the row's ``data`` JSON.
_DATA_FIELDS = (
    "artifact_format", "artifact_size_bytes", "signed", "base_model_name", "base_model_version", "config",
    "validation_report_url", "created_by", "deployed_at", "tags", "experimental", "notes",
)


class ModelRepository:
    """Data access for the model registry tables, inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # --- models ---------------------------------------------------------------------------------------------------

    def add(self, artifact: ModelArtifact, manifest: dict[str, Any]) -> None:
        """Insert a model row; the manifest is kept with it so verification never trusts the store alone."""
        dumped = artifact.model_dump(mode="json")
        data = {k: dumped[k] for k in _DATA_FIELDS}
        data["manifest"] = manifest
        self.session.add(SqlModel(
            model_id=artifact.model_id, name=artifact.name, version=artifact.version,
            model_type=artifact.model_type.value, stage=artifact.stage.value, serving_state=artifact.serving_state.value,
            artifact_path=artifact.artifact_path, checksum=artifact.checksum, signature=artifact.signature,
            signing_key_version=artifact.signing_key_version, parent_model_id=artifact.parent_model_id,
            training_job_id=artifact.training_job_id, dataset_id=artifact.dataset_id,
            dataset_version=artifact.dataset_version, validation_status=artifact.validation_status,
            metrics=artifact.metrics, data=data, created_at=artifact.created_at, updated_at=artifact.created_at,
        ))

    async def _row(self, model_id: str, for_update: bool = False) -> SqlModel | None:
        stmt = select(SqlModel).where(SqlModel.model_id == model_id)
        if for_update:
            stmt = stmt.with_for_update()
        return await self.session.scalar(stmt)

    async def get(self, model_id: str, for_update: bool = False, with_history: bool = True) -> ModelArtifact | None:
        """One model (with its stage history), or None. ``for_update`` locks the row on PostgreSQL."""
        row = await self._row(model_id, for_update)
        if row is None:
            return None
        history = await self.history(model_id) if with_history else []
        return _artifact(row, history)

    async def get_manifest(self, model_id: str) -> dict[str, Any] | None:
        row = await self._row(model_id)
        return None if row is None else dict((row.data or {}).get("manifest") or {})

    async def resign(self, model_id: str, expect_checksum: str, checksum: str, signature: str, key_version: str,
                     manifest: dict[str, Any]) -> bool:
        """Replace a model's signed manifest, only if its checksum is still ``expect_checksum``; True when done."""
        row = await self._row(model_id, for_update=True)
        if row is None or row.checksum != expect_checksum:
            return False
        row.checksum, row.signature, row.signing_key_version = checksum, signature, key_version
        row.data = {**(row.data or {}), "manifest": manifest}
        row.updated_at = utcnow()
        await self.session.flush()
        return True

    async def find(self, name: str, version: str) -> ModelArtifact | None:
        row = await self.session.scalar(select(SqlModel).where(SqlModel.name == name, SqlModel.version == version))
        return None if row is None else _artifact(row, [])

    async def versions(self, name: str) -> list[str]:
        return list((await self.session.scalars(select(SqlModel.version).where(SqlModel.name == name))).all())

    async def list(
        self, model_type: ModelType | None = None, stage: ModelStage | None = None, name: str | None = None
    ) -> list[ModelArtifact]:
        """Models, newest first, filtered by type, stage and name."""
        stmt = select(SqlModel).order_by(SqlModel.created_at.desc(), SqlModel.name, SqlModel.version)
        if model_type is not None:
            stmt = stmt.where(SqlModel.model_type == model_type.value)
        if stage is not None:
            stmt = stmt.where(SqlModel.stage == stage.value)
        if name is not None:
            stmt = stmt.where(SqlModel.name == name)
        return [_artifact(r, []) for r in (await self.session.scalars(stmt)).all()]

    async def active(self, name: str) -> ModelArtifact | None:
        """The ACTIVE production model of a name, if any."""
        row = await self.session.scalar(
            select(SqlModel).where(SqlModel.name == name, SqlModel.serving_state == ServingState.ACTIVE.value)
        )
        return None if row is None else _artifact(row, [])

    async def set_state(
        self,
        model_id: str,
        stage: ModelStage,
        serving_state: ServingState,
        *,
        expect_stage: ModelStage | None = None,
        expect_serving: ServingState | None = None,
        data_updates: dict[str, Any] | None = None,
    ) -> bool:
        """Move a model to a stage/serving state, only if it is still where the caller saw it.

        The guarded ``UPDATE`` is what makes concurrent promotions safe: on PostgreSQL the second writer waits for
        the first one's row lock, re-checks the condition against the committed row, and updates nothing.

        Returns:
            True when the row was updated.
        """
        stmt = update(SqlModel).where(SqlModel.model_id == model_id)
        if expect_stage is not None:
            stmt = stmt.where(SqlModel.stage == expect_stage.value)
        if expect_serving is not None:
            stmt = stmt.where(SqlModel.serving_state == expect_serving.value)
        result = await self.session.execute(
            stmt.values(stage=stage.value, serving_state=serving_state.value, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return False
        if data_updates:
            row = await self._row(model_id)
            assert row is not None
            row.data = {**(row.data or {}), **data_updates}
        await self.session.flush()
        return True

    async def production_versions(self, name: str) -> list[dict[str, Any]]:
        """Every PRODUCTION-stage version of a name with its serving state and supersede/rollback times."""
        rows = (await self.session.scalars(
            select(SqlModel).where(SqlModel.name == name, SqlModel.stage == ModelStage.PRODUCTION.value)
        )).all()
        return [
            {
                "model_id": r.model_id, "version": r.version, "serving_state": r.serving_state,
                "superseded_at": as_datetime((r.data or {}).get("superseded_at")),
                "rolled_back_at": as_datetime((r.data or {}).get("rolled_back_at")),
            }
            for r in rows
        ]

    async def standby_superseded_before(self, cutoff: datetime) -> list[str]:
        """STANDBY models superseded before ``cutoff`` (candidates for automatic archiving)."""
        rows = (await self.session.scalars(
            select(SqlModel).where(SqlModel.stage == ModelStage.PRODUCTION.value,
                                   SqlModel.serving_state == ServingState.STANDBY.value)
        )).all()
        out = []
        for r in rows:
            at = as_datetime((r.data or {}).get("superseded_at"))
            if at is not None and at < cutoff:
                out.append(r.model_id)
        return out

    async def update_validation_status(self, model_id: str, status: str, validation_metrics: dict[str, Any]) -> None:
        row = await self._row(model_id)
        if row is None:
            return
        row.validation_status = status
        row.metrics = {**(row.metrics or {}), "validation_metrics": validation_metrics}

    async def count_by_key_version(self) -> dict[str, int]:
        """How many models each signing key version signed (for key rotation reports)."""
        rows = await self.session.execute(
            select(SqlModel.signing_key_version, func.count()).group_by(SqlModel.signing_key_version)
        )
        return {str(k): int(n) for k, n in rows.all()}

    # --- stage history --------------------------------------------------------------------------------------------

    def add_history(
        self,
        model_id: str,
        from_stage: ModelStage | None,
        to_stage: ModelStage,
        serving_state: ServingState,
        actor: str,
        notes: str | None = None,
        approvals: list[dict[str, Any]] | None = None,
    ) -> None:
        self.session.add(SqlModelStageHistory(
            model_id=model_id, from_stage=from_stage.value if from_stage else None, to_stage=to_stage.value,
            serving_state=serving_state.value, actor=actor, notes=notes, approvals=approvals or [], created_at=utcnow(),
        ))

    async def history(self, model_id: str) -> list[StageTransition]:
        rows = (await self.session.scalars(
            select(SqlModelStageHistory).where(SqlModelStageHistory.model_id == model_id).order_by(SqlModelStageHistory.id)
        )).all()
        return [
            StageTransition(
                stage=ModelStage(r.to_stage), from_stage=ModelStage(r.from_stage) if r.from_stage else None,
                transitioned_at=r.created_at, transitioned_by=r.actor, notes=r.notes,
                approval_required=bool(r.approvals), approver=", ".join(a.get("actor", "") for a in (r.approvals or [])) or None,
                approvals=list(r.approvals or []),
                serving_state=ServingState(r.serving_state) if r.serving_state else None,
            )
            for r in rows
        ]

    # --- approvals ------------------------------------------------------------------------------------------------

    def add_approval(self, model_id: str, to_stage: ModelStage, role: str, actor: str,
                     validation_id: str | None = None) -> None:
        self.session.add(SqlModelApproval(model_id=model_id, to_stage=to_stage.value, role=role, actor=actor,
                                          validation_id=validation_id, created_at=utcnow()))

    async def open_approvals(self, model_id: str, to_stage: ModelStage) -> list[dict[str, Any]]:
        """Approvals recorded for a transition and not yet used by one, oldest first."""
        rows = (await self.session.scalars(
            select(SqlModelApproval)
            .where(SqlModelApproval.model_id == model_id, SqlModelApproval.to_stage == to_stage.value,
                   SqlModelApproval.consumed.is_(False))
            .order_by(SqlModelApproval.id)
        )).all()
        return [{"id": r.id, "role": r.role, "actor": r.actor, "at": r.created_at.isoformat(),
                 "validation_id": r.validation_id} for r in rows]

    async def consume_approvals(self, ids: list[int]) -> None:
        """Mark approvals as used, so one approval never authorises two transitions."""
        if ids:
            await self.session.execute(
                update(SqlModelApproval).where(SqlModelApproval.id.in_(ids)).values(consumed=True)
                .execution_options(synchronize_session=False)
            )

    # --- validation results ---------------------------------------------------------------------------------------

    def add_validation(self, result: ValidationResult) -> None:
        self.session.add(SqlValidationResult(
            validation_id=result.validation_id, model_id=result.model_id, baseline_model_id=result.baseline_model_id,
            passed=result.passed, recommendation=result.recommendation.value, verdict=result.verdict.value,
            regression_detected=result.regression_detected,
            # The table has no report_url column; it rides along under a reserved key that no stage name uses.
            stages={k: v.model_dump(mode="json") for k, v in result.stages.items()}
            | ({"_report_url": result.report_url} if result.report_url else {}),
            started_at=result.started_at, completed_at=result.completed_at,
        ))

    async def latest_validation(self, model_id: str) -> ValidationResult | None:
        row = await self.session.scalar(
            select(SqlValidationResult).where(SqlValidationResult.model_id == model_id)
            .order_by(SqlValidationResult.completed_at.desc().nulls_last(), SqlValidationResult.started_at.desc())
            .limit(1)
        )
        return None if row is None else _validation(row)

    async def validations(self, model_id: str) -> list[ValidationResult]:
        rows = (await self.session.scalars(
            select(SqlValidationResult).where(SqlValidationResult.model_id == model_id).order_by(SqlValidationResult.started_at)
        )).all()
        return [_validation(r) for r in rows]

    # --- read-only lineage lookups (tables owned by the training and dataset services) ---------------------------

    async def training_job(self, job_id: str) -> dict[str, Any] | None:
        row = await self.session.scalar(select(SqlTrainingJob).where(SqlTrainingJob.job_id == job_id))
        if row is None:
            return None
        return {
            "job_id": row.job_id, "job_type": row.job_type, "status": row.status, "config": dict(row.config or {}),
            "dataset_id": row.dataset_id, "dataset_version": row.dataset_version, "base_model_id": row.base_model_id,
        }

    async def dataset_version(self, dataset_id: str, version: str | None) -> dict[str, Any] | None:
        stmt = select(SqlDatasetVersion).where(SqlDatasetVersion.dataset_id == dataset_id)
        stmt = stmt.where(SqlDatasetVersion.version == version) if version else stmt.order_by(SqlDatasetVersion.created_at.desc())
        row = await self.session.scalar(stmt.limit(1))
        if row is None:
            return None
        return {
            "dataset_id": row.dataset_id, "version": row.version, "checksum_sha256": row.checksum_sha256,
            "lineage": dict(row.lineage or {}),
        }


def _artifact(row: SqlModel, history: list[StageTransition]) -> ModelArtifact:
    data = dict(row.data or {})
    fields = {k: data[k] for k in _DATA_FIELDS if k in data and data[k] is not None}
    return ModelArtifact(
        model_id=row.model_id, name=row.name, version=row.version, model_type=ModelType(row.model_type),
        stage=ModelStage(row.stage), serving_state=ServingState(row.serving_state), artifact_path=row.artifact_path,
        checksum=row.checksum, signature=row.signature, signing_key_version=row.signing_key_version,
        parent_model_id=row.parent_model_id, training_job_id=row.training_job_id, dataset_id=row.dataset_id,
        dataset_version=row.dataset_version, validation_status=row.validation_status, metrics=dict(row.metrics or {}),
        stage_history=history, created_at=row.created_at, **fields,
    )


def _validation(row: SqlValidationResult) -> ValidationResult:
    stages = dict(row.stages or {})
    report_url = stages.pop("_report_url", None)
    return ValidationResult(
        validation_id=row.validation_id, model_id=row.model_id, baseline_model_id=row.baseline_model_id,
        passed=row.passed, stages=stages, regression_detected=row.regression_detected,
        recommendation=row.recommendation, verdict=row.verdict, started_at=row.started_at,
        completed_at=row.completed_at, report_url=report_url,
    )


def as_datetime(value: Any) -> datetime | None:
    """Parse an ISO timestamp stored in JSON data."""
    return datetime.fromisoformat(value) if isinstance(value, str) else value
