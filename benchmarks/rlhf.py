"""RLHF: reward-model accuracy, policy reward gain and wall time per 1,000 pairs, against plain TRL in the same run.

Data: generated support-desk preferences (helpful answers preferred over dismissive ones, ``tests/factories/rlhf.py``);
held-out pairs use topics never seen in training. Model: the tiny word-level Llama of the tests (default) or
``--model smollm2-tiny`` (``build_tiny_model``: SmolLM2 tokenizer, 49k vocabulary). The policy starts from a short
supervised warm-up of that model.

Ours: ``pipelines.rlhf_pipeline.train_reward_model`` then ``optimize_policy`` (DPO) with the KL / reward-hacking
guard checked every ``--guard-every`` steps. Baseline, same run, same model, data and settings: a plain TRL script
(``RewardTrainer`` on ``AutoModelForSequenceClassification``; ``DPOTrainer`` with the same LoRA config), no guards.
Both policies are judged by the same reward model (ours) on the held-out prompts, greedy answers.

Ratios are ours / plain: accuracy and gain near 1.0 mean the same learning; the time ratio is our overhead (guards,
length checks, held-out measurements).

Run: ``PYTHONPATH=src python benchmarks/rlhf.py [--pairs 96] [--model word|smollm2-tiny]``. Last stdout line: JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def _plain_reward_model(base: Path, train, out: Path, epochs: int, lr: float, batch: int, seed: int) -> float:
    """Plain TRL reward modelling (same data, format and settings as ours); returns wall seconds."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from L07_learning.pipelines.rlhf.common import format_prompt

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(base))
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    data = Dataset.from_list([{"prompt": format_prompt(tok, p.prompt), "chosen": p.chosen, "rejected": p.rejected}
                              for p in train])
    args = RewardConfig(output_dir=str(out / "_t"), num_train_epochs=epochs, per_device_train_batch_size=batch,
                        learning_rate=lr, lr_scheduler_type="constant", report_to="none", save_strategy="no",
                        seed=seed, disable_tqdm=True, logging_steps=1000, use_cpu=True)
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    trainer.train()
    trainer.model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return time.perf_counter() - t0


def _plain_dpo(sft: Path, train, out: Path, cfg) -> float:
    """Plain TRL DPO with the same LoRA config and hyper-parameters; returns wall seconds."""
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from L07_learning.pipelines.rlhf.common import format_prompt

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(sft))
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(sft))
    data = Dataset.from_list([{"prompt": format_prompt(tok, p.prompt), "chosen": p.chosen, "rejected": p.rejected}
                              for p in train])
    args = DPOConfig(output_dir=str(out / "_t"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
                     learning_rate=cfg.learning_rate_policy, lr_scheduler_type="constant", beta=cfg.dpo_beta,
                     report_to="none", save_strategy="no", seed=cfg.seed, disable_tqdm=True, logging_steps=1000,
                     use_cpu=True, max_length=cfg.max_length)
    lora = LoraConfig(task_type=TaskType.CAUSAL_LM, r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules="all-linear")
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=lora)
    trainer.train()
    trainer.model.save_pretrained(str(out))
    return time.perf_counter() - t0


