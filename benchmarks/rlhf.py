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

``--model smollm2``: preference optimisation on the real base, SmolLM2-135M-Instruct. Task family (this file): ordering
goals ("Order 7 lemons for Rosa.") answered by one ``place_order(item=..., quantity=..., customer=...)`` call. Each
goal has three scored executions, as an L06 judge scores them (``score_attempt``): the exact call (95), the call wrapped
in chatter (78), the call without the quantity (62). SFT (``run_sft``, our engine) trains on all three attempts, as a
plain SFT job on accepted data would; preference pairs come from the RLHF job's builder
(``services.jobs.rlhf.preference_pairs`` -> ``build_preference_pairs``, §5.5: same goal, margin >= 10). Then DPO from
the SFT policy, twice on the same pairs and settings: ours (``rlhf_pipeline.entry``, the RLHF job's child: reward model,
DPO, KL / reward-hacking guard) and plain TRL (``DPOTrainer`` with the same LoRA, no L07 code). Held-out goals name
customers never seen in training; each policy answers greedily and is judged by the same ``score_attempt``: task
accuracy (share of exact calls) and mean §5.5 reward r = (q - 50) / 50. Printed as a table, then JSON.

Run: ``PYTHONPATH=src python benchmarks/rlhf.py [--pairs 96] [--model word|smollm2-tiny|smollm2]``. Last stdout line:
JSON.
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
    from L07_learning.pipelines.rlhf_pipeline import dpo_loss

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(sft))
    tok.pad_token = tok.pad_token or tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(sft))
    data = Dataset.from_list([{"prompt": format_prompt(tok, p.prompt), "chosen": p.chosen, "rejected": p.rejected}
                              for p in train])
    args = DPOConfig(output_dir=str(out / "_t"), num_train_epochs=cfg.epochs, per_device_train_batch_size=cfg.batch_size,
                     learning_rate=cfg.learning_rate_policy, lr_scheduler_type="constant", beta=cfg.dpo_beta,
                     report_to="none", save_strategy="no", seed=cfg.seed, disable_tqdm=True, logging_steps=1000,
                     use_cpu=True, max_length=cfg.max_length, **dpo_loss(cfg))
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


# --- --model smollm2: DPO after SFT on the real base, pairs from scored attempts at the same goal ------------------

ITEMS = ["apples", "pencils", "batteries", "notebooks", "candles", "towels", "lemons", "stamps", "cables", "mugs",
         "gloves", "tickets", "plates", "brushes", "bottles", "folders", "lamps", "seeds", "ropes", "tiles"]
NAMES = ["Ana", "Bruno", "Chiara", "Dmitri", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kofi", "Lena",
         "Mateo", "Nadia", "Oskar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"]
GOAL_TEMPLATES = ["Order {n} {item} for {name}.", "Please get {name} {n} {item}.", "{name} needs {n} {item}, order them."]


def _canonical(item: str, n: int, name: str) -> str:
    return f'place_order(item="{item}", quantity={n}, customer="{name}")'


def order_goals(count: int, seed: int, names: list[str]) -> list[tuple[str, str, int, str]]:
    """``(goal text, item, quantity, customer)``: ordering goals, deterministic for a seed, customers from ``names``."""
    import random

    rng = random.Random(seed)
    goals, seen = [], set()
    while len(goals) < count:
        item, n, name = rng.choice(ITEMS), rng.randint(2, 19), rng.choice(names)
        if (item, n, name) in seen:
            continue
        seen.add((item, n, name))
        goals.append((rng.choice(GOAL_TEMPLATES).format(n=n, item=item, name=name), item, n, name))
    return goals


