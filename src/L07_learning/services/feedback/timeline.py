"""Production quality of every model over one window, with its release and rollback markers: the console's outcomes
page (each model's series is ``model_outcomes``, the same as ``GET /api/v1/models/{id}/outcomes``)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from ...store.db import Database
from ...store.repositories.outcome_timeline import models_with_outcomes, production_transitions
from .outcomes import model_outcomes

__all__ = ["quality_timeline"]

MAX_MODELS = 12


def _marker(row: dict[str, Any]) -> dict[str, Any] | None:
    """A release (a version entering PRODUCTION, as canary or serving) or a rollback (the served version set back
    to STANDBY by a rollback, or the one made ACTIVE again by it); None for other moves inside PRODUCTION."""
    notes = row["notes"] or ""
    if row["from_stage"] != "PRODUCTION":
        kind = "release"
    elif notes.startswith(("rolled back", "rollback")):
        kind = "rollback"
    else:
        return None
    return {"at": row["created_at"], "model_id": row["model_id"], "kind": kind,
            "serving_state": row["serving_state"], "actor": row["actor"], "notes": notes}


async def quality_timeline(db: Database, since: datetime, until: datetime, bucket: timedelta) -> dict[str, Any]:
    """``{models: [{model_id, model_name, summary, series}], markers: [...]}`` for ``[since, until)``: the busiest
    models' mean quality and error rate per ``bucket``, and their releases and rollbacks in the window."""
    async with db.session() as session:
        ids = await models_with_outcomes(session, since, until, MAX_MODELS)
        transitions = await production_transitions(session, ids, since, until)
    models = []
    for model_id in ids:
        found = await model_outcomes(db, model_id, since, until, bucket)
        models.append({k: found[k] for k in ("model_id", "model_name", "summary", "series")})
    markers = [m for m in map(_marker, transitions) if m is not None]
    return {"since": since, "until": until, "bucket_seconds": bucket.total_seconds(), "models": models,
            "markers": markers}
