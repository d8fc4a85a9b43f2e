"""Curriculum vs random order: optimisation steps to reach a target validation loss, same seed and step budget.

A tiny Llama-architecture causal LM (transformers, random init, character vocabulary) is trained for real with torch
on generated tool-use traces: the prompt lists k items (k = 1…10), the answer is the k tool calls that handle them.
k drives the planner's difficulty signals (trace length, distinct tools); quality scores vary at random. The loss is on
answer tokens only, as in SFT.

Two arms share the model initialisation, the examples, the batch size, the learning-rate schedule and the step
budget; only the order of the training stream differs:

* ``random``: ``order_examples(..., JobConfig(curriculum="none"))`` (shuffled every epoch),
* ``curriculum``: ``order_examples(..., JobConfig(curriculum="staged"))`` with the default schedule
  (easy -> easy+medium -> all, extra epochs on the last stage), quantile bands (30/50/20).

Validation loss is measured every ``--eval-every`` steps on held-out examples of all difficulties. The target
validation loss is the best one the random-order run reaches within the whole budget; the headline
``ratio = steps_random / steps_curriculum`` to reach it (> 1: the curriculum converges faster). Ratios for the losses
random order reaches after 25, 50 and 75 % of the budget are reported too, since a curriculum can help early and not
late. The contract's target (§5.7) is 1.10-1.15. Whatever the result is, it is printed as measured.

Run: ``PYTHONPATH=src python benchmarks/curriculum.py [--seeds 3] [--steps 300]``. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (1 is fastest on a shared machine)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()

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