def score_attempt(answer: str, item: str, n: int, name: str) -> float:
    """The quality (0-100) an L06 judge gives one attempt at an ordering goal.

    95: exactly the order call; 78: the right call wrapped in chatter (correct, but the agent's caller must dig it
    out); 62: a call that forgets the quantity (the shop falls back to one); 20: some other call; 5: no call at all.
    """
    text = answer.strip()
    call = _canonical(item, n, name)
    if text == call:
        return 95.0
    if call in text:
        return 78.0
    if text == f'place_order(item="{item}", customer="{name}")' or f'place_order(item="{item}", customer="{name}")' in text:
        return 62.0
    return 20.0 if "place_order(" in text else 5.0


def attempts(goals: list[tuple[str, str, int, str]]):  # type: ignore[no-untyped-def]
    """Three scored executions per goal (better and worse attempts), as accepted ``TrainingExample`` objects."""
    from L07_learning.models import ExampleSource, ExampleStatus, TrainingExample

    out = []
    for g, (goal, item, n, name) in enumerate(goals):
        call = _canonical(item, n, name)
        for kind, answer in (("exact", call), ("chatty", f"Sure, I will place that order for you. {call}"),
                             ("no_quantity", f'place_order(item="{item}", customer="{name}")')):
            out.append(TrainingExample(
                example_id=f"goal{g:03d}-{kind}", execution_id=f"exec-{g:03d}-{kind}",
                source_type=ExampleSource.EXECUTION_TRACE, input_text=goal, output_text=answer,
                quality_score=score_attempt(answer, item, n, name), confidence=0.9, status=ExampleStatus.ACCEPTED,
                metadata={"agent_id": "shop-agent", "task_type": "order"},
            ))
    return out


def _load_policy(base: Path, adapters: list[Path]):  # type: ignore[no-untyped-def]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base))
    for adapter in adapters:  # each adapter was trained on top of the previous ones merged in
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    model.eval()
    return model


