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
    """``L07_INFERENCE_LANES``, else as many as the machine's cores hold at ``threads`` each (at least one): the
    CTranslate2 workers, or the shares a llama.cpp batch is split into, each decoded in a context of its own.

    With one thread each on 2 cores that is two lanes: a batch pass uses both cores without the per-layer thread
    barrier that stalls a 2-thread context when a core is busy (``default_threads``). On 2 quiet cores one llama.cpp
    context at 2 threads was a little faster (the demo's two models measured piece by piece, 2026-12-07: 28.2 s
    against 31.9 s), as each share of a split batch computes its shared prompt prefix again; the default keeps the
    setting that holds up under load.
    """
    configured = _env_count("L07_INFERENCE_LANES")
    return configured if configured is not None else max(1, (os.cpu_count() or 1) // max(threads, 1))
