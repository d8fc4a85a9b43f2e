"""Hand-off of released models to the L04 model gateway (contract §2.3).

In the platform monorepo, L04's in-process registry is importable and L07 registers STAGING and PRODUCTION models
there (and again on start-up, because that registry is in-memory). Everywhere else the published
``learning.model_ready_for_deployment`` event is the whole hand-off; this module then reports ``False``.
"""

from __future__ import annotations

import logging
from typing import Any

from ...models.model_artifact import ModelArtifact
from ..registry.stages import CANARY_CONFIG

log = logging.getLogger(__name__)


def gateway_model_config(model: ModelArtifact, max_seq_length: int, max_output_tokens: int = 512) -> dict[str, Any]:
    """The L04 ``ModelConfig`` fields for a model, mapped as contract §2.3 says."""
    return {
        "model_id": model.model_id,
        "provider": "l07",
        "display_name": f"{model.name} {model.version}",
        "context_window": max_seq_length,
        "max_output_tokens": max_output_tokens,
        "cost_per_1k_input_tokens": 0.0,
        "cost_per_1k_output_tokens": 0.0,
        "metadata": {
            "artifact_url": model.artifact_path,
            "checksum": model.checksum,
            "signature": model.signature,
            "signing_key_version": model.signing_key_version,
            "base_model": model.base_model_name,
            "model_type": model.model_type.value,
            "stage": model.stage.value,
            "canary_config": CANARY_CONFIG,
        },
    }


def _l04_registry() -> Any | None:
    try:
        from src.L04_model_gateway.services.model_registry import ModelRegistry as L04Registry  # type: ignore
    except ImportError:
        return None
    return L04Registry


def register_with_gateway(model: ModelArtifact, max_seq_length: int) -> bool:
    """Register ``model`` with L04's in-process registry when it is importable.

    Returns:
        True when L04 accepted the model, False when L04 is not in this process (the event is the hand-off).
    """
    registry_cls = _l04_registry()
    if registry_cls is None:
        return False
    config = gateway_model_config(model, max_seq_length)
    try:
        from src.L04_model_gateway.models import ModelConfig  # type: ignore

        registry_cls().register_model(ModelConfig(**config))
    except Exception:  # noqa: BLE001 - L04 is another layer; its failure must not undo our release
        log.exception("L04 registration failed; the published event remains the hand-off",
                      extra={"model_id": model.model_id})
        return False
    return True