def _mean_reward(model_dir: Path, adapter: Path | None, scorer, prompts: list[str], max_new_tokens: int) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from L07_learning.pipelines.rlhf.common import format_prompt, greedy_answers, load_tokenizer

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    formatted = [format_prompt(tok, p) for p in prompts]
    rewards = scorer.score_formatted(formatted, greedy_answers(model, tok, formatted, max_new_tokens))
    return sum(rewards) / len(rewards)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96, help="training pairs (held-out: a quarter of that)")
    parser.add_argument("--model", choices=["word", "smollm2-tiny"], default="word")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--guard-every", type=int, default=6)
    args = parser.parse_args()

    import torch

    from L07_learning.models import RLHFConfig
    from L07_learning.pipelines.rlhf.common import as_triplets
    from L07_learning.pipelines.rlhf.reward_model import RewardScorer, train_reward_model
    from L07_learning.pipelines.rlhf_pipeline import optimize_policy
    from L07_learning.tests.factories.rlhf import TOPICS, build_word_model, make_pairs, sft_tiny

    torch.set_num_threads(args.threads)
    per_topic = max(1, args.pairs // 30)
    train = make_pairs(TOPICS[:30], per_topic=per_topic, seed=0)[: args.pairs]
    held = make_pairs(TOPICS[30:], per_topic=max(1, per_topic // 2), seed=1)
    prompts = [p.prompt for p in held]
    rm_epochs, rm_lr, rm_batch, seed = 3, 3e-3, 8, 42
    cfg = RLHFConfig(algorithm="dpo", learning_rate_policy=5e-3, epochs=2, batch_size=8, lora_rank=8, lora_alpha=16.0,
                     max_new_tokens=16, max_kl_divergence=5.0, guard_every_steps=args.guard_every, seed=seed)

    with tempfile.TemporaryDirectory(prefix="l07-bench-rlhf-") as tmp:
        root = Path(tmp)
        if args.model == "word":
            base = build_word_model(root / "base")
        else:
            from L07_learning.pipelines.base_model import build_tiny_model

            base = build_tiny_model(root / "base")
        sft = sft_tiny(base, root / "sft", train, epochs=5)

        # Ours. The reward model holds out 20% of the pairs for its own accuracy; the rest trains it.
        ours_rm = train_reward_model(base, train, root / "ours_rm", epochs=rm_epochs, learning_rate=rm_lr,
                                     lora_rank=None, batch_size=rm_batch, seed=seed, validation_split=0.2)
        judge = RewardScorer(ours_rm.model_dir)
        ours_acc = judge.pairwise_accuracy(as_triplets(held))
        policy = optimize_policy(sft, ours_rm.model_dir, train, held, root / "ours_policy", cfg)
        ours_gain = policy.reward_gain

        # Plain TRL, same training pairs as ours used (the same split), same settings.
        from L07_learning.pipelines.rlhf.common import split_pairs

        rm_train, _ = split_pairs(as_triplets(train), 0.2, seed)
        plain_rm_s = _plain_reward_model(base, rm_train, root / "plain_rm", rm_epochs, rm_lr, rm_batch, seed)
        plain_acc = RewardScorer(root / "plain_rm").pairwise_accuracy(as_triplets(held))
        plain_dpo_s = _plain_dpo(sft, as_triplets(train), root / "plain_policy", cfg)
        plain_gain = (_mean_reward(sft, root / "plain_policy", judge, prompts, cfg.max_new_tokens)
                      - _mean_reward(sft, None, judge, prompts, cfg.max_new_tokens))

    per_k = 1000.0 / len(train)
    ours_s = ours_rm.wall_s + policy.wall_s
    plain_s = plain_rm_s + plain_dpo_s
    result = {
        "benchmark": "rlhf",
        "model": args.model,
        "train_pairs": len(train),
        "heldout_pairs": len(held),
        "reward_model_heldout_accuracy": round(ours_acc, 4),
        "plain_trl_reward_model_heldout_accuracy": round(plain_acc, 4),
        "accuracy_ratio": round(ours_acc / plain_acc, 4) if plain_acc else None,
        "policy_reward_gain": round(ours_gain, 4),
        "plain_trl_policy_reward_gain": round(plain_gain, 4),
        "gain_ratio": round(ours_gain / plain_gain, 4) if plain_gain else None,
        "policy_validation_before": round(policy.before["validation_accuracy"], 4),
        "policy_validation_after": round(policy.after["validation_accuracy"], 4),
        "wall_s_per_1000_pairs": round(ours_s * per_k, 2),
        "plain_trl_wall_s_per_1000_pairs": round(plain_s * per_k, 2),
        "reward_model_wall_s_per_1000_pairs": round(ours_rm.wall_s * per_k, 2),
        "plain_trl_reward_model_wall_s_per_1000_pairs": round(plain_rm_s * per_k, 2),
        "time_ratio": round(ours_s / plain_s, 4),
        "threads": args.threads,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
