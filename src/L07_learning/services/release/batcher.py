"""Concurrent chat requests decoded together: requests that arrive while a forward pass runs form the next batch.

The model is not re-entrant, so one thread runs every forward pass; batching is what lets 8 agents share it without
waiting for each other's answers one by one. A streaming request runs as its own batch of one (transformers
streamers handle a single sequence), its pieces handed to the event loop as they are produced.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ...observability.metrics import SERVING_BATCH_SIZE, SERVING_TOKENS, SERVING_TOKENS_PER_S
from ...pipelines.generation import GenerationResult
from .serving_model import ServedModel

_DONE = object()


@dataclass
class _Completion:
    text: str
    limit: int
    future: asyncio.Future[GenerationResult]


@dataclass
class _Stream:
    text: str
    limit: int
    pieces: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)


class Batcher:
    """Queue of generation requests in front of one :class:`ServedModel`.

    Args:
        served: The loaded model.
        max_batch: Most requests decoded in one forward batch.
    """

    def __init__(self, served: ServedModel, max_batch: int = 8) -> None:
        self.served = served
        self.max_batch = max_batch
        self._queue: asyncio.Queue[_Completion | _Stream] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="l07-serve")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def complete(self, text: str, limit: int) -> GenerationResult:
        """The greedy answer to one rendered prompt, decoded in a batch with whatever else is waiting."""
        future: asyncio.Future[GenerationResult] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Completion(text, limit, future))
        return await future

    async def stream(self, text: str, limit: int) -> AsyncIterator[str]:
        """Text pieces of the greedy answer to one rendered prompt, as they are produced."""
        request = _Stream(text, limit)
        await self._queue.put(request)
        while True:
            piece = await request.pieces.get()
            if piece is _DONE:
                return
            if isinstance(piece, BaseException):
                raise piece
            yield piece

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            if isinstance(first, _Stream):
                await self._run_stream(first)
                continue
            batch, later = [first], None
            while len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if isinstance(item, _Stream):
                    later = item
                    break
                batch.append(item)
            await self._run_batch(batch)
            if later is not None:
                await self._run_stream(later)

    async def _run_batch(self, batch: list[_Completion]) -> None:
        live = [r for r in batch if not r.future.cancelled()]
        if not live:
            return
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self.served.generate_batch,
                                                 [r.text for r in live], [r.limit for r in live])
        except Exception as exc:  # noqa: BLE001 - handed to each waiting request, the server keeps serving
            for r in live:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        tokens = sum(res.new_tokens for res in results)
        SERVING_BATCH_SIZE.observe(len(live))
        SERVING_TOKENS.labels("completion").inc(tokens)
        SERVING_TOKENS_PER_S.set(tokens / max(time.perf_counter() - started, 1e-9))
        for r, res in zip(live, results):
            if not r.future.done():
                r.future.set_result(res)

    async def _run_stream(self, request: _Stream) -> None:
        loop = asyncio.get_running_loop()

        def produce() -> None:
            try:
                for piece in self.served.stream(request.text, request.limit):
                    loop.call_soon_threadsafe(request.pieces.put_nowait, piece)
            except Exception as exc:  # noqa: BLE001 - re-raised in the request's own task
                loop.call_soon_threadsafe(request.pieces.put_nowait, exc)
            loop.call_soon_threadsafe(request.pieces.put_nowait, _DONE)

        SERVING_BATCH_SIZE.observe(1)
        await loop.run_in_executor(self._executor, produce)
