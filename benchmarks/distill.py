"""Distillation: how much of a fine-tuned teacher's score a much smaller student keeps, and what it saves.

Teacher: the default base model (SmolLM2-135M-Instruct) after a short LoRA SFT on the deterministic tool-selection
task (``tests/factories/sft.py``), adapter merged. Student: derived from the teacher (``--student-layers`` decoder
layers of its width, initialised from its embeddings and layers) and trained by logit distillation (T=4, alpha=0.5).
Baseline, measured in the same run: the teacher itself on the same held-out prompts.

Reported: ``score_ratio`` (student / teacher held-out exact match), ``parameter_ratio`` (student / teacher
parameters), ``latency_ratio`` (student / teacher mean greedy-generation latency per prompt at batch size 1), and
the plain-SFT student's score beside the distilled one.

Run: ``PYTHONPATH=src python benchmarks/distill.py [--steps 120] [--teacher-steps 24]``. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))


def _latency(tokenizer, model, prompts, max_new_tokens: int) -> float:  # type: ignore[no-untyped-def]
    """Mean seconds per prompt, one prompt at a time (serving latency), after one warm-up call."""
    from L07_learning.pipelines.generation import generate_with

    generate_with(tokenizer, model, prompts[:1], max_new_tokens, batch_size=1)
    started = time.perf_counter()
    generate_with(tokenizer, model, prompts, max_new_tokens, batch_size=1)
    return (time.perf_counter() - started) / len(prompts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=96, help="training examples")
    parser.add_argument("--test", type=int, default=48, help="held-out examples")
    parser.add_argument("--teacher-steps", type=int, default=24, help="LoRA SFT steps of the teacher")
    parser.add_argument("--steps", type=int, default=120, help="distillation steps")
    parser.add_argument("--student-layers", type=int, default=1)
    parser.add_argument("--student-hidden", type=int, default=None, help="narrower student width")
    parser.add_argument("--latency-prompts", type=int, default=16)
    parser.add_argument("--no-sft-baseline", action="store_true", help="skip the plain-SFT student")
    args = parser.parse_args()

    from L07_learning.models import JobConfig
    from L07_learning.pipelines.base_model import default_base_model_dir
    from L07_learning.pipelines.distillation.student import StudentSpec, derive_student, load_teacher
    from L07_learning.pipelines.distillation_pipeline import DistillationConfig, score_exact_match_with, train_student
    from L07_learning.pipelines.sft_pipeline import run_sft
    from L07_learning.settings import get_settings
    from L07_learning.tests.factories.sft import tool_rows

    cache = Path(os.environ.get("L07_MODEL_CACHE_DIR") or get_settings().model_cache_dir)
    train, held_out = tool_rows(args.train, seed=1), tool_rows(args.test, seed=2)
    with tempfile.TemporaryDirectory(prefix="l07-bench-distill-") as tmp:
        work = Path(tmp)
        base = default_base_model_dir(cache)
        t0 = time.perf_counter()
        sft = run_sft(base, train, [], JobConfig(
            learning_rate=1e-3, batch_size=8, max_steps=args.teacher_steps, epochs=1, lora_rank=8, lora_alpha=16,
            max_seq_length=256, eval_strategy="no", save_strategy="no", gradient_checkpointing=False,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], seed=42),
            work / "adapter", work / "ckpt", measure_generation=False)
        teacher_train_s = time.perf_counter() - t0
        teacher = load_teacher(base, sft.adapter_dir)
        teacher_score = score_exact_match_with(*teacher, held_out)

        spec = StudentSpec(num_layers=args.student_layers, hidden_size=args.student_hidden)
        init, info = derive_student(base, spec, work / "init", seed=42, teacher=teacher)
        config = DistillationConfig(max_steps=args.steps, batch_size=16, learning_rate=3e-3, seed=42,
                                    freeze_embeddings=args.student_hidden is None)
        kd = train_student(init, train, config, work / "distilled", teacher)
        student = load_teacher(work / "distilled")
        student_score = score_exact_match_with(*student, held_out)
        sft_acc = None
        if not args.no_sft_baseline:
            train_student(init, train, config.model_copy(update={"alpha": 0.0}), work / "sft", teacher)
            sft_acc = score_exact_match_with(*load_teacher(work / "sft"), held_out).accuracy

        prompts = [r[:-1] for r in held_out[: args.latency_prompts]]
        teacher_latency = _latency(*teacher, prompts, 16)
        student_latency = _latency(*student, prompts, 16)

    result = {
        "benchmark": "distill",
        "teacher_accuracy": round(teacher_score.accuracy, 4),
        "student_accuracy": round(student_score.accuracy, 4),
        "sft_student_accuracy": None if sft_acc is None else round(sft_acc, 4),
        "score_ratio": round(student_score.accuracy / teacher_score.accuracy, 4) if teacher_score.accuracy else None,
        "teacher_parameters": kd.teacher_parameters,
        "student_parameters": kd.student_parameters,
        "parameter_ratio": round(kd.parameter_ratio, 4),
        "teacher_latency_ms": round(1000 * teacher_latency, 2),
        "student_latency_ms": round(1000 * student_latency, 2),
        "latency_ratio": round(student_latency / teacher_latency, 4),
        "student_layers": args.student_layers,
        "initialisation": info["method"],
        "distill_steps": kd.steps,
        "distill_seconds": round(kd.duration_s, 1),
        "teacher_sft_seconds": round(teacher_train_s, 1),
        "final_loss": round(kd.final_loss, 4),
        "device": "cuda" if __import__("torch").cuda.is_available() else "cpu",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
