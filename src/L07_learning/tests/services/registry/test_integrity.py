"""Registry integrity (issue 22): signed manifests bound to their registry row, verification with pinned public keys
only, a missing configured key failing closed, and artifact copies that a crash cannot leave half-written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import select, update

from L07_learning.models import L07Error, ModelStage, ModelType, ServingState
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.services.registry.artifact_store import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    ArtifactStore,
    hash_local_tree,
    manifest_checksum,
)
from L07_learning.store.tables import SqlAuditLog, SqlModel

from .test_registry import count, make_model_dir, register, registry, registry_for, to_production  # noqa: F401


async def _point_row_at(db, target_id: str, source_id: str) -> None:
    """What an attacker with write access to the registry table does: copy another model's signed artifact fields."""
    async with db.session() as s:
        src = await s.scalar(select(SqlModel).where(SqlModel.model_id == source_id))
        dst = await s.scalar(select(SqlModel).where(SqlModel.model_id == target_id))
        dst.artifact_path, dst.checksum, dst.signature = src.artifact_path, src.checksum, src.signature
        dst.signing_key_version = src.signing_key_version
        dst.data = {**dst.data, "manifest": src.data["manifest"]}


async def test_production_row_pointed_at_another_models_signed_artifact_is_refused(db, registry, tmp_path):
    prod = await register(registry, tmp_path, name="support-summarizer", version="1.0.0")
    await to_production(registry, prod)
    other_name = await register(registry, tmp_path, name="untrusted-upload", version="1.0.0", seed=7)
    same_name = await register(registry, tmp_path, name="support-summarizer", version="1.1.0", seed=8)
    for source in (other_name, same_name):
        await _point_row_at(db, prod, source)
        report = await registry.verify(prod)
        assert not report.ok and report.error_code == "E7201" and not report.signature_ok, report.problems
        assert any("model_id" in p for p in report.problems)
        with pytest.raises(L07Error) as exc:
            await registry.local_path(prod)
        assert exc.value.code.value == "E7201"
    # The untouched rows still verify: the signed manifest names exactly them.
    assert (await registry.verify(other_name)).ok and (await registry.verify(same_name)).ok
    model = await registry.get_model(same_name)
    manifest = json.loads((Path(model.artifact_path.removeprefix("file://")) / MANIFEST_FILE).read_text())
    assert {k: manifest[k] for k in ("model_id", "name", "version", "model_type", "parent_model_id")} == {
        "model_id": same_name, "name": "support-summarizer", "version": "1.1.0", "model_type": "LORA_ADAPTER",
        "parent_model_id": None}


async def test_parent_is_bound_too(db, registry, tmp_path):
    base = await register(registry, tmp_path, name="base", version="1.0.0", model_type=ModelType.BASE)
    child = await register(registry, tmp_path, name="child", version="1.0.0", seed=2, parent_model_id=base)
    assert (await registry.verify(child)).ok
    async with db.session() as s:
        await s.execute(update(SqlModel).where(SqlModel.model_id == child).values(parent_model_id=None))
    report = await registry.verify(child)
    assert not report.ok and report.error_code == "E7201" and any("parent_model_id" in p for p in report.problems)


