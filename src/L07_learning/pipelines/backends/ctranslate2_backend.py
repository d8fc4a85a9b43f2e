"""CTranslate2 on a converted copy of the model (float32): the fast CPU engine that installs as a wheel.

It decodes a whole batch per step in C++ (``pip install -e .[fast-cpu]``, seconds; llama-cpp-python compiles for half
an hour). Measured on 2 cores (SmolLM2-135M): the same greedy answers as transformers on 50 of 50 held-out tool-use
turns (3.6x faster beside a training job; 1.0-1.5x on a quiet machine); ``serve-model`` 1.6x at concurrency 1 and 2.1x
at 8 (same answers on 24 of 24, 1.04 GB RSS). The demo's whole validation was no faster than in transformers (260-269 s
against 265 s): its prompts are long (tool schemas), prefill is compute-bound in any engine, and CTranslate2 feeds the
part of each prompt beyond the batch's shortest through its decoding loop (``benchmarks/validation_pieces.py``). So
``auto`` tries llama.cpp first where both are installed (``backends/__init__``).

float32 by measurement: int8 weights (``L07_CT2_COMPUTE_TYPE=int8_float32``) were 2x faster again but changed the
greedy answer on 31 of 50 turns. Prompts are tokenised by the model's Hugging Face tokenizer and handed over as
tokens; new ids are decoded by the same tokenizer, so every engine sees and produces text the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ..generation import GenerationResult, stop_token_ids
from .base import InferenceBackend, cut_at_stop, refuse_decoding_rules
from .conversion import converted, source_version
from .threads import default_lanes, default_threads

COMPUTE_ENV = "L07_CT2_COMPUTE_TYPE"
DEFAULT_COMPUTE = "float32"
_COMPUTE_TYPES = ("float32", "int8_float32", "int8", "int16")


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("ctranslate2") is not None


def compute_type() -> str:
    """``L07_CT2_COMPUTE_TYPE`` (default float32); E7905 for a type CTranslate2 does not run on CPU."""
    value = (os.environ.get(COMPUTE_ENV) or DEFAULT_COMPUTE).strip().lower()
    if value not in _COMPUTE_TYPES:
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND,
                       f"{COMPUTE_ENV}={value!r}: choose one of {', '.join(_COMPUTE_TYPES)}")
    return value


def _convert(hf_dir: Path, out: Path, quantization: str) -> Path:
    """Write the CTranslate2 model folder; it appears complete or not at all (built beside it, then renamed)."""
    import ctranslate2

    work = Path(tempfile.mkdtemp(prefix=".ct2.", dir=out.parent))
    try:
        try:
            ctranslate2.converters.TransformersConverter(str(hf_dir)).convert(str(work / "model"),
                                                                              quantization=quantization, force=True)
        except Exception as exc:  # noqa: BLE001 - the converter raises ValueError, KeyError, NotImplementedError...
            raise L07Error(L07ErrorCode.MODEL_INCOMPATIBILITY_WITH_GATEWAY,
                           f"CTranslate2 cannot convert {hf_dir}: {exc}") from exc
        try:
            os.replace(work / "model", out)
        except OSError:
            if not out.exists():  # another process renamed the same conversion first: use theirs
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def ct2_dir_for(model_dir: str | Path, adapter_dir: str | Path | None = None) -> Path:
    """The model (adapter merged) converted for CTranslate2, built on first use and cached beside the model."""
    quantization = compute_type()
    return converted(model_dir, adapter_dir, f"{quantization}.ct2", lambda hf, out: _convert(hf, out, quantization),
                     version=source_version(__file__))


class CTranslate2Backend(InferenceBackend):
    """A converted model in CTranslate2's ``Generator`` plus the Hugging Face tokenizer of the source model.

    Args:
        tokenizer: The model's tokenizer.
        model_path: The converted model folder.
        n_ctx: Context length (prompt + answer) in tokens.
        threads: CPU threads per worker (default: ``L07_INFERENCE_THREADS``, else one core less than the machine).
        workers: Batches decoded at once, each on its own threads (default: ``L07_INFERENCE_LANES``, else the cores
            the machine has at ``threads`` each). A batch of prompts is split among them; one request uses one.
    """

    name = "ctranslate2"

    def __init__(self, tokenizer: Any, model_path: str | Path, n_ctx: int = 4096, threads: int | None = None,
                 workers: int | None = None) -> None:
        import ctranslate2

        self.tokenizer = tokenizer
        self.model_path = Path(model_path)
        self.stops = stop_token_ids(tokenizer)
        self._end_tokens = tokenizer.convert_ids_to_tokens(self.stops)
        self.n_ctx = n_ctx
        threads = threads or default_threads()
        self.workers = workers or default_lanes(threads)
        try:
            self.generator = ctranslate2.Generator(str(model_path), device="cpu", compute_type=compute_type(),
                                                   intra_threads=threads, inter_threads=self.workers)
        except Exception as exc:  # noqa: BLE001 - CTranslate2 reports load failures as RuntimeError/ValueError
            raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE,
                           f"CTranslate2 cannot load {model_path}: {exc}") from exc

    @classmethod
    def load(cls, model_dir: str | Path, adapter_dir: str | Path | None = None) -> "CTranslate2Backend":
        from transformers import AutoTokenizer

        refuse_decoding_rules(Path(model_dir), "CTranslate2")
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        config = json.loads((Path(model_dir) / "config.json").read_text())
        n_ctx = int(config.get("max_position_embeddings") or 2048)
        return cls(tokenizer, ct2_dir_for(model_dir, adapter_dir), n_ctx=n_ctx)

    def _prompt_tokens(self, text: str, limit: int) -> list[str]:
        ids = self.prompt_ids(text)
        if len(ids) + limit > self.n_ctx:
            raise L07Error(L07ErrorCode.TOKENIZATION_ERROR,
                           f"prompt of {len(ids)} tokens plus {limit} new ones does not fit the {self.n_ctx}-token "
                           "context")
        return self.tokenizer.convert_ids_to_tokens(ids)

    def generate_rendered(self, texts: list[str], max_new_tokens: int, limits: list[int] | None = None,
                          ignore_stop: bool = False) -> list[Any]:
        if not texts:
            return []
        started = time.perf_counter()
        caps = [min(limits[k], max_new_tokens) if limits else max_new_tokens for k in range(len(texts))]
        longest = max(caps)
        prompts = [self._prompt_tokens(text, longest) for text in texts]
        # sampling_topk=1 is greedy decoding (the argmax token), as transformers' do_sample=False. ignore_stop:
        # min_length holds the end-of-turn token back, so every row decodes exactly `longest` tokens (timing work).
        results = self.generator.generate_batch(
            prompts, max_length=longest, min_length=longest if ignore_stop else 0, sampling_topk=1,
            beam_size=1, include_prompt_in_result=False, end_token=self._end_tokens, return_end_token=True,
            max_batch_size=-(-len(prompts) // self.workers))
        rows = [r.sequences_ids[0] for r in results]
        rows = [ids[:cap] if ignore_stop else cut_at_stop(ids, self.stops, cap) for ids, cap in zip(rows, caps)]
        per_item = (time.perf_counter() - started) / len(texts)
        return [GenerationResult(text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                                 latency_s=per_item, new_tokens=len(ids)) for ids in rows]

    def stream(self, text: str, limit: int) -> Iterator[str]:
        ids: list[int] = []
        sent = ""
        for step in self.generator.generate_tokens(self._prompt_tokens(text, limit), max_length=limit,
                                                   sampling_topk=1, end_token=self._end_tokens):
            if step.token_id in self.stops:
                return
            ids.append(step.token_id)
            # Decoding the whole answer each step keeps multi-token characters whole; only the new tail is sent.
            now = self.tokenizer.decode(ids, skip_special_tokens=True)
            if len(now) > len(sent) and not now.endswith("\ufffd"):
                yield now[len(sent):]
                sent = now

    def close(self) -> None:
        self.generator.unload_model()
