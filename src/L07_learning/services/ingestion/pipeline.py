"""The one ingestion code path: raw events in, examples, joins, rewards, pairs and rejections out (contract §1).

Every transport uses ``IngestionPipeline.ingest``: the JSONL file source (``l07 ingest``), the Redis Streams consumer
(``l07 consume``), the in-process call (``LearningService.process_event`` via ``ingest_events``) and the HTTP endpoint.

One call processes one batch in one database transaction:

1. parse (no I/O): envelope (structured, binary, L01), type, source allow-list, ``data`` fields. A failure becomes a
   rejection with its E70xx code; it never stops the batch.
2. claim the ``(source, id)`` keys in ``l07_processed_events`` with ``INSERT ... ON CONFLICT DO NOTHING``: keys that
   were already there (earlier run, other consumer, same batch) are duplicates and do nothing.
3. join traces, planning records and scores through ``l07_pending_joins`` (locked rows on PostgreSQL), build the
   examples of every completed join, reward signals (§5.5) and preference pairs.
4. store rejections, joins, signals, pairs and (unless the caller takes them over) the examples, then commit.

Only after the commit do callers acknowledge their transport (XACK) and do metrics move, so a crash at any point
either loses nothing (redelivery) or repeats nothing (claimed keys). A unique-key race between two consumers rolls the
transaction back and the batch is retried; the second attempt sees the winner's rows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from ...events.cloudevent import PLAN, RESPONSE, SCORE, TRACE, CloudEvent, RawEvent, check_source, raw_text, read_event
from ...events.sources import EventSource
from ...models._base import utcnow
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.reward_signal import PreferencePair, RewardSignal
from ...models.training_example import ExampleSource, TrainingExample, normalise_text
from ...observability.metrics import (
    ERRORS,
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
from ...store.repositories.joins import PLAN_PREFIX, JoinRepository, JoinRow, window_cutoff
from ...store.repositories.rewards import RewardRepository
from ..filtering import ContentScanner, FilterConfig
from ..filtering.gc_pause import paused_gc as _paused_gc
from ..filtering.scan import mask_secrets_deep
from . import examples as build
from .records import check_storable, may_hold_unstorable, parse_plan, parse_response, parse_score, parse_trace
from .results import BatchResult, IngestSummary, ItemResult
from .rewards import MIN_PAIR_MARGIN, compute_rewards, pair_from_correction

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 6
_PARSERS = {SCORE: parse_score, PLAN: parse_plan, RESPONSE: parse_response}

ExamplesHook = Callable[[AsyncSession, list[TrainingExample]], Awaitable[None]]


@dataclass
class _Parsed:
    index: int
    event: CloudEvent | None
    kind: str | None
    record: dict[str, Any] | None
    error: L07Error | None


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("deadlock", "could not serialize", "database is locked", "serializ"))


class IngestionPipeline:
    """Parses, deduplicates, joins and extracts a batch of raw events in one transaction.

    Args:
        db: The database (default: the configured one).
        settings: Join window, TTL, allow-list, size limits (default: ``get_settings()``).
    """

    def __init__(self, db: Database | None = None, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self._allow_list = tuple(self.settings.source_allow_list)
        self._scanner = ContentScanner(FilterConfig.from_settings(self.settings))

    # ---- parse (pure) ----------------------------------------------------------------------------------------

    def parse(self, index: int, raw: Any) -> _Parsed:
        """Parse one raw event; never raises (errors are returned)."""
        body, headers = (raw.body, raw.headers) if isinstance(raw, RawEvent) else (raw, None)
        event: CloudEvent | None = None
        try:
            event, plain = read_event(body, headers=headers, max_bytes=self.settings.max_event_bytes)
            # Checked after parsing so that a refused source still has its (source, id) claimed: a replay is a no-op.
            check_source(event.source, self._allow_list)
            kind = event.kind
            if kind is None:
                return _Parsed(index, event, None, None, None)
            record = parse_trace(event, self.settings.max_trace_steps) if kind == TRACE else _PARSERS[kind](event)
            if not plain or may_hold_unstorable(body):
                check_storable(record)
            return _Parsed(index, event, kind, record, None)
        except L07Error as exc:
            return _Parsed(index, event, event.kind if event else None, None, exc)
        except (RecursionError, ValueError, TypeError) as exc:
            # Pathological inputs (deep nesting, odd keys) are malformed events, never crashes of the batch.
            err = L07Error(L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR, f"unparseable event: {exc.__class__.__name__}")
            return _Parsed(index, event, None, None, err)

    # ---- public entry point ----------------------------------------------------------------------------------

    async def ingest(
        self,
        raw_events: Sequence[Any],
        transport: str = "inprocess",
        *,
        store_examples: bool = True,
        on_examples: ExamplesHook | None = None,
        sweep: bool = True,
    ) -> BatchResult:
        """Ingest one batch. Returns per-event results and counts; raises only ``L07Error`` (E7014 on storage failure).

        Args:
            raw_events: Raw events (bytes, str, dict or ``RawEvent``).
            transport: ``file``, ``redis``, ``http`` or ``inprocess`` (recorded with rejections).
            store_examples: Store the extracted examples with status PENDING in the same transaction.
            on_examples: Called with the session and the examples inside the transaction (e.g. filter and store);
                runs instead of the default storage when given.
            sweep: Also expire joins past their window / TTL (contract §1.7).
        """
        with _paused_gc():
            return await self._ingest(raw_events, transport, store_examples, on_examples, sweep)

    async def _ingest(self, raw_events: Sequence[Any], transport: str, store_examples: bool,
                      on_examples: ExamplesHook | None, sweep: bool) -> BatchResult:
        started = time.perf_counter()
        parsed = [self.parse(i, raw) for i, raw in enumerate(raw_events)]
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self.db.session() as session:
                    result = await self._process(session, raw_events, parsed, transport)
                    examples = result.examples
                    if on_examples is not None:
                        await on_examples(session, examples)
                    elif store_examples:
                        result.summary.examples_stored = await ExampleRepository(session).add_many(
                            examples, stored_form=self._stored_form)
                    if sweep:
                        await self._sweep(session, result.summary)
                    result.summary.pending_join = await JoinRepository(session).count_open()
                break
            except (IntegrityError, OperationalError, DBAPIError) as exc:
                if attempt < MAX_ATTEMPTS and _retryable(exc):
                    log.info("ingest batch conflicted with a concurrent writer, retrying (attempt %d)", attempt)
                    await asyncio.sleep(0.02 * attempt)
                    continue
                raise L07Error(L07ErrorCode.STORAGE_WRITE_FAILURE, f"storing the batch failed: {exc.__class__.__name__}: "
                               f"{str(exc).splitlines()[0]}") from exc
            except SQLAlchemyError as exc:
                raise L07Error(L07ErrorCode.STORAGE_WRITE_FAILURE, f"storing the batch failed: {exc}") from exc
        self._record_metrics(result, parsed)
        if raw_events:
            EXTRACTION_LATENCY.observe((time.perf_counter() - started) / len(raw_events))
        return result

    def _stored_form(self, example: TrainingExample) -> dict[str, Any]:
        """The PENDING row's JSON with every string's secrets masked (tool parameters and metadata included), so the
        example row never holds one in clear, should filtering fail or come later. The in-memory example keeps its
        text for the filter to decide on; a row filtered again later is quarantined by its masks. The scan cache
        stays out of the row: it vouches for the clear text only."""
        data = example.model_dump(mode="json")
        data["metadata"] = {k: v for k, v in data["metadata"].items() if k != "scan"}
        return mask_secrets_deep(data, self._scanner.secrets)

    # ---- the transaction ---------------------------------------------------------------------------------------

    async def _process(
        self, session: AsyncSession, raw_events: Sequence[Any], parsed: list[_Parsed], transport: str
    ) -> BatchResult:
        now = utcnow()
        summary = IngestSummary(events_read=len(parsed))
        items: list[ItemResult] = [ItemResult("processed") for _ in parsed]
        rejections: list[dict[str, Any]] = []

        # 1. dedup keys: every event with a usable envelope, valid or not (a replayed bad event is a no-op too).
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
        claimed = await ProcessedEventRepository(session).claim(keys)
        for key, index in first_by_key.items():
            if key not in claimed:
                items[index] = ItemResult("duplicate")

        work: list[_Parsed] = []
        for p in parsed:
            if items[p.index].status == "duplicate":
                continue
            if p.error is not None:
                self._reject(items, rejections, p, p.error, raw_events[p.index], transport)
            elif p.kind is None:
                items[p.index] = ItemResult("ignored")
            else:
                work.append(p)

        # 2. joins
        join_keys: list[str] = []
        for p in work:
            ex_id = p.record.get("execution_id")
            if ex_id:
                join_keys += [ex_id, PLAN_PREFIX + ex_id]
        joins = JoinRepository(session)
        rows = await joins.load(join_keys)
        state = _BatchState(now=now, rows=rows)
        for seq, p in enumerate(work):
            try:
                self._apply(state, p, items, seq)
            except (L07Error, ValidationError) as exc:
                err = exc if isinstance(exc, L07Error) else L07Error(
                    L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, f"example invalid: {exc.errors()[0]['msg']}")
                self._reject(items, rejections, p, err, raw_events[p.index], transport)
        await joins.save(list(state.rows.values()))

        # 3. rewards and preference pairs
        rewards = RewardRepository(session)
        signals, pairs = await self._rewards_and_pairs(rewards, state)
        await rewards.add_signals(signals)
        summary.reward_signals = len(signals)
        summary.preference_pairs = await rewards.add_pairs(pairs)

        # 4. rejections
        await RejectedEventRepository(session).add_many(rejections)
        for item in items:
            if item.status == "duplicate":
                summary.duplicates += 1
            elif item.status == "ignored":
                summary.ignored += 1
            elif item.status == "rejected":
                summary.events_rejected += 1
                summary.rejected_by_code[item.code or ""] = summary.rejected_by_code.get(item.code or "", 0) + 1
            summary.examples_extracted += len(item.examples)
        # 5. Contract §8 #17: the content scan runs here, once per batch; the filter reuses it from metadata["scan"].
        scanned = iter(self._scanner.annotate_many([ex for item in items for ex in item.examples]))
        for item in items:
            item.examples = [next(scanned) for _ in item.examples]
        return BatchResult(items, summary)

    def _reject(self, items: list[ItemResult], rejections: list[dict[str, Any]], p: _Parsed, err: L07Error,
                raw: Any, transport: str) -> None:
        items[p.index] = ItemResult("rejected", code=err.code.value, reason=err.message)
        body = raw.body if isinstance(raw, RawEvent) else raw
        text = raw_text(body).replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")
        ev = p.event
        rejections.append({
            "event_id": ev.id[:512] if ev else None,
            "source": ev.source[:512] if ev else None,
            "event_type": ev.type[:256] if ev else None,
            "code": err.code.value,
            "reason": err.message.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")[:4000],
            "transport": transport,
            "raw_payload": text,
        })
        log.warning("event rejected %s: %s", err.code.value, err.message,
                    extra={"event_id": ev.id if ev else None, "transport": transport})

    # ---- joining -----------------------------------------------------------------------------------------------

    def _apply(self, st: "_BatchState", p: _Parsed, items: list[ItemResult], seq: int) -> None:
        rec = dict(p.record)
        rec["_event_id"] = p.event.id
        rec["_seq"] = seq
        item = items[p.index]
        if p.kind == TRACE:
            row = st.row(rec["execution_id"])
            if row.trace is not None:
                # A second trace event (new id) for an execution already traced: nothing new to learn.
                items[p.index] = ItemResult("duplicate")
                return
            row.trace, row.trace_at, row.dirty = rec, st.now, True
            if row.scores:
                item.examples += self._complete_trace(st, row)
            else:
                item.status = "pending"
        elif p.kind == SCORE:
            ex_id = rec["execution_id"]
            row = st.row(ex_id)
            row.scores.append(rec)
            row.score_at, row.dirty = st.now, True
            if row.trace is not None and row.status == "expired":
                # Past the late-join TTL the trace no longer takes scores: the score is kept as an unprocessed signal.
                task_type = row.trace.get("task_type") or rec.get("task_type") or "general"
                st.signals.append((build.reward_signal(rec, row.trace["outcome"], task_type, processed=False), None))
            elif row.trace is not None and row.status == "joined":
                item.examples += self._late_score(st, row, rec)
            elif row.trace is not None:
                item.examples += self._complete_trace(st, row)
            else:
                item.status = "pending"
            plan_row = st.rows.get(PLAN_PREFIX + ex_id)
            if plan_row is not None and plan_row.trace is not None and plan_row.status != "joined":
                item.examples += self._complete_plan(st, plan_row, row.scores)
        elif p.kind == PLAN:
            if not (rec.get("execution_id") and rec.get("goal") and rec.get("plan_steps")):
                return  # stored as processed; only goal + steps + execution_id make an SFT example (§1.4)
            plan_row = st.row(PLAN_PREFIX + rec["execution_id"])
            if plan_row.trace is not None:
                items[p.index] = ItemResult("duplicate")
                return
            plan_row.trace, plan_row.trace_at, plan_row.dirty = rec, st.now, True
            scores = st.rows.get(rec["execution_id"])
            if scores is not None and scores.scores:
                item.examples += self._complete_plan(st, plan_row, scores.scores)
            else:
                item.status = "pending"
        # RESPONSE events feed cost/latency statistics only (§1.5): recorded as processed.
        if item.examples:
            item.status = "extracted"

    def _complete_trace(self, st: "_BatchState", row: JoinRow) -> list[TrainingExample]:
        trace = row.trace
        score, conflict = build.pick_score(row.scores)
        event_ids = [trace["_event_id"]] + [s["_event_id"] for s in row.scores]
        ex = build.trace_example(_public(trace), score, event_ids, score_conflict=conflict)
        row.status, row.dirty = "joined", True
        out = [ex]
        st.scored(ex, score, trace["outcome"])
        if score["evaluation_method"] == "human_review" and score.get("reference_output"):
            out.append(self._feedback(st, trace, score, ex, event_ids))
        return out

    def _late_score(self, st: "_BatchState", row: JoinRow, score: dict[str, Any]) -> list[TrainingExample]:
        """A score for an execution already joined: a reward signal, and a correction when a reviewer gave one."""
        trace = row.trace
        task_type = trace.get("task_type") or score.get("task_type") or "general"
        st.signals.append((build.reward_signal(score, trace["outcome"], task_type, processed=True), None))
        if score["evaluation_method"] == "human_review" and score.get("reference_output"):
            original = build.trace_example(_public(trace), score, [trace["_event_id"], score["_event_id"]])
            return [self._feedback(st, trace, score, original, [trace["_event_id"], score["_event_id"]])]
        return []

    def _feedback(self, st: "_BatchState", trace: dict[str, Any], score: dict[str, Any], original: TrainingExample,
                  event_ids: list[str]) -> TrainingExample:
        """QUALITY_FEEDBACK example (contract §1.10): the reviewer's reference answer is the output.

        Its quality is 100: the answer was written by the human reviewer, it is not an estimate of the agent's work
        (the reviewer's own score rates the original answer and stays on that example).
        """
        ref = score["reference_output"]
        fb = build.trace_example(_public(trace), {**score, "quality_score": 100.0}, event_ids,
                                 source_type=ExampleSource.QUALITY_FEEDBACK, output_text=ref)
        try:
            st.pairs.append(pair_from_correction(original, ref, corrected_score=100.0))
        except L07Error:
            pass  # the reference equals the original answer: nothing to prefer
        return fb

    def _complete_plan(self, st: "_BatchState", plan_row: JoinRow, scores: list[dict[str, Any]]) -> list[TrainingExample]:
        score, _ = build.pick_score(scores)
        plan = plan_row.trace
        ex = build.plan_example(_public(plan), score, [plan["_event_id"]] + [s["_event_id"] for s in scores])
        plan_row.status, plan_row.dirty = "joined", True
        return [ex]

    async def _rewards_and_pairs(
        self, repo: RewardRepository, st: "_BatchState"
    ) -> tuple[list[tuple[RewardSignal, dict[str, Any] | None]], list[PreferencePair]]:
        raw_signals = [s for s, _ in st.signals]
        answers = [a for _, a in st.signals]
        batch = compute_rewards(raw_signals) if raw_signals else None
        kept_ids = {s.signal_id: s for s in batch.rewards} if batch else {}
        signals = [(kept_ids[s.signal_id], a) for s, a in zip(raw_signals, answers) if s.signal_id in kept_ids]
        pairs = list(st.pairs)
        # Two scored executions of the same task (§5.5): each new answer is paired with the most recent earlier
        # answer to the same normalised prompt (stored, or earlier in this batch) that differs by >= 10 points.
        # One partner per answer keeps hot prompts linear instead of quadratic.
        hashes = [a["prompt_hash"] for a in st.new_answer_keys]
        recent = await repo.answers_by_prompt(hashes) if hashes else {}
        for h, ex in zip(hashes, st.new_answers):
            earlier = recent.setdefault(h, [])
            new_out = normalise_text(ex.output_text)
            for other in earlier:
                margin = abs(ex.quality_score - other["quality_score"])
                if margin >= MIN_PAIR_MARGIN and normalise_text(other["output_text"]) != new_out:
                    pairs.append(_pair(ex, other, margin))
                    break
            earlier.insert(0, {"example_id": ex.example_id, "output_text": ex.output_text,
                               "quality_score": ex.quality_score, "prompt": ex.input_text})
            del earlier[5:]
        return signals, pairs

    # ---- window and TTL ----------------------------------------------------------------------------------------

    async def sweep(self) -> IngestSummary:
        """Apply the join window and TTL now (every ``ingest`` also does this); returns the counts it changed."""
        summary = IngestSummary()
        with _paused_gc():
            async with self.db.session() as session:
                await self._sweep(session, summary)
                summary.pending_join = await JoinRepository(session).count_open()
        EVENTS_PENDING_JOIN.set(summary.pending_join)
        PENDING_JOINS.set(summary.pending_join)
        return summary

    async def _sweep(self, session: AsyncSession, summary: IngestSummary) -> None:
        """Apply the join window and the late-join TTL (contract §1.7 rule 2)."""
        now = utcnow()
        joins = JoinRepository(session)
        window = window_cutoff(now, self.settings.join_window_s)
        ttl = window_cutoff(now, self.settings.late_join_ttl_s)
        to_pending, to_orphan, orphan_signals = [], [], []
        for row in await joins.due("waiting", window):
            if row.trace is not None:
                to_pending.append(row.key)
            elif row.scores:
                to_orphan.append(row.key)
                score, _ = build.pick_score(row.scores)
                orphan_signals.append(build.reward_signal(score, None, score.get("task_type") or "general", False))
        expired = [r.key for r in await joins.due("pending_evaluation", ttl)]
        await joins.set_status(to_pending, "pending_evaluation")
        await joins.set_status(to_orphan, "orphan_score")
        await joins.set_status(expired, "expired")
        if orphan_signals:
            batch = compute_rewards(orphan_signals)
            await RewardRepository(session).add_signals([(s, None) for s in batch.rewards])
        if to_pending:
            ERRORS.labels(error_code=L07ErrorCode.QUALITY_SCORE_NOT_FOUND.value, error_type="data").inc(len(to_pending))
            log.warning("E7011 %d traces without a score after %.0f s: pending_evaluation", len(to_pending),
                        self.settings.join_window_s)
        summary.expired_joins += len(expired)
        summary.orphan_scores += len(to_orphan)

    # ---- metrics -----------------------------------------------------------------------------------------------

    def _record_metrics(self, result: BatchResult, parsed: list[_Parsed]) -> None:
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


def _pair(ex: TrainingExample, other: dict[str, Any], margin: float) -> PreferencePair:
    new = {"example_id": ex.example_id, "output_text": ex.output_text, "quality_score": ex.quality_score}
    chosen, rejected = (new, other) if ex.quality_score > other["quality_score"] else (other, new)
    return PreferencePair(
        pair_id=build.example_id_for(ExampleSource.EXECUTION_TRACE, f"pair:{chosen['example_id']}:{rejected['example_id']}"),
        prompt=ex.input_text, chosen=chosen["output_text"], rejected=rejected["output_text"],
        chosen_example_id=chosen["example_id"], rejected_example_id=rejected["example_id"], margin=margin,
        task_type=ex.task_type, source="extractor",
    )


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the pipeline's bookkeeping keys (so hashes depend on content only)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


@dataclass
class _BatchState:
    now: datetime
    rows: dict[str, JoinRow]
    signals: list[tuple[RewardSignal, dict[str, Any] | None]] = field(default_factory=list)
    pairs: list[PreferencePair] = field(default_factory=list)
    new_answers: list[TrainingExample] = field(default_factory=list)
    new_answer_keys: list[dict[str, Any]] = field(default_factory=list)

    def row(self, key: str) -> JoinRow:
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = JoinRow(key=key, first_seen_at=self.now, dirty=True)
        return row

    def scored(self, ex: TrainingExample, score: dict[str, Any], outcome: str) -> None:
        answer = {"prompt_hash": build.prompt_hash(ex.input_text), "prompt": ex.input_text,
                  "example_id": ex.example_id, "output_text": ex.output_text}
        self.signals.append((build.reward_signal(score, outcome, ex.task_type, processed=True), answer))
        self.new_answers.append(ex)
        self.new_answer_keys.append(answer)


async def ingest_events(
    raw_events: Sequence[Any],
    transport: str = "inprocess",
    *,
    db: Database | None = None,
    settings: Settings | None = None,
    on_examples: ExamplesHook | None = None,
) -> BatchResult:
    """Convenience wrapper: one pipeline call (what ``LearningService.process_event`` and the HTTP endpoint use).

    Pass ``on_examples`` to filter and store the examples inside the ingestion transaction; without it they are
    stored with status PENDING.
    """
    return await IngestionPipeline(db=db, settings=settings).ingest(raw_events, transport, on_examples=on_examples)


async def run_source(
    source: EventSource, pipeline: IngestionPipeline, *, on_examples: ExamplesHook | None = None
) -> IngestSummary:
    """Drive a source through the pipeline until it is exhausted; acknowledge each batch only after its commit.

    A batch whose storage fails (E7014) is not acknowledged: the source is told (``fail``) and redelivers it.
    """
    total = IngestSummary()
    async for batch in source.batches():
        try:
            result = await pipeline.ingest(batch.events, source.transport, on_examples=on_examples)
        except L07Error as exc:
            await batch.fail(exc)
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
) -> tuple[BatchResult, list[TrainingExample]]:
    """The one path from raw events to filtered examples, shared by ``LearningService.process_event(s)`` and
    ``POST /api/v1/events``.

    Examples are stored PENDING inside the ingestion transaction (so nothing is lost if filtering fails), then the
    filter records each one's decision. Returns the ingestion result and the ACCEPTed examples.
    """
    result = await ingest_events(raw_events, transport, db=db, settings=settings)
    examples = result.examples
    accepted = await quality_filter.filter(examples) if examples else []
    return result, accepted
