"""What a page shows beyond the REST shapes: the buttons a caller may press on a model (the same rules the REST
routes check), and a job's loss curves as points plus a server-drawn SVG (readable without JavaScript)."""

from __future__ import annotations

from typing import Any

from ...models.model_artifact import ModelArtifact, ModelStage
from ...services.registry.stages import allowed_targets
from ..auth import Permission, Principal
from ..routers.models import STAGE_CAPACITIES, STAGE_PERMISSION

TERMINAL = {"COMPLETED", "FAILED", "CANCELLED"}
SVG_W, SVG_H, PAD = 640, 220, 28


def model_actions(model: ModelArtifact, principal: Principal) -> dict[str, Any]:
    """Approvals (stage, capacity), promotions and rollback this caller may press on this model now."""
    targets = allowed_targets(model.stage, model.serving_state)
    approvals = [(t.value, c.value) for t in targets for c in STAGE_CAPACITIES.get(t, ()) if c in principal.capacities]
    promotions = [t.value for t in targets if principal.can(STAGE_PERMISSION[t])]
    rollback = model.stage is ModelStage.PRODUCTION and principal.can(Permission.MODEL_ROLLBACK)
    return {"approvals": approvals, "promotions": promotions, "rollback": rollback,
            "any": bool(approvals or promotions or rollback)}


def _svg_paths(series: dict[str, list[tuple[float, float]]]) -> dict[str, Any]:
    """Polyline points of each series in one shared frame (step on x, loss on y)."""
    points = [p for s in series.values() for p in s]
    if not points:
        return {}
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    dx, dy = (x1 - x0) or 1.0, (y1 - y0) or 1.0

    def at(x: float, y: float) -> str:
        return (f"{PAD + (x - x0) / dx * (SVG_W - 2 * PAD):.1f},"
                f"{SVG_H - PAD - (y - y0) / dy * (SVG_H - 2 * PAD):.1f}")

    return {"lines": {name: " ".join(at(x, y) for x, y in pts) for name, pts in series.items() if pts},
            "x": (x0, x1), "y": (y0, y1), "w": SVG_W, "h": SVG_H, "pad": PAD}


def job_view(job: Any, events: list[dict[str, Any]], principal: Principal) -> dict[str, Any]:
    """Template values of a job page: the job, its curves (train loss per step, eval loss per evaluation), whether
    the page keeps polling, and whether this caller may cancel it (its own job, or an admin: as REST decides)."""
    train = [(float(e["step"]), float(e["payload"]["loss"])) for e in events
             if e["kind"] == "step" and e.get("step") is not None and isinstance(e["payload"].get("loss"), (int, float))]
    evals = [(float(e["payload"].get("step") or e.get("step") or 0), float(e["payload"]["eval_loss"])) for e in events
             if e["kind"] == "eval" and isinstance(e["payload"].get("eval_loss"), (int, float))]
    live = job.status not in TERMINAL
    may_cancel = live and principal.can(Permission.MODEL_TRAIN_LOG) and (
        job.created_by == principal.key_id or principal.is_admin)
    return {"job": job, "curve": {"train_loss": train, "eval_loss": evals}, "svg": _svg_paths(
        {"train_loss": train, "eval_loss": evals}), "live": live, "may_cancel": may_cancel}
