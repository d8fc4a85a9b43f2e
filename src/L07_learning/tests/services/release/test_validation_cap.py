"""Validations are capped (issue 22): each loads two models, so at most ``max_concurrent_validations`` run at once in
a process; the others wait, and their operations read QUEUED until they get a slot."""

from __future__ import annotations

import asyncio

import pytest

from L07_learning.services.model_registry import ModelRegistry
from L07_learning.services.model_validator import ModelValidator
from L07_learning.services.release.deploy import Operations
from L07_learning.store.db import Database
from L07_learning.tests.api.test_api import quick_settings, register_candidates  # noqa: F401 - fixture


@pytest.mark.slow
async def test_second_validation_queues_until_the_first_is_done(sqlite_db: Database, quick_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    assert quick_settings.max_concurrent_validations == 1  # the default on a CPU host
    models = await register_candidates(sqlite_db, quick_settings, tmp_path)
    registry = ModelRegistry(db=sqlite_db, settings=quick_settings)
    validator = ModelValidator(db=sqlite_db, registry=registry, settings=quick_settings)
    ops = Operations(sqlite_db, validator, registry)
    first = await ops.start("validate", models["intact"], "key-1")
    second = await ops.start("validate", models["damaged"], "key-1")
    assert (first.status, second.status) == ("RUNNING", "QUEUED")
    seen = set()
    while (await ops.get(first.operation_id)).status == "RUNNING":
        seen.add((await ops.get(second.operation_id)).status)
        await asyncio.sleep(0.05)
    assert seen == {"QUEUED"}, "the second validation ran while the first one held the only slot"
    await ops.wait()
    a, b = await ops.get(first.operation_id), await ops.get(second.operation_id)
    assert (a.status, b.status) == ("COMPLETED", "COMPLETED"), (a.error, b.error)
    [va] = await registry.get_validations(models["intact"])
    [vb] = await registry.get_validations(models["damaged"])
    assert vb.started_at >= va.completed_at, "validations overlapped"


async def test_queued_operation_waits_for_the_slot_and_reads_queued(sqlite_db: Database, settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from L07_learning.models import ModelArtifact, ModelType
    from L07_learning.models.error_codes import L07Error
    from L07_learning.tests.services.registry.test_registry import make_model_dir

    registry = ModelRegistry(db=sqlite_db, settings=settings)
    model_id = await registry.register_model(ModelArtifact(name="no-data", model_type=ModelType.BASE),
                                             source_dir=str(make_model_dir(tmp_path / "m")))
    validator = ModelValidator(db=sqlite_db, registry=registry, settings=settings)
    ops = Operations(sqlite_db, validator, registry)
    hold = asyncio.Event()
    # A validation that has its slot and is held at its start (standing in for one that loads two models).
    first = asyncio.create_task(validator.validate_model(model_id, on_start=hold.wait))
    await asyncio.sleep(0)
    assert validator.saturated
    op = await ops.start("validate", model_id, "key-1")
    assert op.status == "QUEUED"
    for _ in range(5):
        await asyncio.sleep(0.05)
        assert (await ops.get(op.operation_id)).status == "QUEUED"
    hold.set()
    with pytest.raises(L07Error) as exc:  # no dataset and no golden suite: E7031, after it got the slot
        await first
    assert exc.value.code.value == "E7031"
    await ops.wait()
    done = await ops.get(op.operation_id)
    assert done.status == "FAILED" and done.error_code == "E7031"  # it ran once the slot was free
    assert not validator.saturated
