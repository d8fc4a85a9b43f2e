"""Copying a model's files in: hash every file, check what the caller expected, sign the manifest, store the copy.

The copy lands in a new write-once version folder of the artifact store together with its manifest and signature
files; the folder appears only once complete. Any failure removes what was written, so a refused registration leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact
from .artifact_store import BOUND_FIELDS, MANIFEST_SCHEMA, ArtifactStore, hash_local_tree, manifest_checksum
from .signing import SigningKeyring


@dataclass(frozen=True)
class StoredArtifact:
    """A signed copy in the artifact store, not yet recorded in the database."""

    dest: str
    url: str
    manifest: dict[str, Any]
    checksum: str
    signature: str
    key_version: str

    @property
    def files(self) -> list[dict[str, Any]]:
        return self.manifest["files"]


def bound_manifest(artifact: ModelArtifact, version: str, files: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest that gets signed: the file list plus the registry row it belongs to (``BOUND_FIELDS``), so a
    signature over one model's files cannot be passed off for another row."""
    row = {**row_binding(artifact), "version": version}
    return {"schema": MANIFEST_SCHEMA, **row, "files": files}


def row_binding(model: ModelArtifact) -> dict[str, Any]:
    """The registry-row fields a manifest is bound to, as the manifest stores them."""
    values = {"model_id": model.model_id, "name": model.name, "version": model.version,
              "model_type": model.model_type.value, "parent_model_id": model.parent_model_id}
    return {k: values[k] for k in BOUND_FIELDS}


async def store_signed(
    store: ArtifactStore, keyring: SigningKeyring, source: str, artifact: ModelArtifact, version: str
) -> StoredArtifact:
    """Hash ``source``, sign its manifest and copy it to the store as ``artifact.name`` ``version``.

    Raises:
        L07Error: E7042 missing/unreadable files, E7207 a ``checksum`` the caller set does not match, E7201 a
        ``signature`` the caller set does not verify, E7200 signing failure, E7045 the version folder exists.
    """
    files = await asyncio.to_thread(hash_local_tree, source)
    manifest = bound_manifest(artifact, version, files)
    checksum = manifest_checksum(manifest)
    if artifact.checksum and artifact.checksum != checksum:
        raise L07Error(
            L07ErrorCode.MODEL_ARTIFACT_CORRUPTION_DETECTED,
            f"the files hash to {checksum}, not the expected {artifact.checksum}", expected=artifact.checksum, got=checksum,
        )
    if artifact.signature:
        keyring.verify(checksum.encode(), artifact.signature, artifact.signing_key_version)
    signature, key_version = keyring.sign(checksum.encode())
    signed = {"checksum": checksum, "signature": signature, "signing_key_version": key_version,
              "algorithm": "ECDSA-P256-SHA256"}
    dest = await asyncio.to_thread(store.put, source, artifact.name, version, files, manifest, signed)
    return StoredArtifact(dest=dest, url=store.url(dest), manifest=manifest, checksum=checksum, signature=signature,
                          key_version=key_version)
