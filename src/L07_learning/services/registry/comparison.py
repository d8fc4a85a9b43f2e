"""Two registered models side by side: metrics with their differences, and validation stage outcomes."""

from __future__ import annotations

from typing import Any

from ...models.model_artifact import ModelArtifact
from ...models.validation import ValidationResult


def compare(
    a: ModelArtifact, va: ValidationResult | None, b: ModelArtifact, vb: ValidationResult | None
) -> dict[str, Any]:
    """Models ``a`` and ``b`` with their latest validations; ``delta`` = b - a for numeric metrics."""
    fa, fb = _flatten(a.metrics), _flatten(b.metrics)
    metrics = []
    for key in sorted(set(fa) | set(fb)):
        x, y = fa.get(key), fb.get(key)
        numeric = isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool) and not isinstance(y, bool)
        metrics.append({"metric": key, "a": x, "b": y, "delta": (y - x) if numeric else None})
    stages = []
    for name in sorted(set(va.stages if va else {}) | set(vb.stages if vb else {})):
        sa = va.stages.get(name) if va else None
        sb = vb.stages.get(name) if vb else None
        stages.append({
            "stage": name, "a": sa.outcome.value if sa else None, "b": sb.outcome.value if sb else None,
            "a_metrics": sa.metrics if sa else {}, "b_metrics": sb.metrics if sb else {},
        })
    return {"a": _summary(a, va), "b": _summary(b, vb), "metrics": metrics, "validation_stages": stages}


def _summary(m: ModelArtifact, v: ValidationResult | None) -> dict[str, Any]:
    return {
        "model_id": m.model_id, "name": m.name, "version": m.version, "model_type": m.model_type.value,
        "stage": m.stage.value, "serving_state": m.serving_state.value, "validation_status": m.validation_status,
        "artifact_size_bytes": m.artifact_size_bytes, "parent_model_id": m.parent_model_id,
        "dataset_id": m.dataset_id, "dataset_version": m.dataset_version,
        "validation": None if v is None else {
            "validation_id": v.validation_id, "recommendation": v.recommendation.value,
            "verdict": v.verdict.value, "regression_detected": v.regression_detected,
        },
    }


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested metrics as ``{"a.b.c": value}``."""
    out: dict[str, Any] = {}
    for key, item in value.items():
        full = f"{prefix}{key}"
        if isinstance(item, dict):
            out.update(_flatten(item, full + "."))
        else:
            out[full] = item
    return out
