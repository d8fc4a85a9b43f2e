"""Verification of a registered artifact: every file's hash, the manifest checksum, its signature, and that the signed
manifest names this very registry row (model id, name, version, type, parent)."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

from ...models._base import L07Model, utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact
from .artifact_store import BOUND_FIELDS, LEGACY_MANIFEST_SCHEMAS, MANIFEST_SCHEMA, ArtifactStore, manifest_checksum
from .intake import row_binding
from .signing import SigningKeyring


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


def binding_problems(model: ModelArtifact, manifest: dict[str, Any]) -> list[str]:
    """Where the signed manifest does not describe this registry row (another model's artifact, or a legacy manifest)."""
    schema = manifest.get("schema")
    if schema in LEGACY_MANIFEST_SCHEMAS:
        return [f"the manifest ({schema}) was signed before manifests were bound to their registry row, so it cannot "
                f"prove it belongs to {model.model_id}; re-sign it: `l07 models resign {model.model_id}`"]
    if schema != MANIFEST_SCHEMA:
        return [f"unknown manifest schema {schema!r}"]
    expected = row_binding(model)
    return [f"the signed manifest is for {field} {manifest.get(field)!r}, not this model's {expected[field]!r}"
            for field in BOUND_FIELDS if manifest.get(field) != expected[field]]


async def verify_artifact(model: ModelArtifact, manifest: dict[str, Any], keyring: SigningKeyring) -> VerificationReport:
    """Check a model's files against its registered manifest; problems are reported, not raised.

    Args:
        model: The registered model; ``artifact_path`` is where its files are checked.
        manifest: The manifest stored at registration (``{}`` when none was found).
        keyring: The keys its signature must verify with.
    """
    started = time.perf_counter()
    problems: list[str] = []
    checksum_ok = manifest_checksum(manifest) == model.checksum
    if not checksum_ok:
        problems.append("the registered manifest does not hash to the registered checksum")
    signature_ok = True
    try:
        keyring.verify(model.checksum.encode(), model.signature, model.signing_key_version)
    except L07Error as exc:
        signature_ok = False
        problems.append(exc.message)
    binding = binding_problems(model, manifest)
    if binding:
        signature_ok = False  # a valid signature over someone else's manifest is a signature failure for this row
        problems += binding
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