async def test_legacy_unbound_manifest_fails_clearly_and_resign_migrates_it(db, registry, tmp_path, settings):
    model_id = await register(registry, tmp_path, version="1.0.0")
    model = await registry.get_model(model_id)
    folder = Path(model.artifact_path.removeprefix("file://"))
    # Make it what the previous release stored: a v1 manifest signed by the same key.
    legacy = {"schema": "l07-artifact-manifest-v1", "name": model.name, "version": model.version,
              "model_type": model.model_type.value, "files": json.loads((folder / MANIFEST_FILE).read_text())["files"]}
    checksum = manifest_checksum(legacy)
    signature, key_version = registry.keyring.sign(checksum.encode())
    ArtifactStore.replace_metadata(model.artifact_path, legacy, {"checksum": checksum, "signature": signature})
    async with db.session() as s:
        row = await s.scalar(select(SqlModel).where(SqlModel.model_id == model_id))
        row.checksum, row.signature, row.signing_key_version = checksum, signature, key_version
        row.data = {**row.data, "manifest": legacy}

    report = await registry.verify(model_id)
    assert not report.ok and report.error_code == "E7201"
    assert any("l07 models resign" in p for p in report.problems)

    result = await registry.resign(model_id, actor="sec")
    assert result["resigned"] and result["checksum"] != checksum
    assert (await registry.verify(model_id)).ok
    assert (await registry.resign(model_id))["resigned"] is False
    assert await count(db, SqlAuditLog, SqlAuditLog.action == "model.resign", SqlAuditLog.resource_id == model_id) == 1
    assert json.loads((folder / SIGNATURE_FILE).read_text())["checksum"] == result["checksum"]


async def test_resign_refuses_a_tampered_legacy_artifact(db, registry, tmp_path):
    model_id = await register(registry, tmp_path, version="1.0.0")
    model = await registry.get_model(model_id)
    folder = Path(model.artifact_path.removeprefix("file://"))
    legacy = {"schema": "l07-artifact-manifest-v1", "name": model.name, "version": model.version,
              "model_type": model.model_type.value, "files": json.loads((folder / MANIFEST_FILE).read_text())["files"]}
    checksum = manifest_checksum(legacy)
    signature, key_version = registry.keyring.sign(checksum.encode())
    ArtifactStore.replace_metadata(model.artifact_path, legacy, {"checksum": checksum, "signature": signature})
    async with db.session() as s:
        row = await s.scalar(select(SqlModel).where(SqlModel.model_id == model_id))
        row.checksum, row.signature, row.signing_key_version = checksum, signature, key_version
        row.data = {**row.data, "manifest": legacy}
    weights = folder / "model.safetensors"
    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[0] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(L07Error) as exc:
        await registry.resign(model_id)
    assert exc.value.code.value == "E7207"
    assert not (await registry.verify(model_id)).ok


# --- keys: pinned public keys, fail closed ----------------------------------------------------------------------


