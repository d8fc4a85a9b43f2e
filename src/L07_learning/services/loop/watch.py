"""The watched-folder source of ``l07 run --watch DIR`` (contract §9).

Every ``*.jsonl`` dropped in the folder is ingested once through the one ingestion + quality-filter path, then moved
to ``DIR/done/`` with ``NAME.report.json`` beside it (lines read, rejected lines with their codes, filter
decisions), or to ``DIR/failed/`` with ``NAME.reason.txt`` when it cannot be read as UTF-8 text. A file is taken only
once its size and modification time are unchanged across two polls and it is ``settle_s`` old, so a file still being
written is left alone. A storage failure leaves the file where it is for the next poll; re-ingesting it is safe
because every event id is claimed once.

Several processes may watch one folder: a process takes a file by renaming it atomically to
``DIR/.processing/NAME.<holder>`` (the holder is ``host:pid:random``), so exactly one of them wins and the others see
it gone. After a storage failure the file is renamed back for the next poll. A file left in ``.processing/`` by a
process of this host that no longer runs is renamed back when a watcher starts; one held by another host, or by a
holder name without a pid, is left for the operator to move back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ...models._base import utcnow
from ...models.error_codes import L07Error
from ...settings import Settings
from ...store.db import Database
from ...store.repositories.examples import ExampleRepository
from ..ingestion.pipeline import ingest_and_filter
from .lease import process_holder

log = logging.getLogger(__name__)

BATCH_LINES = 1000


class UnreadableFile(Exception):
    """The file cannot be read as UTF-8 JSON lines at all (it goes to ``failed/``)."""


class FolderWatcher:
    """Polls one folder for finished ``*.jsonl`` files.

    Args:
        folder: The watched folder (created when missing, with ``done/`` and ``failed/``).
        db, settings, quality_filter: What the ingestion + filter path needs.
        settle_s: Minimum age of a file's last modification before it is taken.
        holder: This process's name (``lease.process_holder()``), the suffix of the files it is processing.
    """

    def __init__(self, folder: str | Path, *, db: Database, settings: Settings, quality_filter: Any,
                 settle_s: float = 1.0, holder: str | None = None) -> None:
        self.folder = Path(folder).expanduser()
        self.done = self.folder / "done"
        self.failed = self.folder / "failed"
        self.processing = self.folder / ".processing"
        for path in (self.folder, self.done, self.failed, self.processing):
            path.mkdir(parents=True, exist_ok=True)
        self.holder = holder or process_holder()
        self._return_orphans()
        self.db = db
        self.settings = settings
        self.quality_filter = quality_filter
        self.settle_s = settle_s
        self._last_seen: dict[Path, tuple[int, float]] = {}

    def ready_files(self) -> list[Path]:
        """Files unchanged since the previous poll and older than ``settle_s``, oldest name first."""
        now = time.time()
        seen: dict[Path, tuple[int, float]] = {}
        ready = []
        for path in sorted(self.folder.glob("*.jsonl")):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            if not path.is_file():
                continue
            seen[path] = (st.st_size, st.st_mtime)
            if self._last_seen.get(path) == seen[path] and now - st.st_mtime >= self.settle_s:
                ready.append(path)
        self._last_seen = seen
        return ready

    async def poll(self) -> list[dict[str, Any]]:
        """Ingest every ready file; returns one report per file moved (to ``done/`` or ``failed/``)."""
        reports = []
        for path in self.ready_files():
            self._last_seen.pop(path, None)
            claimed = self.processing / f"{path.name}.{self.holder}"
            try:
                path.rename(claimed)
            except FileNotFoundError:
                continue  # another process watching this folder took it
            try:
                reports.append(await self.ingest_file(claimed, path.name))
            except UnreadableFile as exc:
                reports.append(self._fail(claimed, path.name, str(exc)))
            except L07Error as exc:
                log.error("watched file %s not ingested, retried at the next poll: %s", path.name, exc)
                claimed.replace(_free_name(self.folder, path.name))
            except Exception:
                claimed.replace(_free_name(self.folder, path.name))
                raise
        return reports

    async def ingest_file(self, path: Path, name: str | None = None) -> dict[str, Any]:
        """Ingest one file and move it to ``done/`` as ``name`` (default its own name) with its report.

        Raises:
            UnreadableFile: The file cannot be read or is not UTF-8 text (nothing was ingested).
            L07Error: The database failed (the file stays for the next poll).
        """
        name = name or path.name
        lines = await asyncio.to_thread(_read_lines, path, name)
        rejected_lines: list[dict[str, Any]] = []
        item_status: Counter[str] = Counter()
        decisions: Counter[str] = Counter()
        for start in range(0, len(lines), BATCH_LINES):
            chunk = lines[start:start + BATCH_LINES]
            result, _accepted = await ingest_and_filter([text for _, text in chunk], "file", db=self.db,
                                                        settings=self.settings, quality_filter=self.quality_filter)
            for (number, _), item in zip(chunk, result.items):
                item_status[item.status] += 1
                if item.status == "rejected":
                    rejected_lines.append({"line": number, "code": item.code, "reason": item.reason})
            decisions.update(await self._decisions([e.example_id for e in result.examples]))
        report = {
            "file": name, "finished_at": utcnow().isoformat(),
            "lines_read": len(lines), "ingested": len(lines) - item_status["rejected"],
            "rejected": item_status["rejected"], "events": dict(item_status),
            "rejected_by_code": dict(Counter(r["code"] for r in rejected_lines)), "rejected_lines": rejected_lines,
            "examples": {"extracted": sum(decisions.values()), "accepted": decisions["ACCEPTED"],
                         "review": decisions["REVIEW"], "rejected": decisions["REJECTED"],
                         "quarantined": decisions["QUARANTINED"], "pending": decisions["PENDING"]},
        }
        target = _free_name(self.done, name)
        (self.done / f"{target.name}.report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        path.replace(target)
        report["moved_to"] = str(target)
        log.info("watched file ingested", extra={"file": name, "lines": len(lines),
                                                 "rejected": item_status["rejected"]})
        return report

    async def _decisions(self, example_ids: list[str]) -> Counter[str]:
        """The filter's decision on each example, as stored (status ACCEPTED, REVIEW, REJECTED...)."""
        async with self.db.session() as session:
            stored = await ExampleRepository(session).get_many(example_ids)
        return Counter(e.status.value for e in stored)

    def _fail(self, path: Path, name: str, reason: str) -> dict[str, Any]:
        target = _free_name(self.failed, name)
        (self.failed / f"{target.name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
        path.replace(target)
        log.error("watched file moved to failed/", extra={"file": name, "reason": reason})
        return {"file": name, "failed": reason, "moved_to": str(target)}

    def _return_orphans(self) -> None:
        """Rename back to the folder the files that a dead process of this host was processing."""
        host = socket.gethostname()
        for path in self.processing.iterdir():
            # NAME.host:pid:random -> ("NAME.host", "pid")
            owner, _, pid = path.name.rpartition(":")[0].rpartition(":")
            if not owner.endswith(f".{host}") or not pid.isdigit() or _alive(int(pid)):
                continue
            path.replace(_free_name(self.folder, owner[:-len(host) - 1]))
            log.warning("watched file returned from a dead process", extra={"file": path.name})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _read_lines(path: Path, name: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UnreadableFile(f"cannot read {name}: {exc.strerror or exc}") from exc
    if b"\x00" in raw:
        raise UnreadableFile(f"{name} is binary (NUL bytes), not JSON lines")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnreadableFile(f"{name} is not UTF-8 text (invalid byte at offset {exc.start})") from exc
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or with a timestamp suffix when a file of that name was already processed."""
    target = folder / name
    if not target.exists():
        return target
    return folder / f"{Path(name).stem}.{utcnow().strftime('%Y%m%dT%H%M%S%f')}{Path(name).suffix}"
