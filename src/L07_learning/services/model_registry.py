"""The model registry: signed, write-once artifacts, lineage, and the stage process of contract §4.2.

Every artifact is copied into the artifact store, hashed file by file, described by a manifest whose sha256 is
signed with ECDSA P-256 (``signing.py``). Every load for training, validation or serving goes through
``local_path``, which re-hashes the files and re-verifies the signature, so a changed byte is an E7207/E7201 error,
never a silent load.

Stage changes follow one table, with the approval rules and gates beside it (``registry/stages.py``). Each change
is one transaction (``registry/transitions.py``) that writes the new stage, a stage history row, an audit row and,
for STAGING/PRODUCTION, the ``learning.model_deployment_approved`` event. A refused change stores nothing but an
audit row saying why. One ACTIVE PRODUCTION version per name is enforced by a partial unique index; concurrent
promotions of one name are detected and the loser gets E7251.

This class is the face; the parts live in ``services/registry/``: ``registration`` (job-idempotent registration,
orphan reclaim), ``intake`` (hash, sign, copy in), ``artifact_store``, ``signing``, ``verification``, ``stages``,
``approvals``, ``promotion`` (the locked promotion transaction), ``rollback``, ``transitions``, ``refusals``
(audited refusals), ``base_models``, ``versions``, ``lineage``, ``comparison``, ``resign`` and ``loading``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy.exc import IntegrityError, OperationalError

from ..events.publisher import EventPublisher
from ..models._base import utcnow
from ..models.error_codes import L07Error, L07ErrorCode
from ..models.model_artifact import ModelArtifact, ModelLineage, ModelStage, ModelType
from ..models.validation import Recommendation, ValidationResult
from ..observability.metrics import MODEL_ROLLBACKS, MODELS_DEPLOYED
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from ..store.repositories.audit import audit
from ..store.repositories.models import ModelRepository
from .registry import base_models
from .registry.approvals import record_approval
from .registry.artifact_store import ArtifactStore
from .registry.base_models import DEFAULT_BASE_MODEL
from .registry.comparison import compare
from .registry.lineage import model_lineage
from .registry.promotion import active_model_id, commit_promotion, promotion_error
from .registry.refusals import record_failure
from .registry.registration import register
from .registry.resign import resign_legacy
from .registry.rollback import commit_rollback, rollback_target
from .registry.signing import SigningKeyInfo, SigningKeyring, keyring_for
from .registry.stages import (
    ALLOWED,
    APPROVAL_ROLES,
    ARCHIVE_AFTER_DAYS,
    CANARY_CONFIG,
    allowed_targets,
    check_rollback_reason,
    check_transition,
    parse_approvals,
    parse_stage,
)
from .registry.transitions import Conflict, archive_standby
from .registry.verification import VerificationReport, verify_artifact
from .registry.versions import version_after

log = logging.getLogger(__name__)


class ModelRegistry:
    """Registers, verifies, versions and promotes models.

    Args:
        db: Database (default: the configured one).
        settings: Settings (default: ``get_settings()``).
        store: Artifact store (default: ``settings.artifact_root``).
        keyring: Signing keys (default: ``settings.signing_key_path``).
        publisher: Event publisher (outbox).
    """

    def __init__(
        self,
        db: Database | None = None,
        settings: Settings | None = None,
        store: ArtifactStore | None = None,
        keyring: SigningKeyring | None = None,
        publisher: EventPublisher | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self.store = store or ArtifactStore(
            str(self.settings.artifact_root), cache_dir=Path(self.settings.home) / "cache" / "artifacts"
        )
        self.keyring = keyring or keyring_for(self.settings)
        self.publisher = publisher or EventPublisher()

    # --- registration ---------------------------------------------------------------------------------------------

    async def register_model(self, artifact: ModelArtifact, source_dir: str | None = None, actor: str = "l07") -> str:
        """Copy, hash, sign and record a model at stage DEVELOPMENT.

        Args:
            artifact: Metadata. ``artifact_path`` is the source folder when ``source_dir`` is not given. When the
                caller leaves ``version`` unset and the name exists, the next MINOR version is used. A ``checksum``
                or ``signature`` the caller sets must match what the files hash to.
            source_dir: Local folder with the model files.
            actor: Who registers (audit).

        Returns:
            The new ``model_id``.

        Raises:
            L07Error: E7045 existing name+version, E7042 missing/unreadable files, E7207 checksum mismatch,
            E7201 bad caller signature, E7200 signing failure, E7110 bad name. Nothing is stored on failure.
        """
        return await register(self.db, self.store, self.keyring, artifact, source_dir, actor)

    async def next_version(self, name: str, change: str = "MINOR") -> str:
        """The next free semantic version of a name (``1.0.0`` for a new name)."""
        async with self.db.session() as session:
            existing = await ModelRepository(session).versions(name)
        return version_after(existing, change) if existing else "1.0.0"

    async def ensure_base_model(self, source: str | None = None) -> ModelArtifact:
        """Register the default SmolLM2 base model once; later calls return the registered one.

        Args:
            source: A local Hugging Face folder to copy in; default: the converted copy from
                ``pipelines.base_model.default_base_model_dir``.
        """
        return await base_models.ensure_base_model(self, source)

    async def register_base(
        self, source: str, name: str | None = None, version: str | None = None, actor: str = "l07"
    ) -> ModelArtifact:
        """Copy a base model in: a local Hugging Face folder, or a hub id where a network exists.

        Raises:
            L07Error: E7032 when the folder is not a Hugging Face model (no ``config.json``), E7903 when a hub id
            cannot be downloaded.
        """
        return await base_models.register_base(self, source, name, version, actor)

    # --- reading and verifying ------------------------------------------------------------------------------------

    async def get_model(self, model_id: str, verify: bool = False) -> ModelArtifact:
        """One model with its stage history.

        Args:
            verify: Re-hash the files and check the signature first (E7207/E7201 on tampering).

        Raises:
            L07Error: E7250 unknown id.
        """
        model = await self._get(model_id)
        if verify:
            await self._verify_or_raise(model, "get")
        return model

    async def list_models(
        self, model_type: ModelType | str | None = None, status: str | ModelStage | None = None, name: str | None = None
    ) -> list[ModelArtifact]:
        """Models newest first; ``status`` filters on stage, any case."""
        mtype = None
        if model_type is not None:
            try:
                mtype = model_type if isinstance(model_type, ModelType) else ModelType(str(model_type).upper())
            except ValueError:
                raise L07Error(
                    L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                    f"unknown model type {model_type!r}; types are {', '.join(t.value for t in ModelType)}",
                ) from None
        stage = parse_stage(status) if status is not None else None
        async with self.db.session() as session:
            return await ModelRepository(session).list(model_type=mtype, stage=stage, name=name)

    async def verify(self, model_id: str) -> VerificationReport:
        """Re-hash every file and check the manifest checksum and signature; failures are reported, not raised.

        Raises:
            L07Error: E7250 unknown id only.
        """
        model = await self._get(model_id)
        report = await self._check(model)
        if not report.ok:
            await record_failure(self.db, "model.verify", model.model_id, "l07", L07Error(report.error_code or "E7207", "; ".join(report.problems)))
        return report

    async def resign(self, model_id: str, actor: str = "l07") -> dict[str, Any]:
        """Re-sign a model registered before manifests were bound to their registry row (``registry/resign.py``).

        Raises:
            L07Error: E7250 unknown id; E7207/E7201 the model fails its old checks (it is not re-signed).
        """
        model = await self._get(model_id)
        async with self.db.session() as session:
            manifest = await ModelRepository(session).get_manifest(model_id) or {}
        try:
            return await resign_legacy(self.db, self.keyring, model, manifest, actor)
        except L07Error as exc:
            await record_failure(self.db, "model.resign", model_id, actor, exc)
            raise

    async def local_path(self, model_id: str) -> str:
        """A verified local folder with the model's files. Every load for training, validation or serving uses this.

        Raises:
            L07Error: E7250 unknown id; E7207 changed, missing or extra files; E7201 bad signature.
        """
        model = await self._get(model_id)
        local = await asyncio.to_thread(self.store.materialise, model.artifact_path, model.model_id)
        if str(local) == _strip_file_url(model.artifact_path):
            await self._verify_or_raise(model, "load")
        else:  # remote store: what gets loaded is the downloaded copy, so verify that copy
            await self._verify_or_raise(model.model_copy(update={"artifact_path": str(local)}), "load")
        return str(local)

    async def _get(self, model_id: str) -> ModelArtifact:
        async with self.db.session() as session:
            model = await ModelRepository(session).get(model_id)
        if model is None:
            raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"no model with id {model_id}", model_id=model_id)
        return model

    async def _check(self, model: ModelArtifact) -> VerificationReport:
        async with self.db.session() as session:
            manifest = await ModelRepository(session).get_manifest(model.model_id) or {}
        return await verify_artifact(model, manifest, self.keyring)

    async def _verify_or_raise(self, model: ModelArtifact, action: str) -> VerificationReport:
        """Verify before ``action`` (get, load, promote, rollback); raise and audit the refusal on failure."""
        report = await self._check(model)
        if not report.ok:
            exc = L07Error(
                report.error_code or L07ErrorCode.MODEL_ARTIFACT_CORRUPTION_DETECTED,
                f"model {model.name} {model.version} ({model.model_id}) failed verification, refused for {action}: "
                + "; ".join(report.problems),
                model_id=model.model_id, problems=report.problems,
            )
            await record_failure(self.db, f"model.{action}", model.model_id, "l07", exc)
            raise exc
        return report

    # --- approvals and stage changes ------------------------------------------------------------------------------

    async def approve(self, model_id: str, role: str, actor: str, to_stage: str | ModelStage | None = None,
                      validation_id: str | None = None) -> dict[str, Any]:
        """Record that ``actor`` in ``role`` approves the model's next transition.

        A STAGING or PRODUCTION approval is given for one validation report, the model's latest: it counts only
        while that report is the latest, so a newer validation (for instance a worse one) needs a new approval.

        Args:
            role: ``reviewer`` (REVIEW -> STAGING), ``deployer`` / ``ml_manager`` (STAGING -> PRODUCTION),
                ``admin`` (manual archive).
            to_stage: The transition approved; default: the one the role approves.
            validation_id: The report approved; default: the latest. Naming one that is not the latest is refused.

        Raises:
            L07Error: E7250 unknown id, E7110 bad role or empty actor, E7251 when that transition is not open from
            the model's current stage, E7252 when there is no validation to approve or ``validation_id`` is not the
            latest one.
        """
        return await record_approval(self.db, model_id, role, actor, to_stage, validation_id)

    async def promote_model(
        self,
        model_id: str,
        stage: str | ModelStage,
        actor: str = "l07",
        approvals: Iterable[Any] | None = None,
        notes: str | None = None,
        events: Iterable[tuple[str, dict[str, Any]]] | None = None,
        override_reason: str | None = None,
    ) -> ModelArtifact:
        """Move a model to ``stage`` under the rules of contract §4.2.

        Args:
            stage: ``"staging"``, ``"production"``, ``"archived"``, ``"rejected"``, any case.
            actor: Who asks (audit, stage history).
            approvals: Approvals given with the request (``role=actor`` strings, dicts or pairs); recorded in the
                same transaction, so they vanish if the promotion is refused.
            notes: Free text kept in the stage history.
            events: Extra ``(event_type, data)`` pairs to publish in the same transaction as the change (e.g.
                ``learning.model_ready_for_deployment``); they exist exactly when the change committed.
            override_reason: An admin override (the caller checked the admin role): the approvals and gates are
                bypassed, the transition table and the artifact's verification are not, and the audit row
                ``model.gates_overridden`` records the reason and what the gates would have refused.

        Returns:
            The model after the change.

        Raises:
            L07Error: E7250 unknown id; E7251 transition not allowed (message names the current stage and the
            allowed ones; also a concurrent PRODUCTION promotion of the same name); E7252 approval missing;
            E7203/E7204 validation missing, failed or regressed; E7207/E7201 artifact fails verification.
        """
        target = parse_stage(stage)
        given = parse_approvals(approvals)
        if override_reason is not None and not override_reason.strip():
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "an override needs a reason")
        model = await self._get(model_id)
        try:
            check_transition(model, target)
            expected_active = await active_model_id(self.db, model.name) if target is ModelStage.PRODUCTION else None
            if target in (ModelStage.STAGING, ModelStage.PRODUCTION):
                # Hash and signature re-verified before anything changes (contract §4.2); slow, so outside the lock.
                await self._verify_or_raise(model, "promote")
            result = await commit_promotion(self.db, self.publisher, model, target, given, actor, notes, events,
                                            expected_active, override_reason.strip() if override_reason else None)
        except (IntegrityError, Conflict, OperationalError) as exc:
            err = promotion_error(model, exc)
            await record_failure(self.db, "model.promote", model_id, actor, err, target)
            raise err from exc
        except L07Error as exc:
            await record_failure(self.db, "model.promote", model_id, actor, exc, target)
            raise
        MODELS_DEPLOYED.labels(stage=target.value, success="true").inc()
        log.info("model promoted", extra={"model_id": model_id, "to_stage": target.value, "actor": actor})
        return result

    async def rollback(
        self, name_or_id: str, actor: str = "l07", reason: str = "manual", to_version: str | None = None
    ) -> ModelArtifact:
        """Make the previous PRODUCTION version (STANDBY) ACTIVE again; the current ACTIVE one becomes STANDBY.

        Args:
            name_or_id: A model name, or the id of any of its versions.
            reason: ``manual``, ``quality_degradation``, ``bug``, ``canary_failure`` or ``security``.
            to_version: A specific STANDBY version; default: the one most recently superseded.

        Returns:
            The model that is ACTIVE now.

        Raises:
            L07Error: E7251 when there is nothing to roll back to or the named version is not STANDBY;
            E7207/E7201 when the target fails verification (it is then not activated).
        """
        check_rollback_reason(reason)
        name, active, target_row = await rollback_target(self.db, name_or_id, actor, to_version)
        target = await self._get(target_row["model_id"])
        await self._verify_or_raise(target, "rollback")
        try:
            incident = await commit_rollback(self.db, self.publisher, active, target, actor, reason)
        except (IntegrityError, Conflict) as exc:
            err = L07Error(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                           f"the production models of {name} changed during the rollback; nothing was changed, retry")
            await record_failure(self.db, "model.rollback", target.model_id, actor, err)
            raise err from exc
        MODEL_ROLLBACKS.labels(reason=reason).inc()
        log.warning("model rolled back", extra={"model_name": name, "incident": incident})
        return await self._get(target.model_id)

    async def archive_superseded(self, older_than_days: float = ARCHIVE_AFTER_DAYS, actor: str = "l07-retention") -> list[str]:
        """Archive STANDBY versions superseded more than ``older_than_days`` ago (contract §8 #8); the ACTIVE one never.

        Returns:
            The archived model ids.
        """
        cutoff = utcnow() - timedelta(days=older_than_days)
        async with self.db.session() as session:
            return await archive_standby(session, cutoff, actor,
                                         f"automatic: superseded more than {older_than_days:g} days ago")

    # --- validation, comparison, lineage --------------------------------------------------------------------------

    async def record_validation(self, result: ValidationResult, actor: str = "l07-validator") -> None:
        """Store a validator result and set the model's ``validation_status``.

        The result is what the stage rules read: DEVELOPMENT -> STAGING needs DEPLOY (or REVIEW plus a reviewer),
        DEVELOPMENT -> REJECTED follows a REJECT (``LearningService.deploy_model`` makes that move).

        Raises:
            L07Error: E7250 unknown model.
        """
        status = {Recommendation.DEPLOY: "PASSED", Recommendation.REVIEW: "CONDITIONAL", Recommendation.REJECT: "FAILED"}
        async with self.db.session() as session:
            repo = ModelRepository(session)
            model = await repo.get(result.model_id, for_update=True, with_history=False)
            if model is None:
                raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"no model with id {result.model_id}", model_id=result.model_id)
            repo.add_validation(result)
            await repo.update_validation_status(
                model.model_id, status[result.recommendation], {k: v.metrics for k, v in result.stages.items()}
            )
            await audit(session, "model.validation_recorded", "model", model.model_id, actor=actor, details={
                "validation_id": result.validation_id, "recommendation": result.recommendation.value,
                "verdict": result.verdict.value, "regression_detected": result.regression_detected,
            })

    async def get_validations(self, model_id: str) -> list[ValidationResult]:
        """Every stored validation of a model, oldest first."""
        await self._get(model_id)
        async with self.db.session() as session:
            return await ModelRepository(session).validations(model_id)

    async def compare_models(self, model_a: str, model_b: str) -> dict[str, Any]:
        """Two models' metrics and latest validation results side by side (``delta`` = b - a for numbers)."""
        a, b = await self._get(model_a), await self._get(model_b)
        async with self.db.session() as session:
            repo = ModelRepository(session)
            va, vb = await repo.latest_validation(a.model_id), await repo.latest_validation(b.model_id)
        return compare(a, va, b, vb)

    async def lineage(self, model_id: str) -> ModelLineage:
        """Model -> training job -> dataset version -> source events, with parent models recursively.

        Raises:
            L07Error: E7250 unknown id.
        """
        await self._get(model_id)
        async with self.db.session() as session:
            return await model_lineage(ModelRepository(session), model_id)

    # --- keys -----------------------------------------------------------------------------------------------------

    async def rotate_signing_key(self, actor: str = "l07") -> dict[str, Any]:
        """Make a new active signing key (audited) and say which models' signatures no longer verify.

        Returns:
            ``{"key": SigningKeyInfo, "retired": [versions], "models_on_retired_keys": int}``.
        """
        try:
            info = await asyncio.to_thread(self.keyring.rotate)
        except L07Error as exc:
            await record_failure(self.db, "key.rotate", None, actor, exc, resource_type="signing_key")
            raise
        keys = self.keyring.list_keys()
        retired = [k.version for k in keys if k.status == "retired"]
        async with self.db.session() as session:
            counts = await ModelRepository(session).count_by_key_version()
            await audit(session, "key.rotate", "signing_key", info.version, actor=actor,
                        details={"fingerprint": info.fingerprint, "retired": retired})
        stale = sum(n for v, n in counts.items() if v in retired)
        if stale:
            log.warning("models signed with retired keys no longer verify", extra={"count": stale, "retired": retired})
        return {"key": info, "retired": retired, "models_on_retired_keys": stale}

    def list_signing_keys(self) -> list[SigningKeyInfo]:
        """The signing keys, newest first (public parts only)."""
        return self.keyring.list_keys()



def _strip_file_url(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


__all__ = [
    "ALLOWED", "APPROVAL_ROLES", "CANARY_CONFIG", "DEFAULT_BASE_MODEL", "ModelRegistry", "VerificationReport",
    "allowed_targets", "parse_approvals", "parse_stage",
]
