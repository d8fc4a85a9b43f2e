"""SFT throughput: L07's pipeline (``run_sft``, what every training job runs) against a plain TRL SFTTrainer script
with the same model, data and settings, in the same run. Also the peak resident memory of each.

Each side runs in its own fresh process (so peak RSS is its own), alternating, ``--repeats`` times; the best
tokens/s of each side is compared. Target: ratio >= 0.95.

    python benchmarks/sft.py                      # SmolLM2-135M base, 12 optimizer steps
    python benchmarks/sft.py --model tiny --steps 30

The final stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

SETTINGS = dict(learning_rate=1e-3, batch_size=8, lora_rank=8, lora_alpha=16, lora_dropout=0.05,
                max_seq_length=256, seed=42)


def _model_dir(kind: str, work: Path) -> Path:
    from L07_learning.pipelines.base_model import build_tiny_model, default_base_model_dir
    from L07_learning.settings import get_settings

    cache = get_settings().model_cache_dir
    if kind == "tiny":
        return build_tiny_model(work / "tiny", seed=0, cache_dir=cache)
    return default_base_model_dir(cache)


def _rows(n: int) -> list:
    from L07_learning.tests.factories.sft import tool_rows

    return tool_rows(n, seed=7)


def run_engine(model_dir: Path, steps: int, work: Path) -> dict:
    """L07's pipeline, exactly as a job runs it (no eval, so only training is timed)."""
    from L07_learning.models import JobConfig
    from L07_learning.pipelines.sft_pipeline import run_sft

    config = JobConfig(**SETTINGS, epochs=1, max_steps=steps, gradient_checkpointing=False, eval_strategy="no",
                       save_strategy="no", early_stopping_patience=0, precision="auto")
    result = run_sft(model_dir, _rows(steps * SETTINGS["batch_size"]), [], config, work / "adapter", work / "ckpt",
                     measure_generation=False)
    m = result.metrics
    return {"tokens": m["tokens_seen"], "train_seconds": m["train_seconds"], "steps": m["global_step"]}


def run_plain_trl(model_dir: Path, steps: int, work: Path) -> dict:
    """The reference: a straightforward TRL SFTTrainer + peft LoRA script on the same rows and settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(SETTINGS["seed"])
    cuda = torch.cuda.is_available()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16 if cuda else torch.float32)
    rows = _rows(steps * SETTINGS["batch_size"])
    ds = Dataset.from_list([{"prompt": r[:-1], "completion": r[-1:]} for r in rows])
    args = SFTConfig(output_dir=str(work / "trl"), per_device_train_batch_size=SETTINGS["batch_size"],
                     learning_rate=SETTINGS["learning_rate"], max_steps=steps, max_length=SETTINGS["max_seq_length"],
                     bf16=cuda, use_cpu=not cuda, report_to="none", save_strategy="no", logging_steps=1,
                     seed=SETTINGS["seed"], include_num_input_tokens_seen="non_padding", disable_tqdm=True,
                     warmup_steps=0.1, activation_checkpointing=False)  # TRL defaults to on; the engine's run has it off
    peft = LoraConfig(r=SETTINGS["lora_rank"], lora_alpha=SETTINGS["lora_alpha"], lora_dropout=SETTINGS["lora_dropout"],
                      target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft)
    t0 = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - t0
    return {"tokens": int(trainer.state.num_input_tokens_seen), "train_seconds": seconds,
            "steps": trainer.state.global_step}


def child(role: str, model: str, steps: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = _model_dir(model, work)
        out = (run_engine if role == "engine" else run_plain_trl)(model_dir, steps, work)
    out["tokens_per_second"] = out["tokens"] / out["train_seconds"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--role", choices=["engine", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args.role, args.model, args.steps)
        return
    env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Convert / build the model once before timing anything.
    with tempfile.TemporaryDirectory() as tmp:
        _model_dir(args.model, Path(tmp))
    runs: dict[str, list[dict]] = {"engine": [], "trl": []}
    for _ in range(args.repeats):
        for role in ("trl", "engine"):
            proc = subprocess.run([sys.executable, __file__, "--role", role, "--model", args.model,
                                   "--steps", str(args.steps)], env=env, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.stderr.write(proc.stderr[-4000:])
                raise SystemExit(f"{role} run failed with exit code {proc.returncode}")
            runs[role].append(json.loads(line[len("RESULT "):]))
            print(f"{role:6s} {runs[role][-1]}", file=sys.stderr)
    best = {role: max(r, key=lambda x: x["tokens_per_second"]) for role, r in runs.items()}
    ratio = best["engine"]["tokens_per_second"] / best["trl"]["tokens_per_second"]
    print(json.dumps({
        "benchmark": "sft_tokens_per_second", "model": args.model, "steps": args.steps, "repeats": args.repeats,
        "engine_tokens_per_second": round(best["engine"]["tokens_per_second"], 2),
        "trl_tokens_per_second": round(best["trl"]["tokens_per_second"], 2),
        "ratio": round(ratio, 4), "target_ratio": 0.95, "meets_target": ratio >= 0.95,
        "engine_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["engine"]), 1),
        "trl_peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs["trl"]), 1),
        "device": "cuda" if _cuda() else "cpu",
    }))


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
