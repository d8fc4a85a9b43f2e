"""Re-signing a model registered before manifests were bound to their registry row (manifest schema v1).

A v1 manifest names the files, the name, the version and the type, but not the model id or parent, so it no longer
verifies (E7201). Re-signing is the migration path, done per model by an operator (``l07 models resign``), never by a
schema migration (migrations hold no signing key): the model must pass every v1 check (files, checksum, signature by
a pinned key, name/version/type equal to its row) before its manifest is rewritten as v2 and signed with the active
key, so re-signing never launders a tampered artifact.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import fsspec

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact
from ...store.db import Database
from ...store.repositories.audit import audit
from ...store.repositories.models import ModelRepository
from .artifact_store import LEGACY_MANIFEST_SCHEMAS, MANIFEST_FILE, ArtifactStore, manifest_checksum
from .intake import bound_manifest
from .signing import SigningKeyring


async def resign_legacy(db: Database, keyring: SigningKeyring, model: ModelArtifact, manifest: dict[str, Any],
                        actor: str) -> dict[str, Any]:
    """Rewrite ``model``'s v1 manifest as a bound v2 manifest and sign it with the active key.

    Returns:
        ``{"model_id", "resigned": bool, "checksum", "signing_key_version"}``; ``resigned`` is False when the manifest
        was bound already (nothing to do).

    Raises:
        L07Error: E7207 files or checksum do not match; E7201 the old signature or the row fields do not match;
        E7200 signing failed; E7251 the model changed while this ran.
    """
    schema = manifest.get("schema")
    if schema not in LEGACY_MANIFEST_SCHEMAS:
        return {"model_id": model.model_id, "resigned": False, "checksum": model.checksum,
                "signing_key_version": model.signing_key_version}
    new_manifest = bound_manifest(model, model.version, manifest.get("files", []))
    problems = await asyncio.to_thread(ArtifactStore.check_files, model.artifact_path, manifest)
    # A previous re-sign that crashed after rewriting the folder's manifest leaves exactly the new manifest there.
    problems = [p for p in problems if p != f"{MANIFEST_FILE}: differs from the registered manifest"
                or not _holds(model.artifact_path, new_manifest)]
    if manifest_checksum(manifest) != model.checksum:
        problems.append("the registered manifest does not hash to the registered checksum")
    if problems:
        raise L07Error(L07ErrorCode.MODEL_ARTIFACT_CORRUPTION_DETECTED,
                       f"model {model.model_id} fails verification, so it is not re-signed: " + "; ".join(problems),
                       model_id=model.model_id, problems=problems)
    keyring.verify(model.checksum.encode(), model.signature, model.signing_key_version)
    wrong = [f for f in ("name", "version", "model_type") if manifest.get(f) != new_manifest[f]]
    if wrong:
        raise L07Error(L07ErrorCode.MODEL_SIGNATURE_VERIFICATION_FAILED,
                       f"the signed manifest's {', '.join(wrong)} differ from model {model.model_id}'s row; not re-signed",
                       model_id=model.model_id)
    checksum = manifest_checksum(new_manifest)
    signature, key_version = keyring.sign(checksum.encode())
    signed = {"checksum": checksum, "signature": signature, "signing_key_version": key_version,
              "algorithm": "ECDSA-P256-SHA256"}
    await asyncio.to_thread(ArtifactStore.replace_metadata, model.artifact_path, new_manifest, signed)
    async with db.session() as session:
        if not await ModelRepository(session).resign(model.model_id, model.checksum, checksum, signature, key_version,
                                                     new_manifest):
            raise L07Error(L07ErrorCode.STAGE_TRANSITION_NOT_ALLOWED,
                           f"model {model.model_id} changed while it was being re-signed; run again")
        await audit(session, "model.resign", "model", model.model_id, actor=actor, details={
            "old_checksum": model.checksum, "checksum": checksum, "old_signing_key_version": model.signing_key_version,
            "signing_key_version": key_version, "old_schema": schema})
    return {"model_id": model.model_id, "resigned": True, "checksum": checksum, "signing_key_version": key_version}


def _holds(url: str, manifest: dict[str, Any]) -> bool:
    fs, dest = fsspec.core.url_to_fs(url)
    try:
        with fs.open(f"{dest.rstrip('/')}/{MANIFEST_FILE}", "rb") as fh:
            return json.loads(fh.read()) == manifest
    except (OSError, ValueError):
        return False
