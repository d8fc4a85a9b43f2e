"""Where a validation's time goes, per inference engine: the validator's measurement of a candidate and its base, piece
by piece, on one machine in one run (transformers first, then the fast engine), plus the prompt-token arithmetic that
bounds any engine.

Input: an L07 home that holds a validated candidate (``l07 demo --home DIR`` leaves one). The cases, budget and models
are the validator's own (``ModelValidator._held_out_cases``, the demo's budget ``DEMO_VALIDATION_BUDGET``); each model
is measured in this process with ``evaluation_pipeline.measure_model`` and then timed once more with ``time_model``
(the validator's second latency round). Conversions for the fast engine are built before the clock starts: their cost
is the demo's, reported there.

Reported per engine and model: total, model load, the answers pass (every held-out turn, one batched generation), the
latency round (warm-up + timed single requests of fixed work), the safety probes (one batched generation) and the extra
latency round; then the ratio transformers / fast engine per piece. Prompt tokens: how many the answers pass feeds the
model, and how many it would with the longest shared prefix of each prompt computed once (what a prefix cache saves).

Run: ``PYTHONPATH=src python benchmarks/validation_pieces.py --home DEMO_HOME [--fast ctranslate2|llama_cpp]``.
The table goes to stdout; the last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


async def _validator_inputs(home: Path) -> dict[str, Any]:
    from L07_learning.services.learning_service import LearningService
    from L07_learning.settings import Settings
    from L07_learning.store.db import Database

    settings = Settings(home=home, database_url=f"sqlite+aiosqlite:///{home / 'l07.db'}")
    service = LearningService.build(settings=settings, db=Database(settings.database_url or ""))
    validator = service.validator
    candidates = [m for m in await service.registry.list_models() if m.parent_model_id]
    if not candidates:
        raise SystemExit(f"{home} holds no fine-tuned model: run `l07 demo --home {home}` first")
    candidate = candidates[0]
    base = await validator._baseline(candidate, None)
    cases, train = await validator._held_out_cases(candidate)
    return {"cases": cases, "probes": validator._memorisation_probes(train),
            "models": {"candidate": await validator._load_dirs(candidate), "base": await validator._load_dirs(base)}}


def _measure(engine: str, inputs: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    import L07_learning.pipelines.evaluation_pipeline as ep

    os.environ["L07_INFERENCE_BACKEND"] = engine
    pieces: dict[str, list[float]] = {}
    originals = {name: getattr(ep, name) for name in ("load_for_eval", "generate_with", "time_requests", "_safety")}

    def timed(name: str):  # type: ignore[no-untyped-def]
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                pieces.setdefault(name, []).append(time.perf_counter() - started)
        return run

    for name in originals:
        setattr(ep, name, timed(name))
    out: dict[str, Any] = {}
    try:
        for label, (model_dir, adapter) in inputs["models"].items():
            originals["load_for_eval"](model_dir, adapter)  # builds and caches the engine's conversion, untimed
            pieces.clear()
            started = time.perf_counter()
            _, report = ep.measure_model(model_dir, adapter, inputs["cases"], inputs["cases"], inputs["probes"],
                                         **budget)
            total = time.perf_counter() - started
            row = {"total_s": total, "load_s": pieces["load_for_eval"][0], "answers_s": pieces["generate_with"][0],
                   "latency_round_s": pieces["time_requests"][0], "safety_s": pieces["_safety"][0],
                   "accuracy": report.accuracy, "engine": report.engine,
                   "tokens_per_answer": report.latency["tokens_per_answer"]}
            started = time.perf_counter()
            ep.time_model(model_dir, adapter, inputs["cases"], int(report.latency["tokens_per_request"]),
                          budget["latency_requests"], budget["latency_warmup"])
            row["extra_latency_round_s"] = time.perf_counter() - started
            out[label] = {k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}
    finally:
        for name, fn in originals.items():
            setattr(ep, name, fn)
    return out


def _prompt_tokens(inputs: dict[str, Any]) -> dict[str, int]:
    from transformers import AutoTokenizer

    from L07_learning.pipelines.generation import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(inputs["models"]["candidate"][0])
    ids = sorted(tokenizer(render_prompt(tokenizer, c.prompt), add_special_tokens=False)["input_ids"]
                 for c in inputs["cases"])

    def shared(a: list[int], b: list[int]) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    # In sorted order each prompt's longest shared prefix with any other prompt is the one with its neighbour.
    uncached = sum(len(x) - (shared(x, ids[i - 1]) if i else 0) for i, x in enumerate(ids))
    return {"prompts": len(ids), "prompt_tokens": sum(map(len, ids)), "with_prefix_reuse": uncached,
            "longest": max(map(len, ids)), "shortest": min(map(len, ids))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, required=True, help="an L07 home with a fine-tuned model (a demo's)")
    parser.add_argument("--fast", default="ctranslate2", choices=["ctranslate2", "llama_cpp"])
    args = parser.parse_args()

    from L07_learning.services.demo.demo import DEMO_VALIDATION_BUDGET
    from L07_learning.services.model_validator import ValidationConfig

    inputs = asyncio.run(_validator_inputs(args.home.resolve()))
    budget = {"max_new_tokens": ValidationConfig().max_new_tokens, "latency_requests": 20, "latency_warmup": 3,
              "safety_prompts": 8, "batch_size": 8, **DEMO_VALIDATION_BUDGET}
    engines = {"transformers": _measure("transformers", inputs, budget), args.fast: _measure(args.fast, inputs, budget)}
    tokens = _prompt_tokens(inputs)
    pieces = ["total_s", "load_s", "answers_s", "latency_round_s", "safety_s", "extra_latency_round_s"]
    print(f"{len(inputs['cases'])} held-out turns; budget {budget}")
    print(f"{'engine':<14}{'model':<11}" + "".join(f"{p:>22}" for p in pieces) + f"{'accuracy':>10}")
    for engine, models in engines.items():
        for label, row in models.items():
            cells = "".join(f"{row[p]:>22.1f}" for p in pieces)
            print(f"{engine:<14}{label:<11}{cells}{row['accuracy']:>10.3f}")
    ratios = {label: {p: round(engines["transformers"][label][p] / max(engines[args.fast][label][p], 1e-9), 2)
                      for p in pieces} for label in inputs["models"]}
    for label, row in ratios.items():
        print(f"{'ratio':<14}{label:<11}" + "".join(f"{row[p]:>21.2f}x" for p in pieces))
    print(f"prompt tokens in the answers pass: {tokens['prompt_tokens']} over {tokens['prompts']} prompts "
          f"({tokens['shortest']}-{tokens['longest']} each); with each shared prefix computed once: "
          f"{tokens['with_prefix_reuse']}")
    print(json.dumps({"benchmark": "validation_pieces", "fast": args.fast, "budget": budget, "engines": engines,
                      "ratios_transformers_over_fast": ratios, "prompt_tokens": tokens,
                      "threads": os.cpu_count()}))


if __name__ == "__main__":
    main()
