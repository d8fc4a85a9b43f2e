"""Model registry: signed write-once artifacts, tamper detection, stages and approvals, rollback, lineage, keys."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from L07_learning.models import (
    L07Error,
    ModelArtifact,
    ModelStage,
    ModelType,
    Recommendation,
    ServingState,
    StageOutcome,
    StageResult,
    ValidationResult,
    Verdict,
)
from L07_learning.observability.metrics import REGISTRY
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.services.registry.artifact_store import MANIFEST_FILE, hash_local_tree, manifest_checksum
from L07_learning.services.registry.base_models import DEFAULT_BASE_MODEL
from L07_learning.services.registry.signing import SigningKeyring
from L07_learning.services.registry.stages import (
    ALLOWED,
    allowed_targets,
    check_transition,
    parse_approvals,
    production_gates,
    requirements,
)
from L07_learning.store.db import Database
from L07_learning.store.tables import (
    SqlAuditLog,
    SqlDataset,
    SqlDatasetVersion,
    SqlModel,
    SqlModelStageHistory,
    SqlOutboxEvent,
    SqlTrainingJob,
)


# --- factories ----------------------------------------------------------------------------------------------------


def make_model_dir(path: Path, seed: int = 0, size: int = 4096) -> Path:
    """A small Hugging Face-shaped folder: config, a weights file and a tokenizer file, content set by ``seed``."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "seed": seed}))
    (path / "model.safetensors").write_bytes(bytes((seed * 31 + i * 7) % 256 for i in range(size)))
    (path / "tokenizer").mkdir(exist_ok=True)
    (path / "tokenizer" / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0, "b": seed}}))
    return path


