"""OpenAI's ``dpo`` method as an L07 RLHF job: offline DPO (``RLHFConfig.algorithm = "dpo"``) over exactly the pairs
the training file held (``JobConfig.extra["preference_pairs"] = "stored"``: each accepted preferred answer with the
non-preferred answer of its line), with the reward model and the KL / reward-hacking guards of every RLHF job."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.reward_signal import RLHFConfig

HYPERPARAMETERS = {"beta": "dpo_beta", "n_epochs": "epochs", "batch_size": "batch_size",
                   "learning_rate_multiplier": "learning_rate_policy"}
"""OpenAI dpo hyperparameter -> RLHFConfig field; ``learning_rate_multiplier`` scales the default policy rate."""
FIXED = frozenset({"algorithm", "seed"})
"""RLHFConfig fields a request may not set: the method is DPO, the seed is the request's ``seed``."""
MAX_SEQ_LENGTH = (256, 4096)
"""JobConfig's ``max_seq_length`` range: the job's longest sequence is ``RLHFConfig.max_length``, held to it."""


def invalid(message: str, key: str) -> L07Error:
    return L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, message, param=f"hyperparameters.{key}")


def rlhf_settings(hyperparameters: dict[str, Any], seed: int) -> RLHFConfig:
    """The RLHF settings of a dpo job. ``"auto"`` leaves a field to RLHFConfig's default; other keys must be
    RLHFConfig fields (an L07 extension: ``max_length``, ``lora_rank``, ``reward_training_epochs``...).

    Raises:
        L07Error: E7500 for an unknown key or a value out of range, naming it as ``param``.
    """
    fields: dict[str, Any] = {"algorithm": "dpo", "seed": seed}
    for key, value in hyperparameters.items():
        if value == "auto" or value is None:
            continue
        if key == "learning_rate_multiplier":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise invalid("learning_rate_multiplier must be a positive number", key)
            fields["learning_rate_policy"] = RLHFConfig.model_fields["learning_rate_policy"].default * value
        elif key in HYPERPARAMETERS:
            fields[HYPERPARAMETERS[key]] = value
        elif key in RLHFConfig.model_fields and key not in FIXED:
            fields[key] = value
        else:
            raise invalid(f"unknown dpo hyperparameter {key!r}", key)
    try:
        return RLHFConfig.model_validate(fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        name = {v: k for k, v in HYPERPARAMETERS.items()}.get(field, field)
        raise invalid(f"{name}: {error['msg']}", name) from None


def dpo_job_config(hyperparameters: dict[str, Any], suffix: str | None, base_name: str,
                   seed: int) -> dict[str, Any]:
    """JobConfig fields of the RLHF job that runs a dpo request (see ``rlhf_settings`` for the errors)."""
    rlhf = rlhf_settings(hyperparameters, seed)
    config: dict[str, Any] = {
        "seed": seed, "max_seq_length": min(MAX_SEQ_LENGTH[1], max(MAX_SEQ_LENGTH[0], rlhf.max_length)),
        "extra": {"rlhf": rlhf.model_dump(mode="json"), "preference_pairs": "stored"},
    }
    if suffix:
        config["model_name"] = f"{base_name.split('/')[-1].lower()}-ft-{suffix}"
    return config
