"""Registering a model: copy in, hash, sign, record at DEVELOPMENT, all or nothing.

Registration is idempotent per training job: a job whose output is registered already (a retried job, or two
workers finishing the same job) gets that model back, not a second one. A version folder left behind by a
registration that crashed after the copy (no registry row) is moved aside once it is old enough, so the version
can be registered again.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.exc import IntegrityError

from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact, ModelStage, ServingState
from ...observability.metrics import MODELS_REGISTERED
from ...store.db import Database
from ...store.repositories.audit import audit
from ...store.repositories.models import ModelRepository
from .artifact_store import ArtifactStore, check_model_name
from .intake import StoredArtifact, store_signed
from .signing import SigningKeyring
from .versions import registration_version

log = logging.getLogger(__name__)

# A version folder without a registry row younger than this may belong to a registration about to commit.
ORPHAN_GRACE_S = 300.0


async def register(
    db: Database, store: ArtifactStore, keyring: SigningKeyring, artifact: ModelArtifact, source_dir: str | None,
    actor: str,
) -> str:
    """Copy, hash, sign and record a model at stage DEVELOPMENT (see ``ModelRegistry.register_model``).

    Returns:
        The new ``model_id``, or the one the same job's output was registered under already.
    """
    source = source_dir or artifact.artifact_path
    if not source:
        raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, "no artifact files given: pass source_dir or artifact_path")
    check_model_name(artifact.name)
    async with db.session() as session:
        repo = ModelRepository(session)
        existing = await repo.versions(artifact.name)
        prior = await repo.get(artifact.model_id, with_history=False)
    if prior is not None:
        return same_output(prior, artifact)
    version = registration_version(artifact, existing)
    try:
        stored = await store_signed(store, keyring, source, artifact, version)
    except L07Error as exc:
        if exc.code is not L07ErrorCode.ARTIFACT_VERSIONING_ERROR or not await reclaim_orphan(db, store, artifact.name, version):
            raise
        stored = await store_signed(store, keyring, source, artifact, version)
    try:
        record = await _record(db, artifact, stored, version, actor)
    except BaseException as exc:
        await asyncio.to_thread(store.remove, stored.dest)
        if isinstance(exc, IntegrityError) and artifact.training_job_id:
            async with db.session() as session:
                prior = await ModelRepository(session).get(artifact.model_id, with_history=False)
            if prior is not None:  # the same job's output, registered concurrently by another worker
                return same_output(prior, artifact)
        if isinstance(exc, IntegrityError):
            raise L07Error(
                L07ErrorCode.ARTIFACT_VERSIONING_ERROR, f"{artifact.name} {version} was registered concurrently",
                name=artifact.name, version=version,
            ) from exc
        raise
    MODELS_REGISTERED.labels(model_type=record.model_type.value).inc()
    log.info("model registered", extra={"model_id": record.model_id, "model_name": record.name, "version": version})
    return record.model_id


async def _record(db: Database, artifact: ModelArtifact, stored: StoredArtifact, version: str, actor: str) -> ModelArtifact:
    """Write the registry row, its first stage history row and the audit row in one transaction."""
    record = artifact.model_copy(update={
        "version": version, "stage": ModelStage.DEVELOPMENT, "serving_state": ServingState.NONE,
        "artifact_path": stored.url, "artifact_size_bytes": sum(f["size"] for f in stored.files),
        "checksum": stored.checksum, "signature": stored.signature, "signed": True,
        "signing_key_version": stored.key_version, "created_by": actor, "created_at": utcnow(),
        "stage_history": [], "deployed_at": None,
    })
    async with db.session() as session:
        repo = ModelRepository(session)
        repo.add(record, stored.manifest)
        repo.add_history(record.model_id, None, ModelStage.DEVELOPMENT, ServingState.NONE, actor, "registered")
        await audit(session, "model.register", "model", record.model_id, actor=actor, details={
            "name": record.name, "version": version, "model_type": record.model_type.value,
            "checksum": stored.checksum, "signing_key_version": stored.key_version, "files": len(stored.files),
            "artifact_path": stored.url,
        })
    return record


def same_output(prior: ModelArtifact, artifact: ModelArtifact) -> str:
    """Registration is idempotent per job: the output of a job registered already is that model, not a new one.

    Raises:
        L07Error: E7045 when the id belongs to something else (a caller reusing a model id).
    """
    if artifact.training_job_id and (prior.training_job_id, prior.name, prior.model_type) == (
            artifact.training_job_id, artifact.name, artifact.model_type):
        log.info("job output registered already", extra={"model_id": prior.model_id,
                                                         "job_id": artifact.training_job_id})
        return prior.model_id
    raise L07Error(L07ErrorCode.ARTIFACT_VERSIONING_ERROR, f"model id {artifact.model_id} is registered already",
                   model_id=artifact.model_id)


async def reclaim_orphan(db: Database, store: ArtifactStore, name: str, version: str) -> bool:
    """True when the existing folder of ``name`` ``version`` was an orphan (no registry row, untouched for
    ``ORPHAN_GRACE_S``: its registration crashed after the copy) and has been moved aside."""
    async with db.session() as session:
        if await ModelRepository(session).find(name, version) is not None:
            return False
    age = await asyncio.to_thread(store.age_s, name, version)
    if age is None or age < ORPHAN_GRACE_S:
        return False  # maybe a registration committing right now
    return await asyncio.to_thread(store.quarantine, name, version) is not None
