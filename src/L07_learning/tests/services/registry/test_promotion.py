"""A promotion whose database fails part-way: the caller gets E7202, nothing changes (not even the approvals given
with it), and the refusal is audited."""

from __future__ import annotations

from sqlalchemy import select, text

from L07_learning.models import L07Error, ModelArtifact, ModelStage, ModelType
from L07_learning.services.model_registry import ModelRegistry
from L07_learning.store.tables import SqlAuditLog, SqlModelApproval

from .test_registry import make_model_dir


async def test_database_failing_inside_the_promotion_is_e7202_and_audited(sqlite_db, settings, tmp_path):
    registry = ModelRegistry(db=sqlite_db, settings=settings)
    model_id = await registry.register_model(
        ModelArtifact(name="db-fails", model_type=ModelType.LORA_ADAPTER), source_dir=str(make_model_dir(tmp_path / "m"))
    )
    # The table the locked transaction reads the latest validation from is gone: an OperationalError, not a gate.
    async with sqlite_db.engine.begin() as conn:
        await conn.execute(text("DROP TABLE l07_validation_results"))

    try:
        await registry.promote_model(model_id, "staging", actor="ci", approvals=["reviewer=rita"])
    except L07Error as exc:
        err = exc
    else:
        raise AssertionError("the promotion went through without its validation table")

    assert err.code.value == "E7202" and "busy or unreachable" in err.message
    model = await registry.get_model(model_id)
    assert model.stage is ModelStage.DEVELOPMENT and [h.stage for h in model.stage_history] == [ModelStage.DEVELOPMENT]
    async with sqlite_db.session() as s:
        rows = (await s.scalars(select(SqlAuditLog).where(SqlAuditLog.action == "model.promote"))).all()
        approvals = (await s.scalars(select(SqlModelApproval))).all()
    assert approvals == []  # given with the request, so rolled back with it
    assert [(r.result, r.error_code, r.resource_id) for r in rows] == [("denied", "E7202", model_id)]
