"""Refusals of the registry: each is audited in its own transaction and counted.

The refused change has rolled back by the time this runs, so the audit row is written separately; otherwise the
record of why something was refused would vanish with the change it refused.
"""

from __future__ import annotations

import logging

from ...models.error_codes import L07Error
from ...models.model_artifact import ModelStage
from ...observability.metrics import ERRORS, MODELS_DEPLOYED
from ...store.db import Database
from ...store.repositories.audit import audit

log = logging.getLogger(__name__)


async def record_failure(
    db: Database, action: str, model_id: str | None, actor: str, exc: L07Error, target: ModelStage | None = None,
    resource_type: str = "model",
) -> None:
    """Audit a refusal in its own transaction (the refused one rolled back) and count it."""
    ERRORS.labels(error_code=exc.code.value, error_type="security" if exc.code.value.startswith("E72") else "validation").inc()
    if action == "model.promote" and target is not None:
        MODELS_DEPLOYED.labels(stage=target.value, success="false").inc()
    try:
        async with db.session() as session:
            await audit(session, action, resource_type, model_id, result="denied", actor=actor,
                        details={"message": exc.message, "target_stage": target.value if target else None,
                                 **{k: v for k, v in exc.details.items() if isinstance(v, (str, int, float, bool, list))}},
                        error_code=exc.code.value)
    except Exception as audit_exc:  # noqa: BLE001 - the original refusal must still reach the caller
        log.error("could not audit a refusal", extra={"action": action, "error": str(audit_exc)})
