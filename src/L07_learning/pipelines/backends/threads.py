"""How many CPU threads a native engine (llama.cpp, CTranslate2) decodes on, and how many decodes run side by side."""

from __future__ import annotations

import os

from ...models.error_codes import L07Error, L07ErrorCode


def default_threads() -> int:
    """``L07_INFERENCE_THREADS``, else one core less than the machine has (at least one).

    Measured on the 2-core CI machine under load: 1 thread decodes ~30 tokens/s, 2 threads 6-8, because llama.cpp's
    threads wait for each other at every layer and a busy core stalls them all; the spare core also keeps the event
    loop and tokenizer of ``serve-model`` responsive.
    """
    configured = _env_count("L07_INFERENCE_THREADS")
    return configured if configured is not None else max(1, (os.cpu_count() or 1) - 1)


def _env_count(name: str) -> int | None:
    """A whole-number setting from the environment (at least 1), None when unset; E7905 for anything else."""
    configured = os.environ.get(name, "").strip()
    if not configured:
        return None
    try:
        return max(1, int(configured))
    except ValueError as exc:
        raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"{name}={configured!r} is not a whole number") from exc


def default_lanes(threads: int) -> int:
    """``L07_INFERENCE_LANES``, else as many contexts as the machine's cores hold at ``threads`` each (at least one).

    With one thread per context on 2 cores that is two lanes: a batch pass uses both cores without the per-layer
    thread barrier that makes one context with 2 threads stall when a core is busy (``default_threads``). The demo's
    validation on 2 quiet cores: 144 s with one context, 111 s with two lanes (transformers: 244 s).
    """
    configured = _env_count("L07_INFERENCE_LANES")
    return configured if configured is not None else max(1, (os.cpu_count() or 1) // max(threads, 1))
