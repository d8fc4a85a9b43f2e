"""Event sources behind one protocol: each yields batches of raw events and is told when a batch is committed.

``services.ingestion.run_source`` drives any source through the single ingestion path: it ingests a batch, and only
after the database commit calls ``batch.ack(result)`` (Redis: XACK + dead-letter of rejected entries). A failed batch
is never acknowledged, so the transport redelivers it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..models.error_codes import L07Error, L07ErrorCode


async def _noop(_result: Any) -> None:
    return None


@dataclass
class SourceBatch:
    """Raw events plus the callbacks a source needs once the batch committed (``ack``) or failed (``fail``)."""

    events: list[Any]
    ack: Callable[[Any], Awaitable[None]] = _noop
    fail: Callable[[Exception], Awaitable[None]] = _noop


class EventSource(Protocol):
    """What every source offers: a transport name, an async stream of batches, and ``close``."""

    transport: str

    def batches(self) -> AsyncIterator[SourceBatch]: ...

    async def close(self) -> None: ...


class FileSource:
    """A JSONL file, or every ``*.jsonl``/``*.json`` file of a folder (sorted), one event per line.

    A file has no offsets to commit: re-ingesting it is safe because every event id is claimed once.

    Args:
        path: File or folder.
        batch_size: Lines per batch (one DB transaction each).
    """

    transport = "file"

    def __init__(self, path: str | Path, batch_size: int = 1000) -> None:
        self.path = Path(path)
        self.batch_size = max(1, batch_size)
        if not self.path.exists():
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, f"no such file or folder: {self.path}", path=str(self.path))

    def files(self) -> list[Path]:
        if self.path.is_dir():
            return sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix in {".jsonl", ".json", ".ndjson"})
        return [self.path]

    async def batches(self) -> AsyncIterator[SourceBatch]:
        batch: list[Any] = []
        for file in self.files():
            with file.open("rb") as fh:
                for line in fh:
                    line = line.rstrip(b"\r\n")
                    if not line.strip():
                        continue
                    batch.append(line)
                    if len(batch) >= self.batch_size:
                        yield SourceBatch(batch)
                        batch = []
        if batch:
            yield SourceBatch(batch)

    async def close(self) -> None:
        return None
