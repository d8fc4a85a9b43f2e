"""``Importer``: read a source with its format's reader, pass the examples through the quality filter in batches
(the same filter and storage path as ingested examples), store preference pairs from the accepted preferred answers,
record every refused line as a filter rejection (reason ``unreadable``, so ``l07 examples rejected --reason
unreadable`` lists them) and return the per-line report."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ...models.error_codes import L07Error, L07ErrorCode
from ...models.reward_signal import PreferencePair
from ...store.db import Database
from ...store.repositories.filter_decisions import FilterDecisionRepository
from ...store.repositories.rewards import RewardRepository
from ..example_quality_filter import Decision, ExampleQualityFilter
from ..filtering.redaction import redact_for_storage
from . import CURATED_FORMATS, FORMATS
from .records import Record, Source, file_sha256
from .report import ImportReport

BATCH = 1000
DECLARED_QUALITY = 100.0
"""Quality of a curated file's lines (see ``CURATED_FORMATS``): the uploader states these are the answers wanted."""


class Importer:
    """Imports files into the example store.

    Args:
        db: The database the filter persists into.
        quality_filter: The app's or CLI's filter (its dedup index and pool are shared with ingestion).
    """

    def __init__(self, db: Database, quality_filter: ExampleQualityFilter) -> None:
        self.db = db
        self.filter = quality_filter

    async def import_file(self, format: str, path: Path, *, file_name: str | None = None,  # noqa: A002
                          quality: float | None = None, agent_id: str | None = None,
                          task_type: str | None = None) -> ImportReport:
        """Import ``path`` as ``format``.

        Args:
            file_name: Name kept in the provenance (default: the path's name).
            quality: Declared quality (0-100) of records without a score of their own; default 100 for curated
                formats, none for traces (their unscored records go to REVIEW).
            agent_id, task_type: Stored on every example (default ``import:<format>`` / ``imported``).

        Raises:
            L07Error: E7110 for an unknown format or a quality outside 0-100, E7031 for a file that cannot be read.
        """
        reader = FORMATS.get(format)
        if reader is None:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"unknown import format {format!r}; one of {', '.join(FORMATS)}", format=format)
        if quality is None and format in CURATED_FORMATS:
            quality = DECLARED_QUALITY
        if quality is not None and not 0 <= quality <= 100:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"quality {quality} outside 0-100")
        if not path.exists():
            raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE, f"{path} does not exist", path=str(path))
        name = file_name or path.name
        sha = await asyncio.to_thread(file_sha256, path) if path.is_file() else "folder:" + path.name
        source = Source(format, name, sha, quality, agent_id or f"import:{format}", task_type or "imported")
        records = await asyncio.to_thread(lambda: list(reader(path, source)))
        report = ImportReport(format, name, sha)
        for start in range(0, len(records), BATCH):
            await self._batch(records[start:start + BATCH], source, report)
        return report

    async def _batch(self, records: list[Record], source: Source, report: ImportReport) -> None:
        readable = [r for r in records if r.example is not None]
        decisions = (await self.filter.filter_detailed([r.example for r in readable])).decisions if readable else []
        pairs = []
        for record, d in zip(readable, decisions):
            if d.decision is Decision.ACCEPT and d.example is not None:
                report.imported.append({"line": record.line, "example_id": d.example_id})
                if record.rejected is not None:
                    # The file ranks the two answers without saying by how much: the pair carries the preferred
                    # answer's quality as its margin (the other answer is declared the worse one).
                    pairs.append(PreferencePair(
                        prompt=d.example.input_text, chosen=d.example.output_text, rejected=record.rejected,
                        chosen_example_id=d.example_id, margin=d.example.quality_score,
                        task_type=d.example.task_type, source=f"import:{source.format}"))
            else:
                report.filtered.append({"line": record.line, "example_id": d.example_id, "decision": d.decision.value,
                                        "reason": d.reason, "code": d.code, "detail": d.detail})
        refused = [r for r in records if r.refusal is not None]
        report.refused += [{"line": r.line, "code": r.refusal.code.value, "message": r.refusal.message}
                           for r in refused if r.refusal is not None]
        report.skipped += [{"line": r.line, "reason": r.skipped} for r in records if r.skipped is not None]
        if not pairs and not refused:
            return
        async with self.db.session() as session:
            report.pairs += await RewardRepository(session, redact=redact_for_storage).add_pairs(pairs)
            repo = FilterDecisionRepository(session)
            for r in refused:
                assert r.refusal is not None
                provenance = {"format": source.format, "file": source.file_name, "sha256": source.sha256,
                              "line": r.line}
                repo.add_rejection(f"{source.format}:{source.sha256[:16]}:{r.line}", Decision.REJECT.value,
                                   "unreadable", r.refusal.code.value, f"import:{source.format}",
                                   f"line {r.line}: {r.refusal.message}", source.agent_id, {"import": provenance})