def validation(model_id: str, recommendation: Recommendation = Recommendation.DEPLOY,
               regression: StageOutcome = StageOutcome.PASS, safety: StageOutcome = StageOutcome.PASS) -> ValidationResult:
    verdict = {Recommendation.DEPLOY: Verdict.APPROVED, Recommendation.REVIEW: Verdict.CONDITIONAL,
               Recommendation.REJECT: Verdict.REJECTED}[recommendation]
    return ValidationResult(
        model_id=model_id, passed=recommendation is Recommendation.DEPLOY, recommendation=recommendation, verdict=verdict,
        regression_detected=regression is not StageOutcome.PASS,
        stages={
            "regression": StageResult(passed=regression is StageOutcome.PASS, outcome=regression,
                                      metrics={"pass_rate": 1.0 if regression is StageOutcome.PASS else 0.9}),
            "safety": StageResult(passed=safety is StageOutcome.PASS, outcome=safety,
                                  issues=[] if safety is StageOutcome.PASS else ["trigger echoed"]),
        },
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def registry_for(settings):
    def build(db: Database) -> ModelRegistry:
        return ModelRegistry(db=db, settings=settings)

    return build


@pytest.fixture
async def registry(db, registry_for) -> ModelRegistry:
    return registry_for(db)


async def register(registry: ModelRegistry, tmp_path: Path, name: str = "support-summarizer", seed: int = 0,
                   version: str | None = None, **fields) -> str:
    src = make_model_dir(tmp_path / f"src-{name.replace('/', '_')}-{seed}-{version}", seed=seed)
    kwargs = {"name": name, "model_type": fields.pop("model_type", ModelType.LORA_ADAPTER), **fields}
    if version:
        kwargs["version"] = version
    return await registry.register_model(ModelArtifact(**kwargs), source_dir=str(src))


async def to_staging(registry: ModelRegistry, model_id: str) -> None:
    await registry.record_validation(validation(model_id))
    await registry.promote_model(model_id, "staging", actor="ci")


async def to_production(registry: ModelRegistry, model_id: str) -> None:
    await to_staging(registry, model_id)
    await registry.promote_model(model_id, "PRODUCTION", actor="ci", approvals=["deployer=dana", "ml_manager=max"])


async def count(db: Database, table, *where) -> int:
    async with db.session() as s:
        return int(await s.scalar(select(func.count()).select_from(table).where(*where)) or 0)


# --- registration -------------------------------------------------------------------------------------------------


async def test_register_copies_hashes_signs_and_records(db, registry, tmp_path, settings):
    before = metric("l07_models_registered_total", model_type="LORA_ADAPTER")
    model_id = await register(registry, tmp_path, version="1.0.0")
    model = await registry.get_model(model_id)

    assert model.stage is ModelStage.DEVELOPMENT and model.version == "1.0.0" and model.signed
    folder = Path(model.artifact_path.removeprefix("file://"))
    assert folder == Path(settings.artifact_root) / "models" / "support-summarizer" / "1.0.0"
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert sorted(f["path"] for f in manifest["files"]) == ["config.json", "model.safetensors", "tokenizer/tokenizer.json"]
    assert model.checksum == manifest_checksum(manifest) and model.checksum.startswith("sha256:")
    SigningKeyring(settings.signing_key_path).verify(model.checksum.encode(), model.signature, model.signing_key_version)
    assert model.artifact_size_bytes == sum(f["size"] for f in manifest["files"])
    assert [h.stage for h in model.stage_history] == [ModelStage.DEVELOPMENT]
    assert await count(db, SqlAuditLog, SqlAuditLog.action == "model.register", SqlAuditLog.resource_id == model_id) == 1
    assert metric("l07_models_registered_total", model_type="LORA_ADAPTER") == before + 1
    key_file = Path(settings.signing_key_path) / f"{model.signing_key_version}.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (await registry.verify(model_id)).ok


async def test_versions_are_immutable_and_auto_bumped(db, registry, tmp_path):
    first = await register(registry, tmp_path, version="1.0.0")
    with pytest.raises(L07Error) as exc:
        await register(registry, tmp_path, seed=1, version="1.0.0")
    assert exc.value.code.value == "E7045"
    assert await count(db, SqlModel) == 1
    # No explicit version: the next MINOR version of the name.
    second = await register(registry, tmp_path, seed=2)
    assert (await registry.get_model(second)).version == "1.1.0"
    assert await registry.next_version("support-summarizer", "MAJOR") == "2.0.0"
    assert await registry.next_version("new-name") == "1.0.0"
    assert (await registry.verify(first)).ok


async def test_missing_or_unreadable_files_store_nothing(db, registry, tmp_path, settings):
    with pytest.raises(L07Error) as exc:
        await registry.register_model(ModelArtifact(name="m", model_type=ModelType.BASE), source_dir=str(tmp_path / "nope"))
    assert exc.value.code.value == "E7042"
    broken = make_model_dir(tmp_path / "broken")
    os.symlink(tmp_path / "does-not-exist", broken / "weights-2.safetensors")
    with pytest.raises(L07Error) as exc:
        await registry.register_model(ModelArtifact(name="m", model_type=ModelType.BASE), source_dir=str(broken))
    assert exc.value.code.value == "E7042" and "weights-2.safetensors" in exc.value.message
    with pytest.raises(L07Error) as exc:
        await registry.register_model(ModelArtifact(name="m", model_type=ModelType.BASE))
    assert exc.value.code.value == "E7042"
    assert await count(db, SqlModel) == 0
    assert not (Path(settings.artifact_root) / "models" / "m").exists() or not any((Path(settings.artifact_root) / "models" / "m").iterdir())


def test_local_store_never_overwrites_a_version(tmp_path):
    from L07_learning.services.registry.artifact_store import ArtifactStore

    store = ArtifactStore(str(tmp_path / "artifacts"))
    src = make_model_dir(tmp_path / "src")
    files = hash_local_tree(src)
    dest = store.put(src, "org/m", "1.0.0", files)
    with pytest.raises(L07Error) as exc:
        store.put(make_model_dir(tmp_path / "src2", seed=1), "org/m", "1.0.0", hash_local_tree(tmp_path / "src2"))
    assert exc.value.code.value == "E7045"
    assert ArtifactStore.check_files(store.url(dest), {"files": files}) == [f"{MANIFEST_FILE}: missing"]


async def test_caller_checksum_must_match_and_names_cannot_escape(registry, tmp_path):
    src = make_model_dir(tmp_path / "src")
    with pytest.raises(L07Error) as exc:
        await registry.register_model(ModelArtifact(name="m", model_type=ModelType.BASE, checksum="sha256:" + "0" * 64),
                                      source_dir=str(src))
    assert exc.value.code.value == "E7207"
    with pytest.raises(L07Error) as exc:
        await registry.register_model(ModelArtifact(name="../../etc", model_type=ModelType.BASE), source_dir=str(src))
    assert exc.value.code.value == "E7110"


async def test_unknown_model_is_e7250(registry):
    for call in (registry.get_model("nope"), registry.verify("nope"), registry.local_path("nope"),
                 registry.promote_model("nope", "staging"), registry.lineage("nope")):
        with pytest.raises(L07Error) as exc:
            await call
        assert exc.value.code.value == "E7250"


# --- tamper detection ---------------------------------------------------------------------------------------------


async def test_one_flipped_byte_is_refused_by_verification_and_every_load(db, registry, tmp_path):
    model_id = await register(registry, tmp_path, version="1.0.0")
    await registry.record_validation(validation(model_id))
    model = await registry.get_model(model_id)
    weights = Path(model.artifact_path.removeprefix("file://")) / "model.safetensors"
    assert await registry.local_path(model_id) == str(weights.parent)

    weights.chmod(0o644)
    data = bytearray(weights.read_bytes())
    data[1234] ^= 0x01
    weights.write_bytes(bytes(data))

    report = await registry.verify(model_id)
    assert not report.ok and report.error_code == "E7207" and report.signature_ok
    assert any("model.safetensors" in p for p in report.problems)
    for load in (registry.get_model(model_id, verify=True), registry.local_path(model_id),
                 registry.promote_model(model_id, "staging")):
        with pytest.raises(L07Error) as exc:
            await load
        assert exc.value.code.value == "E7207"
    assert (await registry.get_model(model_id)).stage is ModelStage.DEVELOPMENT
    assert await count(db, SqlAuditLog, SqlAuditLog.result == "denied", SqlAuditLog.error_code == "E7207") >= 3


async def test_added_file_and_forged_signature_are_refused(db, registry, tmp_path):
    model_id = await register(registry, tmp_path, version="1.0.0")
    model = await registry.get_model(model_id)
    folder = Path(model.artifact_path.removeprefix("file://"))
    (folder / "extra.bin").write_bytes(b"payload")
    report = await registry.verify(model_id)
    assert not report.ok and any("extra.bin" in p for p in report.problems)
    (folder / "extra.bin").unlink()
    assert (await registry.verify(model_id)).ok

    other = await register(registry, tmp_path, name="other", version="1.0.0", seed=3)
    forged = (await registry.get_model(other)).signature  # a real signature, but over another checksum
    async with db.session() as s:
        await s.execute(update(SqlModel).where(SqlModel.model_id == model_id).values(signature=forged))
    with pytest.raises(L07Error) as exc:
        await registry.local_path(model_id)
    assert exc.value.code.value == "E7201"


async def test_remote_fsspec_store_is_verified_on_the_downloaded_copy(sqlite_db, settings, tmp_path):
    import uuid

    import fsspec

    from L07_learning.services.registry.artifact_store import ArtifactStore

    root = f"memory://l07-{uuid.uuid4().hex}"
    registry = ModelRegistry(db=sqlite_db, settings=settings, store=ArtifactStore(root, cache_dir=tmp_path / "cache"))
    model_id = await register(registry, tmp_path, version="1.0.0")
    model = await registry.get_model(model_id)
    assert model.artifact_path.startswith("memory://") and (await registry.verify(model_id)).ok
    local = Path(await registry.local_path(model_id))
    assert local.parent == tmp_path / "cache" and (local / "model.safetensors").exists()

    fs, path = fsspec.core.url_to_fs(model.artifact_path)
    data = bytearray(fs.cat_file(f"{path}/model.safetensors"))
    data[7] ^= 0x80
    fs.pipe_file(f"{path}/model.safetensors", bytes(data))
    with pytest.raises(L07Error) as exc:
        await registry.local_path(model_id)
    assert exc.value.code.value == "E7207"
    # The store itself refuses to overwrite a version folder, whatever the database says.
    files = hash_local_tree(make_model_dir(tmp_path / "again", seed=5))
    with pytest.raises(L07Error) as exc:
        registry.store.put(tmp_path / "again", model.name, "1.0.0", files)
    assert exc.value.code.value == "E7045"
    assert (await registry.verify(model_id)).error_code == "E7207"  # the tampered file stays as it was


# --- keys ---------------------------------------------------------------------------------------------------------


async def test_key_rotation_keeps_previous_signatures_verifiable(db, registry, tmp_path):
    old = await register(registry, tmp_path, version="1.0.0")
    result = await registry.rotate_signing_key(actor="sec")
    assert result["key"].version == "l07-signing-v002" and result["retired"] == []
    new = await register(registry, tmp_path, version="1.1.0", seed=1)
    assert (await registry.get_model(new)).signing_key_version == "l07-signing-v002"
    assert (await registry.verify(old)).ok and (await registry.verify(new)).ok
    # Contract §7.4: the active key and the 2 previous ones verify; a third rotation retires v001.
    await registry.rotate_signing_key(actor="sec")
    assert (await registry.verify(old)).ok
    result = await registry.rotate_signing_key(actor="sec")
    assert result["retired"] == ["l07-signing-v001"] and result["models_on_retired_keys"] == 1
    report = await registry.verify(old)
    assert not report.ok and report.error_code == "E7201"
    assert (await registry.verify(new)).ok
    assert [k.status for k in registry.list_signing_keys()] == ["active", "previous", "previous", "retired"]
    assert await count(db, SqlAuditLog, SqlAuditLog.action == "key.rotate") == 3


async def test_configured_pem_key_is_used_and_cannot_be_rotated_here(db, tmp_path, settings):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = tmp_path / "vault-export.pem"
    pem.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    registry = ModelRegistry(db=db, settings=settings, keyring=SigningKeyring(pem))
    model_id = await register(registry, tmp_path, version="1.0.0")
    assert (await registry.get_model(model_id)).signing_key_version.startswith("l07-signing-ext-")
    assert (await registry.verify(model_id)).ok
    with pytest.raises(L07Error) as exc:
        await registry.rotate_signing_key()
    assert exc.value.code.value == "E7200"


# --- stages -------------------------------------------------------------------------------------------------------


async def _model_in(registry: ModelRegistry, tmp_path: Path, state: str, tag: str) -> str:
    """A model of its own name in one of the states of the stage table."""
    name = f"walk-{tag}"
    mid = await register(registry, tmp_path, name=name, version="1.0.0")
    if state == "DEVELOPMENT":
        return mid
    if state == "REJECTED":
        await registry.record_validation(validation(mid, Recommendation.REJECT, regression=StageOutcome.FAIL))
        await registry.promote_model(mid, "rejected")
        return mid
    if state == "ARCHIVED":
        await registry.promote_model(mid, "archived", approvals=["admin=ada"])
        return mid
    if state == "STAGING":
        await to_staging(registry, mid)
        return mid
    await to_production(registry, mid)
    if state == "ACTIVE":
        return mid
    successor = await register(registry, tmp_path, name=name, version="1.1.0", seed=9)
    await to_production(registry, successor)  # mid becomes STANDBY
    return mid


_STATES = ["DEVELOPMENT", "STAGING", "ACTIVE", "STANDBY", "ARCHIVED", "REJECTED"]
_LEGAL = {
    ("DEVELOPMENT", "STAGING"), ("DEVELOPMENT", "REJECTED"), ("DEVELOPMENT", "ARCHIVED"),
    ("STAGING", "PRODUCTION"), ("STAGING", "ARCHIVED"), ("STANDBY", "ARCHIVED"), ("REJECTED", "ARCHIVED"),
}


async def test_every_legal_and_every_illegal_transition(db, registry, tmp_path):
    approvals = {
        "STAGING": [], "PRODUCTION": ["deployer=dana", "ml_manager=max"], "ARCHIVED": ["admin=ada"],
        "REJECTED": ["reviewer=rita"],
    }
    for i, state in enumerate(_STATES):
        for j, target in enumerate(s.value for s in ModelStage):
            mid = await _model_in(registry, tmp_path, state, f"{i}-{j}")
            before = await registry.get_model(mid)
            if state == "DEVELOPMENT" and target == "STAGING":
                await registry.record_validation(validation(mid))
            if (state, target) in _LEGAL:
                after = await registry.promote_model(mid, target.lower(), actor="walker", approvals=approvals[target])
                assert after.stage.value == target, (state, target)
                assert after.stage_history[-1].stage.value == target and after.stage_history[-1].transitioned_by == "walker"
                continue
            with pytest.raises(L07Error) as exc:
                await registry.promote_model(mid, target, actor="walker", approvals=approvals.get(target, []))
            assert exc.value.code.value == "E7251", (state, target, exc.value)
            assert before.stage.value in exc.value.message and "Allowed from" in exc.value.message
            assert exc.value.details["allowed"] == [s.value for s in ALLOWED[before.stage]] or state == "ACTIVE"
            after = await registry.get_model(mid)
            assert (after.stage, after.serving_state) == (before.stage, before.serving_state)
            assert len(after.stage_history) == len(before.stage_history)
    denied = await count(db, SqlAuditLog, SqlAuditLog.action == "model.promote", SqlAuditLog.result == "denied")
    assert denied == len(_STATES) * len(ModelStage) - len(_LEGAL)


async def test_staging_needs_a_passed_validation_or_a_reviewer(db, registry, tmp_path):
    mid = await register(registry, tmp_path, version="1.0.0")
    with pytest.raises(L07Error) as exc:
        await registry.promote_model(mid, "staging")
    assert exc.value.code.value == "E7203"
    await registry.record_validation(validation(mid, Recommendation.REVIEW))
    assert (await registry.get_model(mid)).validation_status == "CONDITIONAL"
    with pytest.raises(L07Error) as exc:
        await registry.promote_model(mid, "staging")
    assert exc.value.code.value == "E7252" and exc.value.details["missing"] == ["reviewer"]
    await registry.approve(mid, "reviewer", "rita")
    staged = await registry.promote_model(mid, "Staging", actor="ci")
    assert staged.stage is ModelStage.STAGING
    assert staged.stage_history[-1].approvals[0]["actor"] == "rita"
    # The approval was used up: it cannot authorise anything else.
    async with db.session() as s:
        events = (await s.scalars(select(SqlOutboxEvent).where(SqlOutboxEvent.subject == mid))).all()
    assert [e.event_type for e in events] == ["com.agentic.learning.model_deployment_approved"]
    assert events[0].payload["data"]["to_stage"] == "STAGING"


async def test_production_needs_deployer_and_ml_manager_from_two_people(db, registry, tmp_path):
    mid = await register(registry, tmp_path, version="1.0.0")
    await to_staging(registry, mid)
    with pytest.raises(L07Error) as exc:
        await registry.promote_model(mid, "production", approvals=["deployer=dana"])
    assert exc.value.code.value == "E7252" and exc.value.details["missing"] == ["ml_manager"]
    with pytest.raises(L07Error) as exc:
        await registry.promote_model(mid, "production", approvals=["deployer=dana", "ml_manager=dana"])
    assert exc.value.code.value == "E7252"
    assert (await registry.get_model(mid)).stage is ModelStage.STAGING  # refused approvals were not kept either
    await registry.approve(mid, "deployer", "dana")
    await registry.approve(mid, "ml_manager", "max")
    prod = await registry.promote_model(mid, "production", actor="dana")
    assert (prod.stage, prod.serving_state) == (ModelStage.PRODUCTION, ServingState.ACTIVE)
    chain = prod.stage_history[-1].approvals
    assert {(a["role"], a["actor"]) for a in chain} == {("deployer", "dana"), ("ml_manager", "max")}
    async with db.session() as s:
        event = await s.scalar(select(SqlOutboxEvent).where(SqlOutboxEvent.subject == mid).order_by(SqlOutboxEvent.id.desc()))
    assert event.payload["data"]["to_stage"] == "PRODUCTION"
    assert event.payload["data"]["canary_config"]["traffic_percentage"] == 20
    assert len(event.payload["data"]["approval_chain"]) == 2


async def test_production_gates_on_regression_and_safety(registry, tmp_path):
    mid = await register(registry, tmp_path, version="1.0.0")
    await registry.record_validation(validation(mid, Recommendation.REVIEW, regression=StageOutcome.REVIEW))
    await registry.approve(mid, "reviewer", "rita")
    await registry.promote_model(mid, "staging")
    with pytest.raises(L07Error) as exc:
        await registry.promote_model(mid, "production", approvals=["deployer=dana", "ml_manager=max"])
    assert exc.value.code.value == "E7204"
    await registry.record_validation(validation(mid, Recommendation.REVIEW, safety=StageOutcome.FAIL))
    with pytest.raises(L07Error) as exc:
        await registry.promote_model(mid, "production", approvals=["deployer=dana", "ml_manager=max"])
    assert exc.value.code.value == "E7203"


# --- the stage rules alone: plain functions of (model, approvals, validation), no database ------------------------


def at_stage(stage: ModelStage, serving: ServingState = ServingState.NONE) -> ModelArtifact:
    return ModelArtifact(name="rules-only", model_type=ModelType.LORA_ADAPTER, stage=stage, serving_state=serving)


def approval(row_id: int, role: str, actor: str) -> dict:
    return {"id": row_id, "role": role, "actor": actor, "at": "2025-01-01T00:00:00+00:00"}


def test_staging_rules_without_a_database():
    model = at_stage(ModelStage.DEVELOPMENT)
    chain = requirements(model, [], validation(model.model_id), ModelStage.STAGING)
    assert [a["role"] for a in chain] == ["validator"]
    review = validation(model.model_id, Recommendation.REVIEW)
    with pytest.raises(L07Error) as exc:
        requirements(model, [], review, ModelStage.STAGING)
    assert (exc.value.code.value, exc.value.details["missing"]) == ("E7252", ["reviewer"])
    rita = approval(1, "reviewer", "rita")
    assert requirements(model, [rita], review, ModelStage.STAGING) == [rita]
    with pytest.raises(L07Error) as exc:
        requirements(model, [], None, ModelStage.STAGING)
    assert exc.value.code.value == "E7203"


def test_production_rules_without_a_database():
    model = at_stage(ModelStage.STAGING)
    given = [approval(1, "deployer", "dana"), approval(2, "ml_manager", "dana"), approval(3, "ml_manager", "max")]
    chain = requirements(model, given, validation(model.model_id), ModelStage.PRODUCTION)
    assert [a["id"] for a in chain] == [1, 3]  # the deployer's own ml_manager approval is passed over
    with pytest.raises(L07Error) as exc:
        requirements(model, given[:2], validation(model.model_id), ModelStage.PRODUCTION)
    assert exc.value.code.value == "E7252"
    with pytest.raises(L07Error) as exc:
        production_gates(model, validation(model.model_id, regression=StageOutcome.REVIEW))
    assert exc.value.code.value == "E7204"
    with pytest.raises(L07Error) as exc:
        production_gates(model, validation(model.model_id, safety=StageOutcome.FAIL))
    assert exc.value.code.value == "E7203"


def test_transition_table_and_approval_parsing_without_a_database():
    assert allowed_targets(ModelStage.PRODUCTION, ServingState.ACTIVE) == []
    assert allowed_targets(ModelStage.PRODUCTION, ServingState.STANDBY) == [ModelStage.ARCHIVED]
    with pytest.raises(L07Error) as exc:
        check_transition(at_stage(ModelStage.DEVELOPMENT), ModelStage.PRODUCTION)
    assert exc.value.code.value == "E7251" and "only through STAGING" in exc.value.message
    parsed = parse_approvals(["deployer=dana", {"role": "ML_MANAGER", "actor": " max "}, ("admin", "ada")])
    assert parsed == [("deployer", "dana"), ("ml_manager", "max"), ("admin", "ada")]
    for bad in (["owner=olga"], ["deployer= "], [42]):
        with pytest.raises(L07Error):
            parse_approvals(bad)


async def test_superseded_goes_standby_and_rollback_restores_it(db, registry, tmp_path):
    v1 = await register(registry, tmp_path, version="1.0.0")
    v2 = await register(registry, tmp_path, version="1.1.0", seed=1)
    await to_production(registry, v1)
    await to_production(registry, v2)
    assert (await registry.get_model(v1)).serving_state is ServingState.STANDBY
    assert (await registry.get_model(v2)).serving_state is ServingState.ACTIVE

    before = metric("l07_model_rollback_total", reason="manual")
    active = await registry.rollback("support-summarizer", actor="dana")
    assert active.model_id == v1 and active.serving_state is ServingState.ACTIVE
    assert (await registry.get_model(v2)).serving_state is ServingState.STANDBY
    assert metric("l07_model_rollback_total", reason="manual") == before + 1
    async with db.session() as s:
        rb = await s.scalar(select(SqlAuditLog).where(SqlAuditLog.action == "model.rollback"))
        failed = await s.scalar(select(SqlOutboxEvent).where(
            SqlOutboxEvent.event_type == "com.agentic.learning.model_deployment_failed"))
    assert rb.details["incident"]["from_model_id"] == v2 and rb.details["incident"]["to_model_id"] == v1
    assert failed.payload["data"]["rolled_back_to"] == v1
    # The rolled-back version is not a default rollback target; naming it explicitly works.
    with pytest.raises(L07Error) as exc:
        await registry.rollback(v1)
    assert exc.value.code.value == "E7251"
    again = await registry.rollback(v1, to_version="1.1.0", reason="bug")
    assert again.model_id == v2
    with pytest.raises(L07Error) as exc:
        await registry.rollback("support-summarizer", to_version="9.9.9")
    assert exc.value.code.value == "E7251"


async def test_rollback_target_is_verified_before_activation(registry, tmp_path):
    v1 = await register(registry, tmp_path, version="1.0.0")
    v2 = await register(registry, tmp_path, version="1.1.0", seed=1)
    await to_production(registry, v1)
    await to_production(registry, v2)
    weights = Path((await registry.get_model(v1)).artifact_path.removeprefix("file://")) / "config.json"
    weights.chmod(0o644)
    weights.write_text(weights.read_text().replace("llama", "llamb"))
    with pytest.raises(L07Error) as exc:
        await registry.rollback("support-summarizer")
    assert exc.value.code.value == "E7207"
    assert (await registry.get_model(v2)).serving_state is ServingState.ACTIVE


async def test_database_allows_one_active_per_name(db, registry, tmp_path):
    from sqlalchemy.exc import IntegrityError

    v1 = await register(registry, tmp_path, version="1.0.0")
    v2 = await register(registry, tmp_path, version="1.1.0", seed=1)
    await to_production(registry, v1)
    with pytest.raises(IntegrityError):
        async with db.session() as s:
            await s.execute(update(SqlModel).where(SqlModel.model_id == v2).values(stage="PRODUCTION", serving_state="ACTIVE"))


async def test_archive_superseded_after_30_days(db, registry, tmp_path):
    v1 = await register(registry, tmp_path, version="1.0.0")
    v2 = await register(registry, tmp_path, version="1.1.0", seed=1)
    await to_production(registry, v1)
    await to_production(registry, v2)
    assert await registry.archive_superseded() == []
    assert await registry.archive_superseded(older_than_days=-1) == [v1]
    assert (await registry.get_model(v1)).stage is ModelStage.ARCHIVED
    assert (await registry.get_model(v2)).serving_state is ServingState.ACTIVE


# --- concurrency on PostgreSQL ------------------------------------------------------------------------------------


async def _race(db: Database, registry: ModelRegistry, ids: list[str]) -> list:
    """Promote ``ids`` to PRODUCTION at the same time.

    A third connection holds the candidates' rows while both promotions start, so both have read the current state
    and wait inside their transactions before either can commit: a real overlap, not a lucky interleaving.
    """
    waiting = 0
    async with db.engine.connect() as holder:
        tx = await holder.begin()
        await holder.execute(select(SqlModel.model_id).where(SqlModel.model_id.in_(ids)).with_for_update())
        task = asyncio.ensure_future(asyncio.gather(*(registry.promote_model(i, "production") for i in ids),
                                                    return_exceptions=True))
        try:
            for _ in range(600):
                # pg_stat_activity is snapshotted per transaction; clear it to see the current waits.
                await holder.execute(text("SELECT pg_stat_clear_snapshot()"))
                waiting = await holder.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"))
                if waiting >= len(ids) or task.done():
                    break
                await asyncio.sleep(0.05)
        finally:
            await tx.rollback()
    results = await task
    assert waiting >= len(ids), f"the promotions did not overlap: {results}"
    return results


@pytest.mark.postgres
async def test_concurrent_production_promotions_exactly_one_wins(pg_db, registry_for, tmp_path):
    registry = registry_for(pg_db)
    ids = [await register(registry, tmp_path, name="race", version=f"1.{i}.0", seed=i) for i in range(4)]
    for mid in ids:
        await to_staging(registry, mid)
    for first, second in ((ids[0], ids[1]), (ids[2], ids[3])):
        # Round 1: nothing is ACTIVE yet. Round 2: a version is ACTIVE and both try to supersede it.
        for mid in (first, second):
            await registry.approve(mid, "deployer", "dana")
            await registry.approve(mid, "ml_manager", "max")
        results = await _race(pg_db, registry, [first, second])
        winners = [r for r in results if not isinstance(r, Exception)]
        losers = [r for r in results if isinstance(r, Exception)]
        assert len(winners) == 1 and len(losers) == 1, results
        assert isinstance(losers[0], L07Error) and losers[0].code.value == "E7251"
        assert "ACTIVE" in losers[0].message
        loser_id = second if winners[0].model_id == first else first
        assert (await registry.get_model(loser_id)).stage is ModelStage.STAGING
        async with pg_db.session() as s:
            active = (await s.scalars(select(SqlModel.model_id).where(
                SqlModel.name == "race", SqlModel.serving_state == "ACTIVE"))).all()
        assert active == [winners[0].model_id]


# --- validation, comparison, lineage, base model -------------------------------------------------------------------


async def test_compare_models_side_by_side(registry, tmp_path):
    a = await register(registry, tmp_path, version="1.0.0", metrics={"training_metrics": {"loss": 2.0}})
    b = await register(registry, tmp_path, version="1.1.0", seed=1, metrics={"training_metrics": {"loss": 1.5}})
    await registry.record_validation(validation(a, Recommendation.REVIEW, regression=StageOutcome.REVIEW))
    await registry.record_validation(validation(b))
    cmp = await registry.compare_models(a, b)
    loss = next(m for m in cmp["metrics"] if m["metric"] == "training_metrics.loss")
    assert (loss["a"], loss["b"], loss["delta"]) == (2.0, 1.5, -0.5)
    reg = next(s for s in cmp["validation_stages"] if s["stage"] == "regression")
    assert (reg["a"], reg["b"]) == ("REVIEW", "PASS")
    assert cmp["a"]["validation"]["recommendation"] == "REVIEW" and cmp["b"]["validation"]["verdict"] == "APPROVED"


async def test_lineage_walks_job_dataset_events_and_parents(db, registry, tmp_path):
    base = await register(registry, tmp_path, name="org/base", version="1.0.0", model_type=ModelType.BASE,
                          base_model_name="org/base")
    async with db.session() as s:
        s.add(SqlDataset(dataset_id="ds-1", name="support", latest_version="1.2.0"))
        s.add(SqlDatasetVersion(dataset_id="ds-1", version="1.2.0", change_type="MINOR", checksum_sha256="ab" * 32,
                                statistics={}, lineage={"source_event_ids": ["ev-1", "ev-2", "ev-3"]}, manifest={}, data={}))
        s.add(SqlTrainingJob(job_id="job-7", job_type="sft", status="COMPLETED", config={"learning_rate": 2e-4, "lora_rank": 8},
                             dataset_id="ds-1", dataset_version="1.2.0", base_model_id=base))
    child = await register(registry, tmp_path, name="support-summarizer", version="1.0.0", parent_model_id=base,
                           training_job_id="job-7")
    lin = await registry.lineage(child)
    assert (lin.training_job_id, lin.dataset_id, lin.dataset_version) == ("job-7", "ds-1", "1.2.0")
    assert lin.dataset_checksum == "ab" * 32 and lin.source_event_ids == ["ev-1", "ev-2", "ev-3"]
    assert lin.hyperparameters["lora_rank"] == 8
    assert [p.model_id for p in lin.parents] == [base] and lin.base_model_name == "org/base"


async def test_ensure_base_model_is_idempotent(db, registry, tmp_path):
    src = make_model_dir(tmp_path / "smol")
    first = await registry.ensure_base_model(source=str(src))
    again = await registry.ensure_base_model(source=str(src))
    assert first.model_id == again.model_id and first.name == DEFAULT_BASE_MODEL and first.model_type is ModelType.BASE
    assert await count(db, SqlModel) == 1
    local = await registry.register_base(str(src), name="org/other-base")
    assert local.model_type is ModelType.BASE and local.name == "org/other-base"
    with pytest.raises(L07Error) as exc:
        await registry.register_base(str(tmp_path / "smol" / "tokenizer"))
    assert exc.value.code.value == "E7032"


@pytest.mark.slow
async def test_default_base_model_is_registered_once_and_loads_verified(sqlite_db, registry_for):
    registry = registry_for(sqlite_db)
    base = await registry.ensure_base_model()
    assert (base.name, base.model_type, base.stage) == (DEFAULT_BASE_MODEL, ModelType.BASE, ModelStage.DEVELOPMENT)
    assert (await registry.ensure_base_model()).model_id == base.model_id
    path = await registry.local_path(base.model_id)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(path).model_type == "llama"
    assert (await registry.verify(base.model_id)).bytes_checked > 100_000_000


async def test_stage_history_and_audit_cover_every_change(db, registry, tmp_path):
    mid = await register(registry, tmp_path, version="1.0.0")
    await to_production(registry, mid)
    async with db.session() as s:
        hist = (await s.scalars(select(SqlModelStageHistory.to_stage).where(SqlModelStageHistory.model_id == mid)
                                .order_by(SqlModelStageHistory.id))).all()
        actions = (await s.scalars(select(SqlAuditLog.action).where(SqlAuditLog.resource_id == mid)
                                   .order_by(SqlAuditLog.timestamp))).all()
    assert hist == ["DEVELOPMENT", "STAGING", "PRODUCTION"]
    assert actions.count("model.promote") == 2 and "model.register" in actions and "model.validation_recorded" in actions


# --- CLI ----------------------------------------------------------------------------------------------------------


def test_cli_models_and_keys(l07_home, tmp_path):
    from typer.testing import CliRunner

    from L07_learning.cli.main import app

    runner = CliRunner()
    src = make_model_dir(tmp_path / "base")
    out = runner.invoke(app, ["models", "register-base", str(src), "--name", "org/tiny", "--json"])
    assert out.exit_code == 0, out.output
    model_id = json.loads(out.stdout)["model_id"]
    listed = json.loads(runner.invoke(app, ["models", "list", "--json"]).stdout)
    assert listed["count"] == 1 and listed["data"][0]["stage"] == "DEVELOPMENT"
    assert runner.invoke(app, ["models", "verify", model_id]).exit_code == 0
    denied = runner.invoke(app, ["models", "promote", model_id, "production", "--json"])
    assert denied.exit_code == 2 and json.loads(denied.stdout)["error"]["code"] == "E7251"
    lineage = runner.invoke(app, ["models", "lineage", model_id])
    assert lineage.exit_code == 0 and model_id in lineage.stdout
    rotated = json.loads(runner.invoke(app, ["keys", "rotate", "--actor", "sec", "--json"]).stdout)
    assert rotated["key"]["version"] == "l07-signing-v002"
    keys = json.loads(runner.invoke(app, ["keys", "list", "--json"]).stdout)
    assert [k["status"] for k in keys["data"]] == ["active", "previous"]
    weights = Path(json.loads(runner.invoke(app, ["models", "show", model_id, "--json"]).stdout)["model"]["artifact_path"]
                   .removeprefix("file://")) / "model.safetensors"
    weights.chmod(0o644)
    data = weights.read_bytes()
    weights.write_bytes(bytes([data[0] ^ 0x01]) + data[1:])
    bad = runner.invoke(app, ["models", "verify", model_id, "--json"])
    assert bad.exit_code == 2 and json.loads(bad.stdout)["error_code"] == "E7207"
