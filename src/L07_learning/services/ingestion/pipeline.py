"""The one ingestion code path: raw events in, examples, joins, rewards, pairs and rejections out (contract §1).

Every transport uses ``IngestionPipeline.ingest``: the JSONL file source (``l07 ingest``), the Redis Streams consumer
(``l07 consume``), the in-process call (``LearningService.process_event`` via ``ingest_events``) and the HTTP endpoint.

One call processes one batch; its writes happen in one database transaction:

1. parse (no I/O, ``parsing``): a failure becomes a rejection with its E70xx code; it never stops the batch.
2. pre-scan, no transaction open (``prescan``): the examples the batch will complete are composed on the join rows
   stored now and their text is scanned in the scan process pool; the storage redaction's detector spans of what the
   batch will store are made in a worker thread (``storage_form``). So the write lock is not held while the content
   detectors run, and the event loop keeps serving meanwhile (issue 22, HIGH 3).
3. in the transaction: claim the ``(source, id)`` keys in ``l07_processed_events`` with ``INSERT ... ON CONFLICT DO
   NOTHING``: keys already there (earlier run, other consumer, same batch) are duplicates and do nothing; a key held
   only by a rejected event is taken over by a valid one, so an invalid event cannot pre-claim another producer's id.
4. join traces, planning records and scores through ``l07_pending_joins`` (locked rows on PostgreSQL, ``joining``),
   build the examples of every completed join and the reward signals (§5.5); attach each example's scan from step 2.
5. store rejections (``rejections``), joins, signals and (unless the caller takes them over) the examples, sweep the
   join window (``sweep``), then commit. Everything stored from the producer's content is redacted first (secrets
   masked, PII replaced: ``filtering.redaction``). Preference pairs come later, from the examples the quality filter
   accepts (``ingestion.accepted``).

Only after the commit do callers acknowledge their transport (XACK) and do metrics move, so a crash at any point
either loses nothing (redelivery) or repeats nothing (claimed keys). A unique-key race between two consumers, or an
example whose text step 2 did not scan, rolls the transaction back and the batch runs again. Any other failure that
is not the database being unreachable bisects the batch down to the event at fault (``isolation``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from ...events.cloudevent import RawEvent
from ...events.sources import EventSource
from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.training_example import TrainingExample
from ...observability.metrics import (
    EVENTS_CONSUMED,
    EVENTS_PENDING_JOIN,
    EVENTS_REJECTED,
    EXAMPLES_EXTRACTED,
    EXTRACTION_LATENCY,
    PENDING_JOINS,
)
from ...settings import Settings, get_settings
from ...store.db import Database, get_database
from ...store.repositories.events import ProcessedEventRepository, RejectedEventRepository
from ...store.repositories.examples import ExampleRepository
from ...store.repositories.joins import JoinRepository
from ...store.repositories.rewards import RewardRepository
from ..filtering import ContentScanner, FilterConfig
from ..filtering.gc_pause import paused_gc as _paused_gc
from .isolation import MAX_ATTEMPTS, EventFailure, first_line, isolated, run_transaction
from .joining import BatchState, apply, join_keys
from .outcomes import record_outcomes
from .parsing import EventParser, Parsed
from .prescan import SCAN_ROUNDS, ScanCache, ScanMiss
from .provenance import EventBinding, EventProvenance, load_provenance
from .rejections import Rejections
from .results import BatchResult, IngestSummary, ItemResult
from .storage_form import BatchRedactor, stored_example
from .sweep import sweep_joins

__all__ = ["MAX_ATTEMPTS", "ExamplesHook", "IngestionPipeline", "Parsed", "RawEvent", "ingest_and_filter",
           "ingest_events", "run_source"]

log = logging.getLogger(__name__)

ExamplesHook = Callable[[AsyncSession, list[TrainingExample]], Awaitable[None]]


class IngestionPipeline:
    """Parses, deduplicates, joins and extracts a batch of raw events in one transaction.

    Args:
        db: The database (default: the configured one).
        settings: Join window, TTL, allow-list, size limits (default: ``get_settings()``).
    """

    def __init__(self, db: Database | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self._parser = EventParser(self.settings)
        filter_config = FilterConfig.from_settings(self.settings)
        self._scanner = ContentScanner(filter_config)
        # Producer content is stored redacted everywhere (joins, rejections, signals, PENDING rows): contract §7.4.
        self._redact = BatchRedactor(filter_config.pii_custom_names)

    def parse(self, index: int, raw: Any, provenance: EventProvenance | None = None) -> Parsed:
        """Parse one raw event; never raises (errors are returned): ``EventParser.parse``."""
        return self._parser.parse(index, raw, provenance)

    # ---- public entry point ----------------------------------------------------------------------------------

    async def ingest(
        self,
        raw_events: Sequence[Any],
        transport: str = "inprocess",
        *,
        store_examples: bool = True,
        on_examples: ExamplesHook | None = None,
        sweep: bool = True,
        binding: EventBinding | None = None,
    ) -> BatchResult:
        """Ingest one batch. Returns per-event results and counts; raises only ``L07Error`` (E7014 on storage failure).

        Args:
            raw_events: Raw events (bytes, str, dict or ``RawEvent``).
            transport: ``file``, ``redis``, ``http`` or ``inprocess`` (recorded with rejections).
            store_examples: Store the extracted examples with status PENDING in the same transaction.
            on_examples: Called with the session and the examples inside the transaction (e.g. filter and store);
                runs instead of the default storage when given.
            sweep: Also expire joins past their window / TTL (contract §1.7).
            binding: The sending credential's sources and kinds (a REST producer key); events outside it are
                rejected with E7115. Producer signatures are checked too when ``verify_event_signatures`` is on.
        """
        provenance = await load_provenance(self.db, self.settings, binding)
        with _paused_gc():
            started = time.perf_counter()
            parsed = [self.parse(i, raw, provenance) for i, raw in enumerate(raw_events)]
            cache = ScanCache(self._scanner)
            await cache.prepare(self.db, parsed, raw_events, self._redact)

            async def commit(part: list[Parsed], sweep_now: bool, produce: bool) -> BatchResult:
                return await self._commit(raw_events, part, transport, cache, sweep_now,
                                          store_examples and produce, on_examples if produce else None)

            try:
                result = await isolated(commit, parsed, sweep)
            finally:
                self._redact.forget()
            self._record_metrics(result, parsed)
            if raw_events:
                EXTRACTION_LATENCY.observe((time.perf_counter() - started) / len(raw_events))
            return result

    async def _commit(self, raw_events: Sequence[Any], parsed: list[Parsed], transport: str, cache: ScanCache,
                      sweep: bool, store_examples: bool, on_examples: ExamplesHook | None) -> BatchResult:
        """One transaction over ``parsed`` (``isolation.run_transaction``). An example whose text ``cache`` has not
        scanned rolls it back; the text is scanned with no transaction open and the batch runs again."""
        for round_ in range(SCAN_ROUNDS + 1):
            async def body(session: AsyncSession) -> BatchResult:
                result = await self._process(session, raw_events, parsed, transport, cache,
                                             scan_missing=round_ == SCAN_ROUNDS)
                if on_examples is not None:
                    await on_examples(session, result.examples)
                elif store_examples:
                    result.summary.examples_stored = await ExampleRepository(session).add_many(
                        result.examples, stored_form=self._stored_form)
                if sweep:
                    await sweep_joins(session, self.settings, self._redact, result.summary)
                result.summary.pending_join = await JoinRepository(session).count_open()
                return result

            try:
                return await run_transaction(self.db, body, passthrough=(ScanMiss,))
            except ScanMiss as miss:
                await self._scan_outside(cache, miss)
        raise AssertionError("unreachable: the last round scans in place")

    @staticmethod
    async def _scan_outside(cache: ScanCache, miss: ScanMiss) -> None:
        try:
            await cache.fill(miss.examples)
        except Exception as exc:  # noqa: BLE001 - the scan choked on what an event carries: find it, reject it
            raise EventFailure() from exc

    def _stored_form(self, example: TrainingExample) -> dict[str, Any]:
        return stored_example(self._redact, example)

    # ---- the transaction ---------------------------------------------------------------------------------------

    async def _process(self, session: AsyncSession, raw_events: Sequence[Any], parsed: list[Parsed], transport: str,
                       cache: ScanCache, *, scan_missing: bool) -> BatchResult:
        now = utcnow()
        summary = IngestSummary(events_read=len(parsed))
        items: dict[int, ItemResult] = {p.index: ItemResult("processed") for p in parsed}
        rejections = Rejections(self._redact, transport)

        # 1. dedup keys: every event with a usable envelope, valid or not (a replayed bad event is a no-op too). A key
        # held by a rejected event does not block a valid one (``ProcessedEventRepository.claim``).
        keys: list[tuple[str, str, str, str]] = []
        first_by_key: dict[tuple[str, str], int] = {}
        for p in parsed:
            if p.event is None:
                continue
            key = (p.event.source, p.event.id)
            if key in first_by_key:
                items[p.index] = ItemResult("duplicate")
                continue
            first_by_key[key] = p.index
            result = "rejected" if p.error else ("ignored" if p.kind is None else "processed")
            keys.append((key[0], key[1], p.event.type[:256], result))
        processed = ProcessedEventRepository(session)
        claimed = await processed.claim(keys)
        for key, index in first_by_key.items():
            if key not in claimed:
                items[index] = ItemResult("duplicate")

        work: list[Parsed] = []
        for p in parsed:
            if items[p.index].status == "duplicate":
                continue
            if p.error is not None:
                rejections.reject(items, p, p.error, raw_events[p.index])
            elif p.kind is None:
                items[p.index] = ItemResult("ignored")
            else:
                work.append(p)

        # 2. joins
        joins = JoinRepository(session, redact=self._redact)
        state = BatchState(now=now, rows=await joins.load(join_keys(work)))
        late_rejected: list[tuple[str, str]] = []
        for seq, p in enumerate(work):
            try:
                apply(state, p, items, seq)
            except (L07Error, ValidationError) as exc:
                err = exc if isinstance(exc, L07Error) else L07Error(
                    L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"example invalid: {exc.errors()[0]['msg']}")
                rejections.reject(items, p, err, raw_events[p.index])
                late_rejected.append((p.event.source, p.event.id))

        # 3. Contract §8 #17: the content scan, cached on each example for the filter, made before this transaction
        # opened (``prescan``); a miss rolls back here, before anything is written but the claims.
        ordered = [items[p.index] for p in parsed]
        scanned = iter(await cache.annotate([ex for item in ordered for ex in item.examples],
                                            scan_missing=scan_missing))
        for item in ordered:
            item.examples = [next(scanned) for _ in item.examples]

        await processed.mark_rejected(late_rejected)
        await joins.save(list(state.rows.values()))
        # 4. reward signals. Preference pairs and the answer text a signal pairs on are made only once the quality
        # filter ACCEPTs the example (``accepted.record_accepted``): what it filters out never reaches a model.
        signals = state.rewards()
        await RewardRepository(session, redact=self._redact).add_signals(signals)
        summary.reward_signals = len(signals)
        # Which model served each execution, joined with its score (services/ingestion/outcomes.py).
        late = set(late_rejected)
        summary.model_outcomes = await record_outcomes(
            session, [p for p in work if (p.event.source, p.event.id) not in late], now)

        # 5. rejections
        await RejectedEventRepository(session).add_many(rejections.rows)
        for item in ordered:
            if item.status == "duplicate":
                summary.duplicates += 1
            elif item.status == "ignored":
                summary.ignored += 1
            elif item.status == "rejected":
                summary.events_rejected += 1
                summary.rejected_by_code[item.code or ""] = summary.rejected_by_code.get(item.code or "", 0) + 1
            summary.examples_extracted += len(item.examples)
        return BatchResult(ordered, summary)

    # ---- window and TTL ----------------------------------------------------------------------------------------

    async def sweep(self) -> IngestSummary:
        """Apply the join window and TTL now (every ``ingest`` also does this); returns the counts it changed."""
        summary = IngestSummary()
        with _paused_gc():
            async with self.db.session() as session:
                await sweep_joins(session, self.settings, self._redact, summary)
                summary.pending_join = await JoinRepository(session).count_open()
        EVENTS_PENDING_JOIN.set(summary.pending_join)
        PENDING_JOINS.set(summary.pending_join)
        return summary

    # ---- metrics -----------------------------------------------------------------------------------------------

    @staticmethod
    def _record_metrics(result: BatchResult, parsed: list[Parsed]) -> None:
        # Counted per label set first: one ``labels().inc(n)`` per set instead of one per event.
        consumed: Counter[tuple[str, str]] = Counter()
        rejected: Counter[str | None] = Counter()
        extracted: Counter[tuple[str, str]] = Counter()
        for p, item in zip(parsed, result.items):
            consumed[(p.kind or "unknown", item.status)] += 1
            if item.status == "rejected":
                rejected[item.code] += 1
            for ex in item.examples:
                extracted[(ex.source_type.value, ex.domain)] += 1
        for (kind, status), n in consumed.items():
            EVENTS_CONSUMED.labels(event_kind=kind, result=status).inc(n)
        for code, n in rejected.items():
            EVENTS_REJECTED.labels(code=code).inc(n)
        for (source_type, domain), n in extracted.items():
            EXAMPLES_EXTRACTED.labels(source_type=source_type, domain=domain).inc(n)
        EVENTS_PENDING_JOIN.set(result.summary.pending_join)
        PENDING_JOINS.set(result.summary.pending_join)


async def ingest_events(
    raw_events: Sequence[Any],
    transport: str = "inprocess",
    *,
    db: Database | None = None,
    settings: Settings | None = None,
    on_examples: ExamplesHook | None = None,
    binding: EventBinding | None = None,
) -> BatchResult:
    """Convenience wrapper: one pipeline call (what ``LearningService.process_event`` and the HTTP endpoint use).

    Pass ``on_examples`` to filter and store the examples inside the ingestion transaction; without it they are
    stored with status PENDING. ``binding``: the sending credential's (E7115 for events outside it).
    """
    return await IngestionPipeline(db=db, settings=settings).ingest(raw_events, transport, on_examples=on_examples,
                                                                    binding=binding)


async def run_source(
    source: EventSource, pipeline: IngestionPipeline, *, on_examples: ExamplesHook | None = None
) -> IngestSummary:
    """Drive a source through the pipeline until it is exhausted; acknowledge each batch only after its commit.

    A batch whose storage fails (E7014) is not acknowledged: the source is told (``fail``) and redelivers it. No
    exception ends the loop: data never does (the pipeline rejects the event at fault), and an unforeseen failure
    is handled like a storage failure, so a consumer with a fixed name cannot crash-loop on one batch.
    """
    total = IngestSummary()
    async for batch in source.batches():
        try:
            result = await pipeline.ingest(batch.events, source.transport, on_examples=on_examples)
        except L07Error as exc:
            await batch.fail(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("E7910 ingest batch failed unexpectedly; left for redelivery")
            await batch.fail(L07Error(L07ErrorCode.UNHANDLED_EXCEPTION, f"ingest failed: {first_line(exc)}"))
            continue
        await batch.ack(result)
        total.add(result.summary)
    return total


async def ingest_and_filter(
    raw_events: Sequence[Any],
    transport: str,
    *,
    db: Database,
    settings: Settings,
    quality_filter: Any,
    binding: EventBinding | None = None,
) -> tuple[BatchResult, list[TrainingExample]]:
    """The one path from raw events to filtered examples, shared by ``LearningService.process_event(s)`` and
    ``POST /api/v1/events``.

    Examples are stored PENDING inside the ingestion transaction (so nothing is lost if filtering fails), then the
    filter records each one's decision. Returns the ingestion result and the ACCEPTed examples.
    """
    result = await ingest_events(raw_events, transport, db=db, settings=settings, binding=binding)
    examples = result.examples
    if not examples:
        return result, []
    try:
        return result, await quality_filter.filter(examples)
    except L07Error:
        raise
    except Exception:  # noqa: BLE001 - one example the filter chokes on must not fail its batch: go one by one
        log.exception("E7910 filtering %d examples failed; filtering them one at a time", len(examples))
    accepted: list[TrainingExample] = []
    for ex in examples:
        try:
            accepted += await quality_filter.filter([ex])
        except L07Error:
            raise
        except Exception:  # noqa: BLE001 - it stays stored PENDING for ``l07 examples filter --pending``
            log.exception("E7910 example %s left PENDING: filtering it failed", ex.example_id)
    return result, accepted
