"""Inference engines behind one interface, chosen by the setting ``L07_INFERENCE_BACKEND``.

``auto`` (default): vLLM on a CUDA device when installed; else, on CPU, llama.cpp when ``llama-cpp-python`` is
installed (``pip install -e .[llama-cpp]``), then CTranslate2 (``.[fast-cpu]``), then transformers; a model an engine
cannot convert falls through to the next. Order by measurement on the demo (2 cores, 2026-12-07, ``validation_seconds``
of ``l07 demo --json``): llama.cpp 3.7x faster than transformers (58 s against 214 s), because it decodes a
validation batch together with each shared prompt prefix computed once (``llama_cpp_batch``); CTranslate2 was no
faster than transformers there (260-269 s against 265 s on 2026-12-06: long prompts, compute-bound prefill; see
``benchmarks/validation_pieces.py``). At batch 1 (``benchmarks/serving.py``) llama.cpp was also the faster and
smaller. CTranslate2 installs as a wheel in seconds and batches concurrent requests (2.1x at 8).

Naming an engine that is not installed is an error, not a silent fallback: whoever set it expects that engine's speed.
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
                 backend: str | None = None) -> InferenceBackend:
    """Load the model (adapter merged) in the chosen engine.

    Raises:
        L07Error: E7905 an unknown engine, or a named engine that is not installed; E7032 the model cannot load.
    """
    choice = chosen_backend(backend)
    if choice == "vllm" or (choice == "auto" and vllm_backend.available()):
        if not vllm_backend.available():
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND,
                           f"{ENV}=vllm needs the vllm package and a CUDA device")
        return vllm_backend.VllmBackend.load(model_dir, adapter_dir)
    engines = {"llama_cpp": (llama_cpp_backend, llama_cpp_backend.LlamaCppBackend, "llama-cpp"),
               "ctranslate2": (ctranslate2_backend, ctranslate2_backend.CTranslate2Backend, "fast-cpu")}
    if choice in engines:
        module, engine, extra = engines[choice]
        if not module.available():
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND,
                           f"{ENV}={choice} needs its package: pip install -e '.[{extra}]'")
        return engine.load(model_dir, adapter_dir)
    if choice == "auto":
        for name, (module, engine, _extra) in engines.items():
            if not module.available():
                continue
            try:
                return engine.load(model_dir, adapter_dir)
            except L07Error as exc:
                # A model the engine cannot convert (not Llama, unusual tokenizer) is still served, more slowly.
                _log.warning("%s backend unavailable for %s (%s); trying the next engine", name, model_dir, exc)
    return TransformersBackend.load(model_dir, adapter_dir)
