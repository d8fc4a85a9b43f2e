"""Pausing the cyclic garbage collector for one batch.

Ingestion and the quality filter both build hundreds of thousands of small objects per batch that all stay alive
until the batch ends; the collector would walk them again and again for nothing, so both pause it for the batch.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_gc_pauses = 0


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for one batch.

    A 10,000-event batch allocates hundreds of thousands of small dicts that all stay alive until the batch ends, so
    the collector runs repeated full passes over them for nothing (measured here: parsing 5x slower with it on).
    Reference counting still frees everything as usual; only cycles wait until the batch ends (the previous state is
    restored on exit, and nested or concurrent batches leave it to the outermost one).
    """
    global _gc_pauses
    if _gc_pauses == 0 and not gc.isenabled():
        yield  # the application manages the collector itself
        return
    _gc_pauses += 1
    gc.disable()
    try:
        yield
    finally:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.enable()
