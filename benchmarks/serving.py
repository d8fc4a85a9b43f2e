"""Serving speed of the inference backends: transformers against a fast engine (CTranslate2 by default, or llama.cpp),
same model, same prompts, one run.

For each backend the model is loaded as ``l07 serve-model`` loads it (``ServedModel.load``) and requests go through
the server's own scheduler (``services/release/batcher.Batcher``): at concurrency 1 one request at a time, at
concurrency 8 eight requests in flight. Rounds alternate between the backends, so a loaded machine slows both alike;
the ratios are the numbers to read. Reported per backend and concurrency: generated tokens/s, p50/p99 request
latency. Also: the share of prompts on which the fast backend's greedy answer equals transformers' (its converted
weights against fp32), and the peak RSS of a process that serves the model on the fast backend while 8 requests run
at once (the model process of ``serve-model``: backend, tokenizer and scheduler, without the HTTP layer).

Prompts: chat questions and agent turns with tools (the tool-call format of ``models/tool_calls.py``), none of them
training data of the model.

Run: ``PYTHONPATH=src python benchmarks/serving.py [--model DIR] [--prompts 24] [--max-tokens 48] [--fast ctranslate2|llama_cpp|vllm]``.
The table goes to stdout; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

QUESTIONS = [
    "What is the capital of France?", "Name three primary colours.", "What is 17 times 3?",
    "Give one synonym for happy.", "Explain what a CPU is in one sentence.", "Which planet is closest to the sun?",
    "Write a haiku about rain.", "How many days are in a leap year?", "What does HTTP stand for?",
    "Translate 'good morning' into Spanish.", "What is the boiling point of water in Celsius?",
    "Name a mammal that can fly.", "What is the square root of 81?", "Who wrote Romeo and Juliet?",
    "List two uses of a hammer.", "What gas do plants take in?",
]
AGENT_GOALS = [
    "How many feet is 152 m?", "Is it raining in Oslo?", "Convert 3 km to miles.", "Weather in Lisbon tomorrow?",
    "How many pounds is 70 kg?", "Is it sunny in Cairo?", "Convert 100 F to C.", "Do I need an umbrella in Bergen?",
]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * (len(ordered) - 1))))]


def _prompts(tokenizer, n: int) -> list[str]:  # type: ignore[no-untyped-def]
    from L07_learning.models.tool_calls import render_chat
    from L07_learning.tests.factories.serving import TOOLS, conversation

    texts = [render_chat(tokenizer, [{"role": "user", "content": q}]) for q in QUESTIONS]
    texts += [render_chat(tokenizer, conversation(g), TOOLS) for g in AGENT_GOALS]
    return [texts[i % len(texts)] for i in range(n)]


async def _serve(served, texts: list[str], limit: int, concurrency: int) -> dict:  # type: ignore[no-untyped-def]
    """Requests through the server's batcher, ``concurrency`` in flight; per-request latency and total tokens/s."""
    from L07_learning.services.release.batcher import Batcher

    batcher = Batcher(served, max_batch=8)
    batcher.start()
    latencies: list[float] = []
    answers: list[str] = [""] * len(texts)
    tokens = 0
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal tokens
        async with gate:
            t0 = time.perf_counter()
            res = await batcher.complete(texts[i], limit)
            latencies.append(time.perf_counter() - t0)
            answers[i] = res.text
            tokens += res.new_tokens

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(len(texts))))
    wall = time.perf_counter() - started
    await batcher.stop()
    return {"tokens": tokens, "wall_s": wall, "latencies": latencies, "answers": answers}


