"""Curriculum vs shuffled order: optimisation steps to reach a target validation loss, same data, seed and settings.

Default (``--model smollm2``): the real base, SmolLM2-135M-Instruct with LoRA, trained by ``run_sft`` exactly as an SFT
job's training process runs it. Data: errands of k = 1…8 items whose answer calls each item's tool in order; k drives
the planner's difficulty signals (trace length, distinct tools), quality varies at random. Two arms, differing only in
``JobConfig.use_curriculum``:

* ``random`` (off): no plan; the Trainer shuffles every epoch with the job's seed;
* ``curriculum`` (on, the default): ``training_order`` (what ``services/jobs/sft.py`` puts in the job spec) -> the
  default staged schedule, easy -> easy+medium -> all, one epoch each, fed in that order (sequential sampler).

The staged run trains on fewer examples in total (its first epochs hold only the easier bands), so it has fewer steps.
Validation loss (answer tokens, held-out errands of every k) is measured every ``--eval-every`` steps. The target is
the best validation loss the shuffled run reaches; the headline ``ratio = steps_random / steps_curriculum`` to reach it
(> 1: the curriculum gets there in fewer steps; None: it never gets there). A half-budget target is reported too. The
contract's hope (§5.7) is 1.10-1.15; whatever comes out is printed as measured.

``--model char``: the earlier experiment, a tiny char-level Llama trained by a plain torch loop on the streams of
``order_examples`` (several seeds, a fixed step budget).

Run: ``PYTHONPATH=src python benchmarks/curriculum.py [--model smollm2|char]``. A table, then JSON as the last line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from L07_learning.models import ExampleSource, JobConfig, TrainingExample  # noqa: E402
from L07_learning.services.curriculum_planner import CurriculumConfig, order_examples  # noqa: E402

WORDS = ["apple", "train", "hotel", "river", "cloud", "stone", "lemon", "tiger", "piano", "ocean", "maple", "robot"]
TOOLS = ["search", "fetch", "book", "check", "notify"]


def make_examples(n: int, seed: int, prefix: str) -> list[TrainingExample]:
    """Generated traces: k items in, k tool calls out; the tool of an item is a fixed function of the word."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randint(1, 10)
        items = [rng.choice(WORDS) for _ in range(k)]
        calls = [f"{TOOLS[WORDS.index(w) % len(TOOLS)]}({w[::-1]})" for w in items]
        out.append(TrainingExample(
            example_id=f"{prefix}-{i:05d}", source_type=ExampleSource.EXECUTION_TRACE,
            input_text="do: " + " ".join(items), output_text=";".join(calls), quality_score=rng.uniform(70, 100),
            execution_length=k, expected_actions=[{"step": j + 1, "action": c.split("(")[0]} for j, c in enumerate(calls)],
            labels=["outcome:SUCCESS"], metadata={"agent_id": "bench", "task_type": "tool_use"},
        ))
    return out


class CharTokenizer:
    """Characters to ids (0 pad, 1 bos, 2 sep, 3 eos)."""

    def __init__(self, texts: list[str]) -> None:
        chars = sorted({c for t in texts for c in t})
        self.ids = {c: i + 4 for i, c in enumerate(chars)}
        self.vocab_size = len(chars) + 4

    def encode(self, example: TrainingExample) -> tuple[list[int], int]:
        prompt = [1] + [self.ids[c] for c in example.input_text] + [2]
        answer = [self.ids[c] for c in example.output_text] + [3]
        return prompt + answer, len(prompt)


def batch_tensors(tok: CharTokenizer, batch: list[TrainingExample], device: str = "cpu"):  # type: ignore[no-untyped-def]
    import torch

    enc = [tok.encode(e) for e in batch]
    width = max(len(ids) for ids, _ in enc)
    ids = torch.zeros((len(enc), width), dtype=torch.long)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    labels = torch.full((len(enc), width), -100, dtype=torch.long)
    for r, (seq, plen) in enumerate(enc):
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        labels[r, plen: len(seq)] = torch.tensor(seq[plen:])
    return ids.to(device), mask.to(device), labels.to(device)