async def test_verification_uses_pinned_public_keys_only(db, registry, tmp_path, settings):
    model_id = await register(registry, tmp_path, version="1.0.0")
    key_dir = Path(settings.signing_key_path)
    private = sorted(p for p in key_dir.glob("*.pem") if not p.name.endswith(".pub.pem"))
    assert private
    # A verifier without the private keys (a serving host, or the key volume unmounted) still verifies...
    moved = tmp_path / "offline-keys"
    moved.mkdir()
    for p in private:
        p.rename(moved / p.name)
    assert (await registry.verify(model_id)).ok
    # ...and a swapped pin is not trusted: the signature no longer verifies.
    version = (await registry.get_model(model_id)).signing_key_version
    pin = key_dir / f"{version}.pub.pem"
    pin.write_bytes(ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    report = await registry.verify(model_id)
    assert not report.ok and report.error_code == "E7201"
    # Signing with a private key that does not match its pin is refused, not silently trusted.
    for p in private:
        (moved / p.name).rename(p)
    with pytest.raises(L07Error) as exc:
        await register(registry, tmp_path, version="2.0.0", seed=4)
    assert exc.value.code.value == "E7200" and "pinned" in exc.value.message


async def test_missing_configured_key_fails_closed(db, settings, tmp_path):
    for missing in (tmp_path / "vault" / "l07-signing.pem", tmp_path / "mounted-keys"):
        configured = settings.model_copy(update={"signing_key_path": missing})
        registry = ModelRegistry(db=db, settings=configured)
        with pytest.raises(L07Error) as exc:
            await register(registry, tmp_path, name=f"m-{missing.name}", version="1.0.0")
        assert exc.value.code.value == "E7200" and str(missing) in exc.value.message
        assert not missing.exists(), "no keyring may appear where the configured key is missing"
    async with db.session() as s:
        assert (await s.scalar(select(SqlModel.model_id))) is None


async def test_external_pem_verifies_from_its_pin_after_the_pem_is_gone(db, settings, tmp_path):
    pem = tmp_path / "vault-export.pem"
    pem.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    configured = settings.model_copy(update={"signing_key_path": pem})
    registry = ModelRegistry(db=db, settings=configured)
    model_id = await register(registry, tmp_path, version="1.0.0")
    pem.unlink()
    assert (await ModelRegistry(db=db, settings=configured).verify(model_id)).ok
    with pytest.raises(L07Error) as exc:
        await register(ModelRegistry(db=db, settings=configured), tmp_path, version="1.1.0", seed=1)
    assert exc.value.code.value == "E7200"
    assert not pem.exists()


# --- crash-safe artifact copies ---------------------------------------------------------------------------------

_KILLED_COPY = r"""
import sys, time
from pathlib import Path
from L07_learning.services.registry.artifact_store import ArtifactStore, hash_local_tree

store = ArtifactStore(sys.argv[1])
original = ArtifactStore._copy_file
def slow(self, src, dst):
    got = original(self, src, dst)
    Path(sys.argv[3]).write_text("copied one file")
    time.sleep(60)
    return got
ArtifactStore._copy_file = slow
store.put(sys.argv[2], "org/model", "1.0.0", hash_local_tree(sys.argv[2]))
"""


def test_worker_killed_mid_copy_does_not_block_the_version(tmp_path):
    root, src, marker = tmp_path / "artifacts", make_model_dir(tmp_path / "src"), tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_COPY, str(root), str(src), str(marker)])
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the copy did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    store = ArtifactStore(str(root))
    assert not Path(store.model_dir("org/model", "1.0.0")).exists(), "a half copy must never sit at the version path"
    dest = store.put(src, "org/model", "1.0.0", hash_local_tree(src))
    assert ArtifactStore.check_files(store.url(dest), {"files": hash_local_tree(src)}) == [f"{MANIFEST_FILE}: missing"]
    assert not list((root / "models" / "org").glob(".l07-partial-*")), "the dead copy's partial folder is cleaned"


def test_interrupted_copy_in_process_removes_its_partial_folder(tmp_path, monkeypatch):
    store = ArtifactStore(str(tmp_path / "artifacts"))
    src = make_model_dir(tmp_path / "src")
    calls = {"n": 0}
    original = ArtifactStore._copy_file

    def interrupted(self, s, d):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, s, d)

    monkeypatch.setattr(ArtifactStore, "_copy_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store.put(src, "m", "1.0.0", hash_local_tree(src))
    monkeypatch.setattr(ArtifactStore, "_copy_file", original)
    assert not any((tmp_path / "artifacts" / "models" / "m").iterdir())
    store.put(src, "m", "1.0.0", hash_local_tree(src))


async def test_orphaned_version_folder_without_a_row_is_moved_aside(db, registry, tmp_path, settings):
    src = make_model_dir(tmp_path / "src")
    # The copy finished but the process died before the registry row was committed.
    dest = registry.store.put(src, "support-summarizer", "1.0.0", hash_local_tree(src))
    with pytest.raises(L07Error) as exc:  # fresh: maybe a registration committing right now
        await register(registry, tmp_path, version="1.0.0")
    assert exc.value.code.value == "E7045"
    old = time.time() - 3600
    os.utime(dest, (old, old))
    model_id = await register(registry, tmp_path, version="1.0.0")
    assert (await registry.verify(model_id)).ok
    orphans = list((Path(settings.artifact_root) / "orphans" / "support-summarizer").iterdir())
    assert len(orphans) == 1 and (orphans[0] / "model.safetensors").exists()
    # An existing registered version is still write-once.
    with pytest.raises(L07Error) as exc:
        await register(registry, tmp_path, version="1.0.0", seed=1)
    assert exc.value.code.value == "E7045"
    model = await registry.get_model(model_id)
    assert model.stage is ModelStage.DEVELOPMENT and model.serving_state is ServingState.NONE
