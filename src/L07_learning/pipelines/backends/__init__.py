"""Inference engines behind one interface, chosen by the setting ``L07_INFERENCE_BACKEND``.

``auto`` (default): vLLM on a CUDA device when installed; else, on CPU, the fast engines installed, in the order that
measured best for the work (a model an engine cannot convert falls through to the next), else transformers:

- ``batch`` (the validator's passes over held-out prompts): CTranslate2 (``pip install -e .[fast-cpu]``), then llama.cpp
  (``.[llama-cpp]``). CTranslate2 decodes the batch together; llama.cpp one sequence per context (2.2x vs 3.6x).
- ``serve`` (``serve-model``, one request or a few at a time): llama.cpp, then CTranslate2. At batch 1 llama.cpp's F16
  GGUF was the faster and smaller of the two (``benchmarks/serving.py``: CTranslate2 float32 1.6x transformers and
  1.04 GB under 8 requests, 2026-12-06). Naming an engine that is
not installed is an error, not a silent fallback: whoever set it expects that engine's speed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ...models.error_codes import L07Error, L07ErrorCode
from . import ctranslate2_backend, llama_cpp_backend, vllm_backend
from .base import InferenceBackend
from .transformers_backend import TransformersBackend

ENV = "L07_INFERENCE_BACKEND"
CHOICES = ("auto", "transformers", "ctranslate2", "llama_cpp", "vllm")
WORKLOADS = {"batch": ("ctranslate2", "llama_cpp"), "serve": ("llama_cpp", "ctranslate2")}
_log = logging.getLogger(__name__)

__all__ = ["CHOICES", "ENV", "InferenceBackend", "TransformersBackend", "chosen_backend", "load_backend"]


def chosen_backend(setting: str | None = None) -> str:
    """The setting's value (argument, else ``L07_INFERENCE_BACKEND``, else ``auto``), validated.

    Raises:
        L07Error: E7905 for a value that names no engine.
    """
    value = (setting or os.environ.get(ENV) or "auto").strip().lower().replace("-", "_")
    value = {"llamacpp": "llama_cpp", "ct2": "ctranslate2"}.get(value, value)
    if value not in CHOICES:
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND,
                       f"{ENV}={value!r} names no inference backend; choose one of {', '.join(CHOICES)}")
    return value


def load_backend(model_dir: str | Path, adapter_dir: str | Path | None = None,
                 backend: str | None = None, workload: str = "batch") -> InferenceBackend:
    """Load the model (adapter merged) in the chosen engine; ``workload`` (``batch`` or ``serve``) orders ``auto``.

    Raises:
        L07Error: E7905 an unknown engine, or a named engine that is not installed; E7032 the model cannot load.
    """
    choice = chosen_backend(backend)
    if choice == "vllm" or (choice == "auto" and vllm_backend.available()):
        if not vllm_backend.available():
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND,
                           f"{ENV}=vllm needs the vllm package and a CUDA device")
        return vllm_backend.VllmBackend.load(model_dir, adapter_dir)
    engines = {"ctranslate2": (ctranslate2_backend, ctranslate2_backend.CTranslate2Backend, "fast-cpu"),
               "llama_cpp": (llama_cpp_backend, llama_cpp_backend.LlamaCppBackend, "llama-cpp")}
    if choice in engines:
        module, engine, extra = engines[choice]
        if not module.available():
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND,
                           f"{ENV}={choice} needs its package: pip install -e '.[{extra}]'")
        return engine.load(model_dir, adapter_dir)
    if choice == "auto":
        for name in WORKLOADS[workload]:
            module, engine, _extra = engines[name]
            if not module.available():
                continue
            try:
                return engine.load(model_dir, adapter_dir)
            except L07Error as exc:
                # A model the engine cannot convert (not Llama, unusual tokenizer) is still served, more slowly.
                _log.warning("%s backend unavailable for %s (%s); trying the next engine", name, model_dir, exc)
    return TransformersBackend.load(model_dir, adapter_dir)