def train_arm(stream: list[TrainingExample], val: list[TrainingExample], tok: CharTokenizer, seed: int, steps: int,
              batch_size: int, lr: float, eval_every: int, device: str = "cpu") -> list[tuple[int, float]]:
    """Train a fresh tiny model on ``stream`` (consecutive batches) and return (step, validation loss) points."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=3))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    # linear warm-up then linear decay: JobConfig's default schedule, and a smooth end of the validation curve
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    val_batches = [batch_tensors(tok, val[i:i + 100], device) for i in range(0, len(val), 100)]

    def evaluate() -> float:
        model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for ids, mask, labels in val_batches:
                n = int((labels[:, 1:] != -100).sum())
                total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss) * n
                count += n
        model.train()
        return total / count

    curve = [(0, evaluate())]
    model.train()
    for step in range(1, steps + 1):
        batch = stream[(step - 1) * batch_size: step * batch_size]
        ids, mask, labels = batch_tensors(tok, batch, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % eval_every == 0 or step == steps:
            curve.append((step, evaluate()))
    return curve


def steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((s for s, v in curve if v <= target), None)


# --- --model smollm2: the real base through the SFT engine, as an SFT job runs it ---------------------------------

SHOP_TOOLS = {"apple": "buy", "lemon": "buy", "tiger": "photo", "piano": "tune", "robot": "repair", "cloud": "photo",
              "river": "photo", "stone": "carry", "train": "book", "hotel": "book", "ocean": "photo", "maple": "carry"}


def make_tool_examples(n: int, seed: int, prefix: str) -> list[TrainingExample]:
    """Errands of k = 1…8 items; the answer calls the item's tool for each, in order (the tool is fixed per item).

    k drives the planner's signals (trace length, distinct tools); quality varies at random in the accepted range.
    """
    rng = random.Random(seed)
    words = sorted(SHOP_TOOLS)
    out = []
    for i in range(n):
        k = rng.randint(1, 8)
        items = [rng.choice(words) for _ in range(k)]
        calls = [f"{SHOP_TOOLS[w]}({w})" for w in items]
        out.append(TrainingExample(
            example_id=f"{prefix}-{i:05d}", source_type=ExampleSource.EXECUTION_TRACE,
            input_text="Errands: " + ", ".join(items), output_text=" ".join(calls), quality_score=rng.uniform(70, 100),
            execution_length=k, expected_actions=[{"step": j + 1, "action": c.split("(")[0]} for j, c in enumerate(calls)],
            labels=["outcome:SUCCESS"], metadata={"agent_id": "bench", "task_type": "errands"},
        ))
    return out


def _run_smollm2(args: argparse.Namespace) -> None:
    """Both arms through ``run_sft`` on SmolLM2-135M-Instruct: ``use_curriculum`` on (the planner's order, as the SFT
    job hands it to its training process) and off (the Trainer's seeded shuffle); same data, seed and settings."""
    import os

    import torch

    from L07_learning.pipelines.base_model import default_base_model_dir
    from L07_learning.pipelines.sft_pipeline import run_sft
    from L07_learning.services.curriculum_planner import training_order

    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = args.seeds or 1
    n_train, n_val = args.train or 40, args.val or 12
    batch, lr, every = args.batch_size or 4, args.lr or 5e-4, args.eval_every or 3
    cache = Path(os.environ.get("L07_MODEL_CACHE_DIR", str(Path.home() / ".cache" / "l07" / "models")))
    base = Path(args.base_dir) if args.base_dir else default_base_model_dir(cache)
    t0 = time.perf_counter()
    per_seed = []
    for seed in range(seeds):
        train = make_tool_examples(n_train, 3000 + seed, "train")
        val = make_tool_examples(n_val, 4000 + seed, "val")
        rows, val_rows = [e.chat_messages() for e in train], [e.chat_messages() for e in val]
        curves, walls, steps_total = {}, {}, {}
        for arm, on in (("random", False), ("curriculum", True)):
            config = JobConfig(epochs=args.epochs, batch_size=batch, learning_rate=lr, lora_rank=16, lora_alpha=32,
                               target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], max_seq_length=256,
                               gradient_checkpointing=False, eval_strategy="steps", compute_on_val_set_every_n_steps=every,
                               validation_batch_size=n_val, save_strategy="no", early_stopping_patience=0,
                               warmup_ratio=0.05, use_curriculum=on, seed=seed)
            order = training_order(train, config)  # what services/jobs/sft.py puts in the job's spec
            assert (order is not None) == on
            with tempfile.TemporaryDirectory(prefix=f"l07-bench-curriculum-{arm}-") as tmp:
                t_arm = time.perf_counter()
                res = run_sft(base, rows, val_rows, config, Path(tmp) / "adapter", Path(tmp) / "ckpt",
                              measure_generation=False, train_order=order)
                walls[arm] = round(time.perf_counter() - t_arm, 1)
            m = res.metrics
            curve = [(int(e["step"]), float(e["eval_loss"])) for e in m["evals"]]
            if not curve or curve[-1][0] != m["global_step"]:
                curve.append((m["global_step"], float(m["eval_loss"])))
            curves[arm], steps_total[arm] = curve, m["global_step"]
            print(json.dumps({"seed": seed, "arm": arm, "steps": m["global_step"], "wall_s": walls[arm],
                              "curriculum": m.get("curriculum"), "curve": curve}), flush=True)
        budget = steps_total["random"]
        targets = {frac: min(v for s, v in curves["random"] if s <= round(frac * budget)) for frac in (0.5, 1.0)}
        rows_out = {}
        for frac, target in targets.items():
            s_rand, s_cur = steps_to(curves["random"], target), steps_to(curves["curriculum"], target)
            rows_out[frac] = {"target_val_loss": round(target, 4), "steps_random": s_rand, "steps_curriculum": s_cur,
                              "ratio": round(s_rand / s_cur, 3) if s_cur else None}
        per_seed.append({"seed": seed, "final": rows_out[1.0], "half_budget_target": rows_out[0.5],
                         "total_steps": steps_total, "wall_s": walls,
                         "final_val_loss": {a: round(c[-1][1], 4) for a, c in curves.items()},
                         "best_val_loss": {a: round(min(v for _, v in c), 4) for a, c in curves.items()}})
    print(f"{'seed':<5}{'target':>8}{'steps rand':>11}{'steps curr':>11}{'ratio':>7}{'final rand':>11}{'final curr':>11}"
          f"{'steps tot r/c':>15}")
    for r in per_seed:
        f = r["final"]
        print(f"{r['seed']:<5}{f['target_val_loss']:>8.4f}{f['steps_random']!s:>11}{f['steps_curriculum']!s:>11}"
              f"{f['ratio']!s:>7}{r['final_val_loss']['random']:>11.4f}{r['final_val_loss']['curriculum']:>11.4f}"
              f"{str(r['total_steps']['random']) + '/' + str(r['total_steps']['curriculum']):>15}")
    ratios = [r["final"]["ratio"] for r in per_seed]
    summary = {
        "benchmark": "curriculum",
        "model": (f"harness check on {args.base_dir}" if args.base_dir
                  else "SmolLM2-135M-Instruct + LoRA through run_sft (the SFT job's pipeline)"),
        "metric": "steps to the best validation loss the shuffled run reaches: random / curriculum (None: not reached)",
        "ratio": ratios[0] if len(ratios) == 1 else ratios, "per_seed": per_seed,
        "contract_target_ratio": "1.10-1.15", "epochs": args.epochs, "train_examples": n_train,
        "val_examples": n_val, "batch_size": batch, "learning_rate": lr, "eval_every_steps": every,
        "wall_s": round(time.perf_counter() - t0, 1),
        "note": "CPU wall time on a 2-core machine shared with other jobs",
    }
    print(json.dumps(summary))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["smollm2", "char"], default="smollm2",
                    help="smollm2: the real base through the SFT engine (default); char: the tiny char-level model")
    ap.add_argument("--seeds", type=int, default=None, help="seeds (default: 1 for smollm2, 3 for char)")
    ap.add_argument("--train", type=int, default=None, help="training examples (default: 40 smollm2, 800 char)")
    ap.add_argument("--val", type=int, default=None, help="validation examples (default: 12 smollm2, 200 char)")
    ap.add_argument("--steps", type=int, default=300, help="char: step budget")
    ap.add_argument("--epochs", type=int, default=3, help="smollm2: the job's epochs (staged: easy, +medium, all)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 4 smollm2, 16 char")
    ap.add_argument("--lr", type=float, default=None, help="default: 5e-4 smollm2 (LoRA), 3e-3 char")
    ap.add_argument("--eval-every", type=int, default=None, help="default: 3 steps smollm2, 10 char")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (char: 1 is fastest on a shared machine)")
    ap.add_argument("--device", default="cpu", help="char: cpu or cuda")
    ap.add_argument("--base-dir", default=None,
                    help="smollm2: another HF model folder in place of the real base (a quick harness check only)")
    args = ap.parse_args()
    if args.model == "smollm2":
        _run_smollm2(args)
        return
    args.seeds = args.seeds or 3
    args.train, args.val = args.train or 800, args.val or 200
    args.batch_size, args.lr = args.batch_size or 16, args.lr or 3e-3
    args.eval_every, args.threads = args.eval_every or 10, args.threads or 1

    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        train = make_examples(args.train, 1000 + seed, "train")
        val = make_examples(args.val, 2000 + seed, "val")
        tok = CharTokenizer([e.input_text + e.output_text for e in train + val])
        epochs = min(10, math.ceil(args.steps * args.batch_size / len(train)) + 2)  # streams longer than the budget
        random_stream = order_examples(train, JobConfig(epochs=epochs, curriculum="none", shuffle=True, seed=seed))
        curriculum_stream = order_examples(train, JobConfig(epochs=epochs, curriculum="staged", shuffle=True, seed=seed),
                                           CurriculumConfig(banding="quantile"))
        needed = args.steps * args.batch_size
        if len(random_stream) < needed or len(curriculum_stream) < needed:
            raise SystemExit(f"streams too short for the budget ({len(random_stream)}, {len(curriculum_stream)} < {needed})")
        curves = {}
        for arm, stream in (("random", random_stream), ("curriculum", curriculum_stream)):
            curves[arm] = train_arm(stream, val, tok, seed, args.steps, args.batch_size, args.lr, args.eval_every,
                                    args.device)
        # Targets: the best validation loss the random-order run has reached after 25/50/75/100 % of the budget.
        # The headline target is the 100 % one: what random order achieves with the whole budget.
        targets = {}
        for frac in (0.25, 0.5, 0.75, 1.0):
            limit = round(frac * args.steps)
            targets[frac] = min(v for s, v in curves["random"] if s <= limit)
        ratios_by_target = {}
        for frac, target in targets.items():
            s_rand = steps_to(curves["random"], target)
            s_cur = steps_to(curves["curriculum"], target)
            # not reached within the budget: count it as one evaluation interval past the budget (an upper bound on
            # the ratio, flagged in the output)
            ratios_by_target[frac] = {"target_val_loss": round(target, 4), "steps_random": s_rand,
                                      "steps_curriculum": s_cur,
                                      "ratio": round(s_rand / (s_cur or args.steps + args.eval_every), 3),
                                      "curriculum_reached": s_cur is not None}
        final = ratios_by_target[1.0]
        row = {"seed": seed, **final,
               "ratio_at_25_50_75_100pct_targets": [ratios_by_target[f]["ratio"] for f in (0.25, 0.5, 0.75, 1.0)],
               "final_val_loss_random": round(curves["random"][-1][1], 4),
               "final_val_loss_curriculum": round(curves["curriculum"][-1][1], 4)}
        per_seed.append(row)
        print(json.dumps(row), flush=True)
    ratios = [r["ratio"] for r in per_seed]
    summary = {
        "benchmark": "curriculum",
        "metric": "steps to reach the validation loss random order reaches with the full budget: random / curriculum",
        "ratio": round(statistics.median(ratios), 3),
        "ratio_per_seed": ratios,
        "steps_random": [r["steps_random"] for r in per_seed],
        "steps_curriculum": [r["steps_curriculum"] for r in per_seed],
        "curriculum_reached_target": [r["curriculum_reached"] for r in per_seed],
        "median_ratio_at_25_50_75_100pct_targets": [
            round(statistics.median(r["ratio_at_25_50_75_100pct_targets"][i] for r in per_seed), 3) for i in range(4)],
        "contract_target_ratio": "1.10-1.15",
        "model": "tiny Llama (2 layers, hidden 64), char vocabulary, trained with torch", "device": args.device,
        "budget_steps": args.steps, "batch_size": args.batch_size, "train_examples": args.train,
        "seeds": args.seeds, "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
