"""Reward signals, preference pairs, reward models and RLHF configuration (contract §3.6, §3.4, §5.5)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from ._base import L07Model, new_id, utcnow


class RewardSignal(L07Model):
    """A scored execution turned into a scalar reward (contract §5.5)."""

    signal_id: str = Field(default_factory=new_id)
    execution_id: str | None = None
    evaluation_id: str | None = None
    quality_score: float = Field(ge=0, le=100)
    confidence_level: float | None = Field(default=None, ge=0, le=1)
    outcome: str = "success"
    task_type: str = "general"
    metrics: dict[str, float] = Field(default_factory=dict)
    evaluation_method: str = "automated"
    timestamp: datetime = Field(default_factory=utcnow)
    r_normalized: float | None = None
    r_weighted: float | None = None
    r_penalized: float | None = None
    r_final: float | None = None
    processed_by_learning: bool = False
    used_in_training: bool = False


class PreferencePair(L07Model):
    """Two answers to one prompt, the better one ``chosen`` (contract §3.6)."""

    pair_id: str = Field(default_factory=new_id)
    prompt: str = Field(min_length=1)
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)
    chosen_example_id: str | None = None
    rejected_example_id: str | None = None
    margin: float = Field(default=0.0, ge=0)
    task_type: str = "general"
    source: str = "extractor"
    created_at: datetime = Field(default_factory=utcnow)


class RewardModel(L07Model):
    """A trained pairwise reward model, registered as REWARD_MODEL."""

    reward_model_id: str = Field(default_factory=new_id)
    base_model_id: str
    artifact_path: str = ""
    checksum: str = ""
    train_pairs: int = 0
    val_pairs: int = 0
    val_pairwise_accuracy: float = 0.0
    train_pairwise_accuracy: float | None = None
    train_val_gap: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    metrics: dict[str, Any] = Field(default_factory=dict)


class RLHFConfig(L07Model):
    """Preference-optimisation settings. PPO values are the contract's (§3.4)."""

    algorithm: Literal["dpo", "grpo", "rloo", "ppo"] = "dpo"
    rollout_size: int = Field(default=512, ge=1)
    mini_batch_size: int = Field(default=32, ge=1)
    optimization_epochs: int = Field(default=4, ge=1)
    learning_rate_policy: float = Field(default=5e-5, gt=0, le=1e-2)
    learning_rate_value_fn: float = Field(default=5e-5, gt=0, le=1e-2)
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    gae_gamma: float = Field(default=0.99, ge=0, le=1)
    clip_ratio: float = Field(default=0.2, gt=0, le=1)
    entropy_coeff: float = Field(default=0.01, ge=0)
    kl_penalty_coeff: float = Field(default=0.02, ge=0)
    max_kl_divergence: float = Field(default=0.05, gt=0)
    early_stopping_patience: int = Field(default=5, ge=0)
    dpo_beta: float = Field(default=0.1, gt=0)
    # The preference loss alone lowers the chosen answer's likelihood along with the rejected one's when the two share
    # most tokens (measured on SmolLM2-135M: exact calls 33% after SFT, 0% after DPO, in TRL as in ours). A
    # supervised term on the chosen answer (RPO, arXiv:2404.19733; TRL's loss_type "sft") keeps it likely.
    dpo_sft_weight: float = Field(default=1.0, ge=0, description="DPO: weight of the NLL term on the chosen answer")
    lora_rank: int = Field(default=16, ge=1, le=64)
    lora_alpha: float = Field(default=32.0, ge=1, le=128)
    epochs: int = Field(default=1, ge=1, le=20)
    batch_size: int = Field(default=8, ge=1, le=128)
    max_steps: int | None = Field(default=None, gt=0)
    max_new_tokens: int = Field(default=32, ge=1, le=512)
    num_generations: int = Field(default=4, ge=2, le=64)
    reward_training_epochs: int = Field(default=5, ge=1)
    reward_validation_split: float = Field(default=0.2, gt=0, lt=1)
    reward_learning_rate: float = Field(default=1e-4, gt=0, le=1e-2)
    reward_mode: Literal["pipeline", "multi_objective"] = "pipeline"
    reward_latency_target_ms: float = Field(default=1000.0, gt=0, description="multi_objective: latency target")
    reward_token_budget: float = Field(default=1.0, gt=0, description="multi_objective: token-cost budget")
    seed: int = 42
    target_modules: list[str] | None = Field(
        default=None, description="LoRA target modules of the policy; None means every linear layer but the head"
    )
    reward_lora_rank: int | None = Field(
        default=16, ge=1, le=64, description="LoRA rank of the reward model; None trains it fully (tiny models)"
    )
    reward_batch_size: int = Field(default=8, ge=1, le=128)
    max_length: int = Field(default=1024, ge=16, le=8192, description="Longest prompt+answer, in tokens")
    guard_every_steps: int = Field(
        default=10, ge=1, description="Optimizer steps between KL / reward-hacking checks (PPO: rollouts)"
    )
    validation_tolerance: float = Field(
        default=0.05, ge=0, le=1, description="Drop in held-out validation accuracy that counts as a fall (E7305)"
    )
