"""DPO through the RLHF job's child entry on a tiny model really trains: the preference loss falls from its
starting value (ln 2, chosen and rejected equally likely) and the policy's weights move away from the reference.
"""

from __future__ import annotations

import math

from L07_learning.models import RLHFConfig
from L07_learning.tests.factories.rlhf import build_word_model, sft_tiny, train_and_heldout


def test_dpo_loss_falls_and_the_policy_weights_change(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch
    from safetensors.torch import load_file

    from L07_learning.pipelines import rlhf_pipeline

    torch.manual_seed(0)
    train, held = train_and_heldout(n_train_topics=16, per_topic=2)
    base = build_word_model(tmp_path / "base")
    sft = sft_tiny(base, tmp_path / "sft", train, epochs=3)
    cfg = RLHFConfig(algorithm="dpo", learning_rate_policy=5e-3, epochs=2, batch_size=8, lora_rank=8, lora_alpha=16.0,
                     max_new_tokens=8, max_kl_divergence=5.0, guard_every_steps=100, reward_training_epochs=1,
                     reward_learning_rate=3e-3, reward_lora_rank=None,
                     # The preference loss alone, whose start value is known; the default NLL term on the chosen
                     # answer has its own test (test_rlhf.py).
                     dpo_sft_weight=0.0)
    spec = {"base_model_dir": str(sft), "reward_model_dir": None, "sft_adapter_dir": None,
            "train_pairs": [p.model_dump(mode="json") for p in train],
            "val_pairs": [p.model_dump(mode="json") for p in held[:8]],
            "rlhf": cfg.model_dump(mode="json"), "output_dir": str(tmp_path / "out")}
    steps: list[dict] = []  # type: ignore[type-arg]
    result = rlhf_pipeline.entry(spec, lambda kind, payload: steps.append(payload) if kind == "step" else None,
                                 lambda: False)
    losses = result["policy"]["train_metrics"]["loss_curve"]
    assert len(losses) == result["policy"]["steps"] >= 6
    assert abs(losses[0] - math.log(2)) < 1e-3  # the fresh adapter starts as the reference
    assert sum(losses[-2:]) / 2 < 0.9 * losses[0]
    weights = load_file(str(tmp_path / "out" / "policy" / "adapter" / "adapter_model.safetensors"))
    assert sum(float(v.abs().sum()) for k, v in weights.items() if "lora_B" in k) > 0  # B starts at zero
    assert any(p.get("phase") == "policy" for p in steps)  # the job's progress events came through
