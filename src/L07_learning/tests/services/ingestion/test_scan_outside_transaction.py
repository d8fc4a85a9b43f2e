"""Issue 22, HIGH 3: the content scan of a batch never runs while its write transaction is open (``prescan``).

The probe is the database's own transaction events (SQLAlchemy ``begin`` / ``commit`` / ``rollback`` on the engine)
and a pass-through spy on the scanner's detector entry points: every call goes to the real scanner, the spy only notes
whether a transaction was open at that moment.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import event, func, select, text

from L07_learning.services.filtering import ContentScanner
from L07_learning.services.filtering.redaction import StorageRedactor
from L07_learning.services.ingestion import prescan
from L07_learning.services.ingestion.pipeline import IngestionPipeline
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.tables import SqlProcessedEvent, SqlRewardSignal
from L07_learning.tests.factories.curation import AWS_KEY
from L07_learning.tests.services.test_secrets_at_rest import PLANTED, PROSE

from .test_extractor import score_event, trace_event


@pytest.fixture
def cfg(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home")


TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'l07_%'"
TABLES_PG = ("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() "
             "AND table_name LIKE 'l07_%'")


class ScanProbe:
    """Records, for each scan the scanner runs in this process, whether a database transaction was open."""

    def __init__(self, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open: set[int] = set()
        self.transactions = 0
        self.scans: list[tuple[str, bool]] = []
        engine = db.engine.sync_engine
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._end)
        event.listen(engine, "rollback", self._end)
        for name in ("annotate_many_async", "scan_texts"):
            monkeypatch.setattr(ContentScanner, name, self._spy(name, getattr(ContentScanner, name)))

    def _begin(self, conn: Any) -> None:
        self.open.add(id(conn))
        self.transactions += 1

    def _end(self, conn: Any) -> None:
        self.open.discard(id(conn))

    def _spy(self, name: str, real: Any) -> Any:
        probe = self

        def spy(scanner: ContentScanner, *args: Any, **kwargs: Any) -> Any:
            probe.scans.append((name, bool(probe.open)))
            return real(scanner, *args, **kwargs)
        return spy

    @property
    def inside(self) -> list[str]:
        return [name for name, in_txn in self.scans if in_txn]


async def test_no_scan_runs_while_the_ingestion_transaction_is_open(db: Database, cfg: Settings, monkeypatch):
    pipeline = IngestionPipeline(db=db, settings=cfg)
    await pipeline.ingest([trace_event("exec-stored", answer=f"Booked. Key {AWS_KEY}")])  # joins in the next batch
    probe = ScanProbe(db, monkeypatch)
    large = "Booked seat 14C on flight BERPAR-1. " * 1200  # > INLINE_SCAN_CHARS: the scan process pool path
    batch = [score_event("exec-stored"), trace_event("exec-new", answer=f"Sent to alice@example.com. {large}"),
             score_event("exec-new"), score_event("exec-waiting")]

    result = await pipeline.ingest(batch)

    assert [i.status for i in result.items] == ["extracted", "pending", "extracted", "pending"]
    assert probe.transactions > 0 and probe.scans, "the probe saw no transaction or no scan"
    assert probe.inside == [], f"scanned inside the write transaction: {probe.inside}"
    stored, new = result.examples
    # The scan the filter will trust is the real one: findings of the text as composed in the transaction.
    scanner = pipeline._scanner
    assert scanner.cached(stored) is not None and scanner.cached(new) is not None
    assert "pii:email" in new.metadata["scan_flags"]
    assert new.metadata["scan"]["findings"] == scanner.scan(new).findings_json()
    assert stored.metadata["scan"]["findings"] == scanner.scan(stored).findings_json()


async def test_a_join_changed_by_a_concurrent_writer_is_scanned_outside_and_stored_once(
        db: Database, cfg: Settings, monkeypatch):
    """Between the pre-scan and the transaction another writer stores the trace this batch's score completes: the
    transaction composes an example nobody scanned, rolls back, scans it with no transaction open and runs again.
    Nothing is lost or repeated: one claim per event, one example, one reward signal."""
    pipeline = IngestionPipeline(db=db, settings=cfg)
    other = IngestionPipeline(db=db, settings=cfg)
    real_prepare = prescan.ScanCache.prepare

    raced: list[bool] = []

    async def prepare_then_concurrent_write(cache: prescan.ScanCache, *args: Any) -> None:
        await real_prepare(cache, *args)
        if not raced:  # the other writer's own ingest passes through here too
            raced.append(True)
            await other.ingest([trace_event("exec-race", answer="Booked flight BERPAR-9 for Bob.")])

    monkeypatch.setattr(prescan.ScanCache, "prepare", prepare_then_concurrent_write)
    probe = ScanProbe(db, monkeypatch)
    misses: list[int] = []
    real_fill = prescan.ScanCache.fill

    async def counting_fill(cache: prescan.ScanCache, examples: list[Any]) -> None:
        misses.append(len(examples))
        await real_fill(cache, examples)

    monkeypatch.setattr(prescan.ScanCache, "fill", counting_fill)
    score = score_event("exec-race")

    result = await pipeline.ingest([score])

    assert [i.status for i in result.items] == ["extracted"]
    assert misses[-1] == 1, "the example composed in the transaction was scanned after a rollback"
    assert probe.inside == []
    [ex] = result.examples
    assert pipeline._scanner.cached(ex) is not None and "BERPAR-9" in ex.output_text
    async with db.session() as s:
        assert await ExampleRepository(s).count() == 1
        claims = await s.scalar(select(func.count()).select_from(SqlProcessedEvent))
        signals = await s.scalar(select(func.count()).select_from(SqlRewardSignal))
    assert claims == 2 and signals == 1  # the trace's and the score's keys; the score's signal
    again = await pipeline.ingest([score])
    assert [i.status for i in again.items] == ["duplicate"]


async def test_long_text_is_redacted_for_storage_outside_the_transaction(db: Database, cfg: Settings, monkeypatch):
    """The storage redaction's detectors run on a batch's long strings (answers, outputs, rejected payloads) before
    the transaction opens; what the transaction stores is still redacted: no planted value rests in clear."""
    probe = ScanProbe(db, monkeypatch)
    detected: list[tuple[int, bool]] = []
    real_detect = StorageRedactor._detect

    def spy(redactor: StorageRedactor, text: str, key: str) -> Any:
        detected.append((len(text), bool(probe.open)))
        return real_detect(redactor, text, key)

    monkeypatch.setattr(StorageRedactor, "_detect", spy)
    padding = " Seat 14C, window, vegetarian meal, extra legroom." * 30
    joined = trace_event("exec-long", answer=f"Booked BERPAR-1. {PROSE}{padding}")
    waiting = trace_event("exec-long-waiting", answer=f"Booked BERPAR-2. {PROSE}{padding}")
    invalid = trace_event("exec-long-bad", answer=f"{PROSE}{padding}")
    del invalid["data"]["agent_id"]
    pipeline = IngestionPipeline(db=db, settings=cfg)

    result = await pipeline.ingest([joined, score_event("exec-long"), waiting, invalid])

    assert [i.status for i in result.items] == ["pending", "extracted", "pending", "rejected"]
    long_inside = [n for n, in_txn in detected if n >= 513 and in_txn]
    assert any(n >= 513 for n, _ in detected) and long_inside == [], long_inside
    async with db.session() as s:
        tables = [r[0] for r in (await s.execute(text(TABLES_SQL if db.is_sqlite else TABLES_PG))).all()]
        dump = "".join([str(v) for t in tables for row in (await s.execute(text(f'SELECT * FROM "{t}"'))).all()
                        for v in row])
    assert "BERPAR-2" in dump and "Seat 14C" in dump, "the stored rows were not read"
    for name, value in PLANTED.items():
        assert value not in dump, f"{name} stored in clear"

