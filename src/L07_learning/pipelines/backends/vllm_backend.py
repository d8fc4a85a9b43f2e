"""vLLM on a CUDA device: continuous batching of every request in the batch, weights in bf16.

An adapter is merged into a cached copy of the model first (see ``conversion``), so the engine serves one plain
Hugging Face folder. Prompts go in as the Hugging Face tokenizer's ids, as in every other backend.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ..generation import GenerationResult, stop_token_ids
from .base import InferenceBackend, cut_at_stop
from .conversion import converted


def available() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None or importlib.util.find_spec("torch") is None:
        return False
    import torch

    return bool(torch.cuda.is_available())


def _merged(hf_dir: Path, out: Path) -> Path:
    import shutil

    if hf_dir != out:
        shutil.copytree(hf_dir, out)
    return out


class VllmBackend(InferenceBackend):
    """A model in a vLLM engine.

    Args:
        model_dir: A Hugging Face model folder (adapter already merged).
        gpu_memory_utilization: Share of the device memory vLLM may reserve (weights + KV cache).
    """

    name = "vllm"

    def __init__(self, model_dir: str | Path, gpu_memory_utilization: float = 0.5) -> None:
        from transformers import AutoTokenizer
        from vllm import LLM


        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.stops = stop_token_ids(self.tokenizer)
        try:
            self.llm = LLM(model=str(model_dir), gpu_memory_utilization=gpu_memory_utilization, enforce_eager=True,
                           seed=0)
        except Exception as exc:  # noqa: BLE001 - engine start-up failures all mean "model unusable here"
            raise L07Error(L07ErrorCode.BASE_MODEL_LOADING_FAILURE, f"vLLM cannot load {model_dir}: {exc}") from exc

    @classmethod
    def load(cls, model_dir: str | Path, adapter_dir: str | Path | None = None) -> "VllmBackend":
        if adapter_dir is None:
            return cls(model_dir)
        return cls(converted(model_dir, adapter_dir, "merged-hf", _merged))

    def generate_rendered(self, texts: list[str], max_new_tokens: int, limits: list[int] | None = None,
                          ignore_stop: bool = False) -> list[Any]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt


        caps = [min(limits[k], max_new_tokens) if limits else max_new_tokens for k in range(len(texts))]
        params = [SamplingParams(temperature=0.0, max_tokens=cap, stop_token_ids=[] if ignore_stop else self.stops,
                                 ignore_eos=ignore_stop, skip_special_tokens=True) for cap in caps]
        prompts = [TokensPrompt(prompt_token_ids=self.prompt_ids(t)) for t in texts]
        started = time.perf_counter()
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        per_item = (time.perf_counter() - started) / max(len(texts), 1)
        results = []
        for out, cap in zip(outs, caps):
            ids = list(out.outputs[0].token_ids)[:cap] if ignore_stop else cut_at_stop(list(out.outputs[0].token_ids),
                                                                                       self.stops, cap)
            results.append(GenerationResult(text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
                                            latency_s=per_item, new_tokens=len(ids)))
        return results

    def stream(self, text: str, limit: int) -> Iterator[str]:
        # The offline engine answers whole requests; the answer arrives as one piece.
        yield self.generate_rendered([text], limit)[0].text