def _judge(model, tok, goals, max_new_tokens: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Task accuracy (exact order call) and mean §5.5 reward r = (q - 50) / 50 of greedy answers to ``goals``."""
    from L07_learning.pipelines.rlhf.common import format_prompt, greedy_answers

    answers = greedy_answers(model, tok, [format_prompt(tok, g[0]) for g in goals], max_new_tokens)
    scores = [score_attempt(a, item, n, name) for a, (_, item, n, name) in zip(answers, goals)]
    return {"task_accuracy": sum(s == 95.0 for s in scores) / len(scores),
            "mean_quality": sum(scores) / len(scores),
            "mean_reward": sum((s - 50) / 50 for s in scores) / len(scores),
            "sample_answer": answers[0]}


def _run_smollm2(args) -> None:  # type: ignore[no-untyped-def]
    """SFT (our engine) -> DPO on the SmolLM2-135M-Instruct base: ours (the RLHF job's entry) vs plain TRL."""
    import os

    import torch

    from L07_learning.models import JobConfig, RLHFConfig
    from L07_learning.pipelines import rlhf_pipeline
    from L07_learning.pipelines.base_model import default_base_model_dir
    from L07_learning.pipelines.rlhf.common import as_triplets, load_tokenizer
    from L07_learning.pipelines.sft_pipeline import run_sft
    from L07_learning.services.jobs.rlhf import preference_pairs

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cache = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
    base = Path(args.base_dir) if args.base_dir else default_base_model_dir(cache)
    # Held-out goals name customers never seen in training: the policy must learn the form, not the names.
    train_goals = order_goals(args.goals, seed=1, names=NAMES[:14])
    held_goals = order_goals(args.heldout_goals, seed=2, names=NAMES[14:])
    guard_goals = order_goals(2, seed=3, names=NAMES[14:])  # the guard's own held-out pairs (KL, validation)
    train_examples = attempts(train_goals)
    # Measured 2026-12-06 (benchmarks/results/rlhf-smollm2-2026-12-06.*): plain DPO (no NLL term) at 1e-3 for 9 steps
    # or 1e-4 for 27 took the SFT policy to 0% exact calls, in our pipeline and in plain TRL alike (chosen and rejected
    # share most tokens; DPO lowered both). With the default NLL term on the chosen answer (dpo_sft_weight 1.0) and 24
    # training goals, DPO lifted exact calls from 58% to 75% and the reward from 0.275 to 0.525, in both.
    cfg = RLHFConfig(algorithm="dpo", learning_rate_policy=args.dpo_lr, epochs=args.dpo_epochs, batch_size=4,
                     lora_rank=16, lora_alpha=32.0, dpo_beta=args.dpo_beta, max_new_tokens=32, max_length=160,
                     max_kl_divergence=2.0, guard_every_steps=args.guard_every, reward_training_epochs=3,
                     reward_learning_rate=1e-4,
                     reward_batch_size=8, reward_lora_rank=16, seed=42,
                     **({} if args.dpo_sft_weight is None else {"dpo_sft_weight": args.dpo_sft_weight}))
    train_pairs = preference_pairs(train_examples, cfg)  # the RLHF job's builder: §5.5 rules, reward_mode pipeline
    guard_pairs = preference_pairs(attempts(guard_goals), cfg)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="l07-bench-rlhf-smollm2-") as tmp:
        root = Path(tmp)
        # SFT on every accepted attempt (all three styles, as a plain SFT job would see them).
        t0 = time.perf_counter()
        rows = [[{"role": "user", "content": e.input_text}, {"role": "assistant", "content": e.output_text}]
                for e in train_examples]
        # 12 goals: two epochs gave 42% exact calls, three 33% (garbled arguments on the rest); 24 goals, three: 58%.
        sft_cfg = JobConfig(epochs=args.sft_epochs, batch_size=4, learning_rate=1e-3, lora_rank=16, lora_alpha=32,
                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], max_seq_length=256,
                            gradient_checkpointing=False, eval_strategy="no", save_strategy="no",
                            early_stopping_patience=0, use_curriculum=False, warmup_ratio=0.05, seed=42)
        sft = run_sft(base, rows, [], sft_cfg, root / "sft", root / "sft_ckpt", measure_generation=False)
        timings["sft_s"] = time.perf_counter() - t0
        sft_dir = Path(sft.adapter_dir)

        tok = load_tokenizer(base)
        sft_policy = _load_policy(base, [sft_dir])
        sft_scores = _judge(sft_policy, tok, held_goals, cfg.max_new_tokens)
        base_scores = _judge(_load_policy(base, []), tok, held_goals, cfg.max_new_tokens)

        # Ours: the RLHF job's child entry (reward model, then DPO with the KL / reward-hacking guard).
        t0 = time.perf_counter()
        spec = {"base_model_dir": str(base), "reward_model_dir": None, "sft_adapter_dir": str(sft_dir),
                "train_pairs": [p.model_dump(mode="json") for p in train_pairs],
                "val_pairs": [p.model_dump(mode="json") for p in guard_pairs],
                "rlhf": cfg.model_dump(mode="json"), "output_dir": str(root / "ours")}
        ours = rlhf_pipeline.entry(spec, lambda kind, payload: None, lambda: False)
        timings["ours_s"] = time.perf_counter() - t0
        ours_policy = _load_policy(Path(ours["policy"]["merged_dir"]), [])
        ours_scores = _judge(ours_policy, tok, held_goals, cfg.max_new_tokens)

        # Plain TRL: the same pairs, the same SFT starting point, LoRA and settings, no L07 code in the loop.
        t0 = time.perf_counter()
        merged_sft = root / "sft_merged"
        sft_policy.save_pretrained(str(merged_sft))
        tok.save_pretrained(str(merged_sft))
        _plain_dpo(merged_sft, as_triplets(train_pairs), root / "plain", cfg)
        timings["plain_trl_s"] = time.perf_counter() - t0
        plain_scores = _judge(_load_policy(merged_sft, [root / "plain"]), tok, held_goals, cfg.max_new_tokens)

    policy = ours["policy"]
    result = {
        "benchmark": "rlhf",
        "model": f"harness check on {args.base_dir}" if args.base_dir else "smollm2 (SmolLM2-135M-Instruct)",
        "task": "order goals -> place_order call; attempts scored 95 exact / 78 chatty / 62 no quantity",
        "train_goals": len(train_goals), "train_pairs": len(train_pairs), "heldout_goals": len(held_goals),
        "base": base_scores, "sft": sft_scores, "dpo_ours": ours_scores, "dpo_plain_trl": plain_scores,
        "dpo_ours_task_at_least_sft": ours_scores["task_accuracy"] >= sft_scores["task_accuracy"],
        "dpo_ours_reward_above_sft": ours_scores["mean_reward"] > sft_scores["mean_reward"],
        "ours_reward_model_val_accuracy": (ours.get("reward_model") or {}).get("val_accuracy"),
        "ours_guard": {"stopped_reason": policy["stopped_reason"], "steps": policy["steps"],
                       "kl_after": policy["after"]["kl"], "alerts": [a["code"] for a in policy["alerts"]]},
        "wall_s": {k: round(v, 1) for k, v in timings.items()}, "total_wall_s": round(time.perf_counter() - t_start, 1),
        "threads": args.threads,
        "settings": {"sft_epochs": args.sft_epochs, "dpo_learning_rate": args.dpo_lr, "dpo_epochs": args.dpo_epochs,
                     "dpo_beta": cfg.dpo_beta, "dpo_sft_weight": cfg.dpo_sft_weight, "batch_size": cfg.batch_size, "lora_rank": cfg.lora_rank},
        "note": "CPU wall times on a 2-core machine shared by other jobs; compare ours vs plain within this run only",
    }
    print(f"{'policy':<16}{'task acc':>10}{'mean q':>9}{'reward':>9}")
    for label, key in (("base", "base"), ("sft", "sft"), ("dpo (L07)", "dpo_ours"), ("dpo (plain TRL)", "dpo_plain_trl")):
        r = result[key]
        print(f"{label:<16}{r['task_accuracy']:>10.3f}{r['mean_quality']:>9.1f}{r['mean_reward']:>9.3f}")
    print(f"wall s: sft {timings['sft_s']:.0f}, L07 rlhf (reward model + dpo + guard) {timings['ours_s']:.0f}, "
          f"plain TRL dpo {timings['plain_trl_s']:.0f}")
    for r in (base_scores, sft_scores, ours_scores, plain_scores):
        r["task_accuracy"], r["mean_quality"], r["mean_reward"] = (round(r["task_accuracy"], 4),
                                                                   round(r["mean_quality"], 2), round(r["mean_reward"], 4))
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=96, help="training pairs (held-out: a quarter of that)")
    parser.add_argument("--model", choices=["word", "smollm2-tiny", "smollm2"], default="word")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--guard-every", type=int, default=6)
    parser.add_argument("--goals", type=int, default=24, help="smollm2: training goals (3 scored attempts each)")
    parser.add_argument("--heldout-goals", type=int, default=12, help="smollm2: held-out goals")
    parser.add_argument("--sft-epochs", type=int, default=3, help="smollm2: SFT epochs before DPO")
    parser.add_argument("--dpo-lr", type=float, default=1e-4, help="smollm2: DPO learning rate (both implementations)")
    parser.add_argument("--dpo-epochs", type=int, default=3, help="smollm2: DPO epochs (both implementations)")
    parser.add_argument("--dpo-beta", type=float, default=0.1, help="smollm2: DPO beta (both implementations)")
    parser.add_argument("--dpo-sft-weight", type=float, default=None,
                        help="smollm2: weight of the NLL term on the chosen answer (default: RLHFConfig's)")
    parser.add_argument("--base-dir", default=None,
                        help="smollm2: another HF model folder in place of the real base (a quick harness check only)")
    args = parser.parse_args()
    if args.model == "smollm2":
        _run_smollm2(args)
        return

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