def _rss_under_load(model_dir: str, backend: str, limit: int) -> int:
    """Peak RSS (bytes) of a fresh process serving the model on ``backend`` with 8 concurrent requests."""
    code = f"""
import asyncio, json, sys, threading, time, psutil
sys.path.insert(0, {str(SRC)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
from serving import _prompts, _serve
from L07_learning.services.release.serving_model import ServedModel
served = ServedModel.load({model_dir!r}, None, backend={backend!r})
peak = [0]; done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], psutil.Process().memory_info().rss); time.sleep(0.02)
t = threading.Thread(target=sample, daemon=True); t.start()
asyncio.run(_serve(served, _prompts(served.tokenizer, 16), {limit}, 8))
done.set(); t.join()
print(json.dumps({{"peak_rss": peak[0]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="Hugging Face model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--prompts", type=int, default=24, help="requests per backend and concurrency")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--fast", default="ctranslate2", help="the fast backend to compare (ctranslate2, llama_cpp, vllm)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations between the backends per concurrency")
    args = parser.parse_args()

    from L07_learning.pipelines.base_model import default_base_model_dir
    from L07_learning.services.release.serving_model import ServedModel
    from L07_learning.settings import get_settings

    model_dir = args.model or str(default_base_model_dir(get_settings().model_cache_dir))
    t0 = time.perf_counter()
    backends = {"transformers": ServedModel.load(model_dir, None, backend="transformers")}
    load_s = {"transformers": time.perf_counter() - t0}
    t0 = time.perf_counter()
    backends[args.fast] = ServedModel.load(model_dir, None, backend=args.fast)  # converts + caches the model once
    load_s[args.fast] = time.perf_counter() - t0
    texts = _prompts(backends["transformers"].tokenizer, args.prompts)
    for served in backends.values():  # warm-up: first calls pay one-off allocation costs
        asyncio.run(_serve(served, texts[:2], 8, 1))

    results: dict[str, dict] = {}
    answers: dict[str, list[str]] = {}
    chunk = max(1, len(texts) // args.rounds)
    for concurrency in (1, 8):
        acc = {name: {"tokens": 0, "wall_s": 0.0, "latencies": [], "answers": []} for name in backends}
        for r in range(0, len(texts), chunk):
            for name, served in backends.items():  # interleaved: both backends see the same machine load
                out = asyncio.run(_serve(served, texts[r:r + chunk], args.max_tokens, concurrency))
                acc[name]["tokens"] += out["tokens"]
                acc[name]["wall_s"] += out["wall_s"]
                acc[name]["latencies"] += out["latencies"]
                acc[name]["answers"] += out["answers"]
        for name, a in acc.items():
            results[f"{name}@{concurrency}"] = {
                "backend": name, "concurrency": concurrency, "requests": len(a["latencies"]),
                "tokens_per_s": a["tokens"] / a["wall_s"], "p50_ms": _percentile(a["latencies"], 0.5) * 1000,
                "p99_ms": _percentile(a["latencies"], 0.99) * 1000,
            }
            if concurrency == 1:
                answers[name] = a["answers"]
    same = sum(a == b for a, b in zip(answers["transformers"], answers[args.fast])) / len(texts)
    rss = _rss_under_load(model_dir, args.fast, args.max_tokens)

    print(f"{'backend':<14}{'conc':>5}{'tokens/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for row in results.values():
        print(f"{row['backend']:<14}{row['concurrency']:>5}{row['tokens_per_s']:>10.1f}{row['p50_ms']:>10.0f}"
              f"{row['p99_ms']:>10.0f}")
    speedup = {c: results[f"{args.fast}@{c}"]["tokens_per_s"] / results[f"transformers@{c}"]["tokens_per_s"]
               for c in (1, 8)}
    print(f"speed-up {args.fast}/transformers: c=1 {speedup[1]:.1f}x, c=8 {speedup[8]:.1f}x; same greedy answer "
          f"{same:.0%} of {len(texts)} prompts; {args.fast} serving RSS under 8 concurrent: {rss / 2**20:.0f} MiB")
    print(json.dumps({"model": model_dir, "prompts": len(texts), "max_tokens": args.max_tokens, "cpus": os.cpu_count(),
                      "load_s": load_s, "results": list(results.values()), "speedup": speedup,
                      "same_answer_rate": same, "fast_rss_bytes_8_concurrent": rss,
                      "targets": {"speedup_c1_ge_5": speedup[1] >= 5, "same_answer_ge_0.95": same >= 0.95,
                                  "rss_lt_1GB": rss < 1e9}}))


if __name__ == "__main__":
    main()
