"""``ExampleQualityFilter``: the contract's filter rules (§5.2) and composite score (§5.1).

Rules run in the contract's order and the first failing rule decides. No rule raises for one bad record: every
example gets a decision with a reason and a code, every decision is counted in ``l07_examples_filtered_total``, and
every non-accept decision is stored (``l07 examples rejected``). Secrets are masked before anything is stored.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError

from ..models._base import new_id
from ..models.error_codes import L07Error, L07ErrorCode
from ..models.training_example import ExampleStatus, TrainingExample, normalise_text
from ..observability.metrics import DATA_POISONING_DETECTED, ERRORS, EXAMPLES_FILTERED
from ..settings import Settings, get_settings
from ..store.db import Database
from .filtering.config import FilterConfig
from .filtering.dedup import NearDuplicateIndex
from .filtering.minhash import decode_many, shingles, signatures
from .filtering.findings import Finding, replace_spans
from .filtering.outliers import agent_quality_outliers, isolation_outliers
from .filtering.pii import Placeholders
from .filtering.poisoning import rare_token_cooccurrence
from .filtering.gc_pause import paused_gc as _paused_gc
from .filtering.scan import ContentScanner, ScanReport, hash_normalised, mask_secrets_deep, output_hash
from .filtering.secret_scan import masked_form

log = logging.getLogger(__name__)

POOL_STATUSES = (ExampleStatus.ACCEPTED.value, ExampleStatus.REVIEW.value)


class Decision(str, Enum):
    """Filter outcome of one example."""

    ACCEPT = "ACCEPT"
    REVIEW = "REVIEW"
    REJECT = "REJECT"
    QUARANTINE = "QUARANTINE"

    @property
    def status(self) -> ExampleStatus:
        return _STATUS[self]


_STATUS = {Decision.ACCEPT: ExampleStatus.ACCEPTED, Decision.REVIEW: ExampleStatus.REVIEW,
           Decision.REJECT: ExampleStatus.REJECTED, Decision.QUARANTINE: ExampleStatus.QUARANTINED}


@dataclass(slots=True)
class FilterDecision:
    """The decision on one input example.

    Attributes:
        index: Position in the input batch.
        example_id: The example's id (``None`` when the input could not be read as an example).
        decision: ACCEPT, REVIEW, REJECT or QUARANTINE.
        reason: Short reason (``accepted``, ``incomplete``, ``secret``, ``pii``, ``duplicate``, ``low_quality``...).
        code: The contract's error code for the reason, when it has one.
        rule: The detector or sub-rule that decided (``secret:aws_access_key_id``, ``near_duplicate``...).
        detail: Human-readable detail (never a secret value).
        composite: Composite score (§5.1) when computed.
        example: The example as stored: redacted PII, masked secrets, new status.
    """

    index: int
    example_id: str | None
    decision: Decision
    reason: str
    code: str | None = None
    rule: str | None = None
    detail: str = ""
    composite: float | None = None
    example: TrainingExample | None = None
    domain: str = "general"
    raw: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "example_id": self.example_id, "decision": self.decision.value, "reason": self.reason,
            "code": self.code, "rule": self.rule, "detail": self.detail, "composite": self.composite,
        }


@dataclass
class FilterReport:
    """Per-example decisions of one ``filter_detailed`` call, in input order."""

    decisions: list[FilterDecision]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def accepted(self) -> list[TrainingExample]:
        return [d.example for d in self.decisions if d.decision is Decision.ACCEPT and d.example is not None]

    def counts(self) -> dict[str, int]:
        """Number of decisions per ``DECISION/reason``."""
        return dict(Counter(f"{d.decision.value}/{d.reason}" for d in self.decisions))


@dataclass(slots=True)
class _Item:
    """Working state of one example while the rules run."""

    index: int
    example: TrainingExample
    content_hash: str = ""
    output_key: str = ""
    scan: ScanReport | None = None
    signature: str | None = None  # from a trusted extraction-time cache; None: compute it from the text
    sig: int = -1  # row of the batch's signature matrix once the near-duplicate check has it
    decision: FilterDecision | None = None
    composite: float | None = None
    updates: dict[str, Any] = field(default_factory=dict)
    norm: tuple[str, str] | None = None

    def texts(self) -> tuple[str, str]:
        """Input and output as they will be stored (after masking and redaction)."""
        return (self.updates.get("input_text", self.example.input_text),
                self.updates.get("output_text", self.example.output_text))

    def normalised(self) -> tuple[str, str]:
        if self.norm is None:
            inp, out = self.texts()
            self.norm = (normalise_text(inp), normalise_text(out))
        return self.norm

    def rekey(self) -> None:
        """Content hash and output key from the (current) text."""
        inp, out = self.normalised()
        self.content_hash = hash_normalised(inp, out)
        self.output_key = output_hash(out)



def _copy_with(ex: TrainingExample, updates: dict[str, Any]) -> TrainingExample:
    """``ex.model_copy(update=updates)`` (a shallow copy, values unvalidated) without pydantic's generic copy path,
    which costs about twice as much and runs once per example."""
    new = TrainingExample.__new__(TrainingExample)
    fields = ex.__dict__.copy()
    fields.update(updates)
    object.__setattr__(new, "__dict__", fields)
    object.__setattr__(new, "__pydantic_fields_set__", ex.__pydantic_fields_set__ | updates.keys())
    object.__setattr__(new, "__pydantic_extra__", None)
    object.__setattr__(new, "__pydantic_private__", None)
    return new


def difficulty_of(steps: int, unique_tools: int, quality: float) -> float:
    """Contract §5.3: ``0.3 min(steps/10,1) + 0.3 min(tools/5,1) + 0.4 (1 - q/100)``."""
    return 0.3 * min(steps / 10, 1) + 0.3 * min(unique_tools / 5, 1) + 0.4 * (1 - quality / 100)


def composite_score(quality: float, confidence: float | None, diversity: float, difficulty: float, steps: int) -> float:
    """Contract §5.1 composite on 0-100 (a missing confidence counts as 0)."""
    informativeness = 0.5 * difficulty + 0.5 * min(steps / 5, 1)
    value = 100 * (0.6 * quality / 100 + 0.2 * (confidence or 0.0) + 0.1 * diversity + 0.1 * informativeness)
    return max(0.0, min(100.0, value))


class ExampleQualityFilter:
    """Decides which examples may enter datasets (contract §5.2) and persists every decision.

    Args:
        db: Database for persisting decisions and reading the stored pool; without one the filter runs in memory
            (dedup and diversity against what this instance has seen) and persists nothing.
        settings: Settings (default ``get_settings()``).
        config: Filter configuration (default: from settings).
    """

    def __init__(self, db: Database | None = None, settings: Settings | None = None, config: FilterConfig | None = None) -> None:
        self.db = db
        self.settings = settings or get_settings()
        self.config = config or FilterConfig.from_settings(self.settings)
        self.scanner = ContentScanner(self.config)
        self._index = NearDuplicateIndex(
            self.config.near_duplicate_jaccard, self.config.num_perm, self.config.num_bands, self.config.minhash_seed,
            self.config.shingle_size,
        )
        self._pool_task: Counter[str] = Counter()
        self._pool_domain: Counter[str] = Counter()
        self._pool_size = 0
        self._pool_members: dict[str, tuple[str, str]] = {}
        self._pool_known: set[str] = set()
        # In-memory mode only: what this instance has seen (the database answers these when there is one).
        self._seen_hashes: dict[str, str] = {}
        self._seen_exec: dict[tuple[str, str], str] = {}

    # --- public API ------------------------------------------------------------------------------------------

    async def filter(self, examples: list[TrainingExample | dict[str, Any]]) -> list[TrainingExample]:
        """The ACCEPT examples, in input order, as stored (status ACCEPTED, PII redacted).

        REVIEW, REJECT and QUARANTINE examples are persisted with their reason (when a database is configured) and
        counted in ``l07_examples_filtered_total``.
        """
        return (await self.filter_detailed(examples)).accepted

    async def score_example(self, example: TrainingExample) -> float:
        """Composite score 0-100 (§5.1) against the accepted pool; no side effects."""
        await self._refresh_pool()
        return composite_score(
            example.quality_score, example.confidence, self._diversity(example),
            difficulty_of(example.execution_length, example.tool_count, example.quality_score), example.execution_length,
        )

    async def filter_detailed(self, examples: list[TrainingExample | dict[str, Any]]) -> FilterReport:
        """Run every rule and return one decision per input example, in input order."""
        # A batch allocates several objects per example that all live until it ends: the cyclic collector would
        # walk them (and the whole pool) again and again for nothing, as in ingestion.
        with _paused_gc():
            return await self._filter_detailed(examples)

    async def _filter_detailed(self, examples: list[TrainingExample | dict[str, Any]]) -> FilterReport:
        started = time.perf_counter()
        await self._refresh_pool()
        items, decisions = self._complete(examples)
        self._scan(items)
        sigs = await self._dedup(items)
        self._gate(items)
        self._outliers(items, len(examples))
        alerts = self._batch_rules(items)
        for item in items:
            decisions[item.index] = self._finish(item)
        report = FilterReport(decisions=[d for d in decisions if d is not None], alerts=alerts)
        if self.db is not None:
            try:
                await self._persist(report)
            except SQLAlchemyError as exc:
                # Nothing of the batch is stored (one transaction); a retry re-decides it, and an example another
                # worker stored meanwhile then shows up as a duplicate.
                raise L07Error(L07ErrorCode.STORAGE_WRITE_FAILURE,
                               f"storing {len(report.decisions)} filter decisions failed: {exc.__class__.__name__}",
                               examples=len(report.decisions)) from exc
        self._remember(items, report, sigs)
        self._count(report)
        report.duration_s = time.perf_counter() - started
        return report

    # --- rule 1: completeness ----------------------------------------------------------------------------------

    def _complete(self, examples: list[TrainingExample | dict[str, Any]]) -> tuple[list[_Item], list[FilterDecision | None]]:
        decisions: list[FilterDecision | None] = [None] * len(examples)
        items: list[_Item] = []
        for i, raw in enumerate(examples):
            problem = ""
            example: TrainingExample | None = None
            try:
                example = raw if isinstance(raw, TrainingExample) else TrainingExample.model_validate(raw)
            except ValidationError as exc:
                problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            except (TypeError, ValueError) as exc:
                problem = f"not an example: {exc}"
            if example is not None:
                problem = self._missing(example)
            if problem:
                eid = example.example_id if example else (raw.get("example_id") if isinstance(raw, dict) else None)
                decisions[i] = FilterDecision(
                    i, eid, Decision.REJECT, "incomplete", L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH.value,
                    "completeness", problem, example=example,
                    domain=example.domain if example else "general", raw=None if example else raw,
                )
                continue
            items.append(_Item(i, example))  # type: ignore[arg-type]
        return items, decisions

    @staticmethod
    def _missing(ex: TrainingExample) -> str:
        problems = []
        if not ex.input_text.strip():
            problems.append("input_text is blank")
        if not ex.output_text.strip():
            problems.append("output_text is blank")
        if not (ex.metadata.get("agent_id") or ex.agent_id):
            problems.append("metadata.agent_id missing")
        if not (ex.metadata.get("task_type") or ex.task_type):
            problems.append("metadata.task_type missing")
        if not (math.isfinite(ex.quality_score) and 0 <= ex.quality_score <= 100):
            problems.append("quality_score outside 0-100")
        if ex.confidence is not None and not (math.isfinite(ex.confidence) and 0 <= ex.confidence <= 1):
            problems.append("confidence outside 0-1")
        return "; ".join(problems)

    # --- rules 2 and 3: content scan, batch trigger check, PII ------------------------------------------------

    def _scan(self, items: list[_Item]) -> None:
        for item in items:
            cached = self.scanner.cached(item.example)
            if cached is not None:
                # Scanned at extraction (contract §8 #17): the text is not read again here.
                item.scan, item.content_hash, item.output_key = cached.report, cached.content_hash, cached.output_hash
                item.signature = cached.signature
            else:
                item.scan = self.scanner.scan(item.example)
                item.rekey()
            if item.scan:
                self._rewrite(item)
        triggers = self._trigger_check(items)
        for pos, item in enumerate(items):
            scan = item.scan
            assert scan is not None
            if scan.secrets:
                kinds = sorted({f.kind for f in scan.secrets})
                digests = sorted({f"{f.kind}:sha256:{f.digest}" for f in scan.secrets})
                self._decide(item, Decision.QUARANTINE, "secret", L07ErrorCode.SECRET_DETECTED_IN_TRAINING_DATA.value,
                             f"secret:{kinds[0]}", f"{len(scan.secrets)} secret(s) masked: {', '.join(digests)}")
                continue
            if scan.poisoning:
                first = scan.poisoning[0]
                fields = sorted({f.field for f in scan.poisoning if f.kind == first.kind})
                self._decide(item, Decision.QUARANTINE, first.reason, first.code, f"poisoning:{first.kind}",
                             f"{first.kind} in {', '.join(fields)}")
                continue
            if pos in triggers:
                self._decide(item, Decision.QUARANTINE, "trigger_cooccurrence", L07ErrorCode.BACKDOOR_PATTERN_DETECTED.value,
                             "poisoning:rare_token_cooccurrence",
                             f"rare input token {triggers[pos]!r} co-occurs with one output across the batch")
                continue
            if scan.pii:
                self._pii(item, scan.pii)

    def _trigger_check(self, items: list[_Item]) -> dict[int, str]:
        cfg = self.config
        # Count distinct (input, output) pairs: the same task replayed many times is repetition (the dedup rule's
        # business), not a trigger. A planted backdoor pairs *different* inputs carrying the token with one output.
        first_of: dict[str, int] = {}
        members: dict[int, list[int]] = defaultdict(list)
        for pos, item in enumerate(items):
            rep = first_of.setdefault(item.content_hash, pos)
            members[rep].append(pos)
        reps = list(members)
        outputs = Counter(items[r].output_key for r in reps)
        if len(reps) < cfg.trigger_min_support or outputs.most_common(1)[0][1] < cfg.trigger_min_support:
            return {}  # no output repeats often enough to be a planted target: skip reading the inputs
        flagged = rare_token_cooccurrence(
            lambda i: normalise_text(items[reps[i]].texts()[0]).split(), [items[r].output_key for r in reps],
            cfg.trigger_min_support, cfg.trigger_max_doc_share, cfg.trigger_output_share,
        )
        return {pos: token for idx, token in flagged.items() for pos in members[reps[idx]]}

    def _pii(self, item: _Item, hits: list[Finding]) -> None:
        # A hit is one distinct PII value: the same address quoted in input and output is one person's data.
        distinct = {(f.kind, getattr(item.example, f.field)[f.start:f.end].strip().lower()) for f in hits}
        kinds = Counter(kind for kind, _ in distinct)
        summary = ", ".join(f"{k}={n}" for k, n in sorted(kinds.items()))
        code = L07ErrorCode.PII_DETECTED_IN_TRAINING_DATA.value
        if len(distinct) > self.config.pii_max_hits:
            self._decide(item, Decision.QUARANTINE, "pii", code, "pii:too_many_hits",
                         f"{len(distinct)} PII values > {self.config.pii_max_hits} ({summary})")
            return
        if self.config.pii_action == "drop":
            self._decide(item, Decision.REJECT, "pii", code, "pii:drop", f"PII dropped by configuration ({summary})")
            return
        item.updates.setdefault("metadata", dict(item.example.metadata))["pii_redacted"] = True
        item.updates["metadata"]["pii_kinds"] = sorted(kinds)

    def _rewrite(self, item: _Item) -> None:
        """Mask secrets and redact PII in every scanned field (stored forms never hold either), then re-key."""
        scan = item.scan
        assert scan is not None
        ex = item.example
        if scan.secrets or scan.pii:
            placeholders = Placeholders()
            by_field: dict[str, list[tuple[int, int, str]]] = {}
            for f in scan.secrets:
                text = getattr(ex, f.field)
                by_field.setdefault(f.field, []).append((f.start, f.end, masked_form(f.kind, text[f.start:f.end])))
            for f in scan.pii:
                text = getattr(ex, f.field)
                by_field.setdefault(f.field, []).append((f.start, f.end, placeholders.token(f.kind, text[f.start:f.end])))
            for name, spans in by_field.items():
                item.updates[name] = replace_spans(getattr(ex, name), spans)
        if "input_text" in item.updates or "output_text" in item.updates:
            # Stored text changed: hash, output key and signature follow the stored form, not the cached one.
            item.norm, item.signature = None, None
            item.rekey()

    # --- rule 4: duplicates --------------------------------------------------------------------------------------

    async def _dedup(self, items: list[_Item]) -> np.ndarray:
        """Rule 4; returns the signature matrix of the items that reached the near-duplicate check."""
        no_sigs = np.empty((0, self.config.num_perm), dtype=np.uint32)
        live = [it for it in items if it.decision is None]
        if not live:
            return no_sigs
        batch_ids = {it.example.example_id for it in items}
        exec_keys = [(it.example.source_type.value, it.example.execution_id) for it in live if it.example.execution_id]
        if self.db is not None:
            async with self.db.session() as session:
                from ..store.repositories.filter_decisions import FilterDecisionRepository

                repo = FilterDecisionRepository(session)
                stored_hashes = await repo.stored_hashes([it.content_hash for it in live], batch_ids)
                stored_exec = await repo.stored_execution_keys(exec_keys, batch_ids) if exec_keys else {}
        else:
            # Only the batch's own keys are looked up: the cost follows the batch, not the pool.
            seen_h, seen_x = self._seen_hashes, self._seen_exec
            stored_hashes = {h: e for it in live if (e := seen_h.get(h := it.content_hash)) and e not in batch_ids}
            stored_exec = {k: e for k in exec_keys if (e := seen_x.get(k)) and e not in batch_ids}
        batch_hash: dict[str, str] = {}
        batch_exec: dict[tuple[str, str], str] = {}
        for it in live:
            ex = it.example
            key = (ex.source_type.value, ex.execution_id) if ex.execution_id else None
            earlier = batch_hash.get(it.content_hash) or stored_hashes.get(it.content_hash)
            exec_earlier = (batch_exec.get(key) or stored_exec.get(key)) if key else None
            batch_hash.setdefault(it.content_hash, ex.example_id)
            if key:
                batch_exec.setdefault(key, ex.example_id)
            if earlier:
                self._decide(it, Decision.REJECT, "duplicate", None, "exact_duplicate", f"same content as {earlier}")
            elif exec_earlier:
                self._decide(it, Decision.REJECT, "duplicate", None, "execution_duplicate",
                             f"execution {ex.execution_id} already gave example {exec_earlier}")
        live = [it for it in live if it.decision is None]
        if not live:
            return no_sigs
        size = self.config.shingle_size
        sigs = self._sign(live)
        found = self._index.find_signed(
            [it.example.example_id for it in live], sigs, lambda i: frozenset(shingles(*live[i].normalised(), size)),
        )
        for it, dup in zip(live, found):
            if dup is not None:
                where = "stored example" if dup.in_pool else "earlier example in the batch"
                self._decide(it, Decision.REJECT, "duplicate", None, "near_duplicate",
                             f"Jaccard {dup.jaccard:.3f} >= {self.config.near_duplicate_jaccard} with {where} {dup.of}")
        return sigs

    def _sign(self, live: list[_Item]) -> np.ndarray:
        """The live items' MinHash matrix (row ``item.sig``): decoded from the extraction-time cache, computed here
        for the rest."""
        cfg = self.config
        sigs = np.empty((len(live), cfg.num_perm), dtype=np.uint32)
        cached = [i for i, it in enumerate(live) if it.signature is not None]
        fresh = [i for i, it in enumerate(live) if it.signature is None]
        if cached:
            sigs[cached] = decode_many([str(live[i].signature) for i in cached], cfg.num_perm)
        if fresh:
            docs = [shingles(*live[i].normalised(), cfg.shingle_size) for i in fresh]
            sigs[fresh] = signatures(docs, cfg.num_perm, cfg.minhash_seed)
        for row, it in enumerate(live):
            it.sig = row
        return sigs

    # --- rules 5 to 7: confidence, L06 quality, composite --------------------------------------------------------

    def _gate(self, items: list[_Item]) -> None:
        cfg = self.config
        live = [it for it in items if it.decision is None]
        if not live:
            return
        composite = self._composites([it.example for it in live])
        conf = np.array([it.example.confidence for it in live], dtype=float)  # None -> nan
        quality = np.array([it.example.quality_score for it in live], dtype=float)
        # Only examples that fail some gate need the rule-by-rule walk below (which names the first failing rule).
        failing = np.isnan(conf) | (conf < cfg.min_confidence) | (quality < cfg.min_quality_score) | (
            composite < cfg.min_composite_score)
        for it, value in zip(live, composite.tolist()):
            it.composite = value
        for pos in np.flatnonzero(failing).tolist():
            it = live[pos]
            c, q = it.example.confidence, it.example.quality_score
            if c is None:
                self._decide(it, Decision.REVIEW, "low_confidence", L07ErrorCode.QUALITY_SIGNAL_UNAVAILABLE.value,
                             "confidence", "no confidence: REVIEW only (E7021)")
            elif c < cfg.confidence_review_floor:
                self._decide(it, Decision.REJECT, "low_confidence", None, "confidence",
                             f"confidence {c:.2f} < {cfg.confidence_review_floor}")
            elif c < cfg.min_confidence:
                self._decide(it, Decision.REVIEW, "low_confidence", None, "confidence",
                             f"confidence {c:.2f} in review band [{cfg.confidence_review_floor}, {cfg.min_confidence})")
            elif q < cfg.quality_review_floor:
                self._decide(it, Decision.REJECT, "low_quality", None, "quality", f"quality {q:.1f} < {cfg.quality_review_floor}")
            elif q < cfg.min_quality_score:
                self._decide(it, Decision.REVIEW, "low_quality", None, "quality",
                             f"quality {q:.1f} in review band [{cfg.quality_review_floor}, {cfg.min_quality_score})")
            elif it.composite < cfg.composite_review_factor * cfg.min_composite_score:
                self._decide(it, Decision.REJECT, "low_composite", None, "composite",
                             f"composite {it.composite:.1f} < {cfg.composite_review_factor * cfg.min_composite_score:.1f}")
            elif it.composite < cfg.min_composite_score:
                self._decide(it, Decision.REVIEW, "low_composite", None, "composite",
                             f"composite {it.composite:.1f} in review band")

    def _composites(self, examples: list[TrainingExample]) -> np.ndarray:
        """``composite_score`` of every example at once (same operations in the same order, so the same floats)."""
        q = np.array([ex.quality_score for ex in examples], dtype=float)
        c = np.array([ex.confidence or 0.0 for ex in examples], dtype=float)
        steps = np.array([ex.execution_length for ex in examples], dtype=float)
        tools = np.array([ex.tool_count for ex in examples], dtype=float)
        members = self._pool_members
        if self._pool_size == 0 and not members:
            diversity = np.full(len(examples), 0.5)
        else:
            diversity = np.array([self._diversity(ex) for ex in examples], dtype=float)
        difficulty = 0.3 * np.minimum(steps / 10, 1) + 0.3 * np.minimum(tools / 5, 1) + 0.4 * (1 - q / 100)
        informativeness = 0.5 * difficulty + 0.5 * np.minimum(steps / 5, 1)
        value = 100 * (0.6 * q / 100 + 0.2 * c + 0.1 * diversity + 0.1 * informativeness)
        return np.clip(value, 0.0, 100.0)

    def _diversity(self, ex: TrainingExample) -> float:
        same = self._pool_task[ex.task_type] + self._pool_domain[ex.domain]
        size = self._pool_size
        own = self._pool_members.get(ex.example_id)
        if own is not None:
            # Re-filtering a stored example (a replay) must not compare it with itself.
            size -= 1
            same -= (own[0] == ex.task_type) + (own[1] == ex.domain)
        if size <= 0:
            return 0.5
        return 1 - same / (2 * size)

    # --- rule 8: outliers ------------------------------------------------------------------------------------------

    def _outliers(self, items: list[_Item], batch_size: int) -> None:
        cfg = self.config
        if batch_size <= cfg.outlier_min_batch or not items:
            return
        feats = np.asarray(
            [[it.example.execution_length, it.example.quality_score, it.example.confidence or 0.0] for it in items],
            dtype=float,
        )
        try:
            forest = isolation_outliers(feats, cfg.outlier_contamination, cfg.outlier_trees, cfg.outlier_seed)
        except (ValueError, MemoryError) as exc:
            code = L07ErrorCode.ANOMALY_DETECTOR_ERROR.value
            log.warning("%s outlier detection skipped: %s", code, exc, extra={"error_code": code})
            ERRORS.labels(code, "data").inc()
            forest = np.zeros(len(items), dtype=bool)
        by_agent = agent_quality_outliers(
            [it.example.agent_id for it in items], [it.example.quality_score for it in items], cfg.agent_sigma,
            cfg.agent_min_examples,
        )
        for pos, it in enumerate(items):
            if it.decision is not None:
                continue
            if forest[pos]:
                self._decide(it, Decision.REVIEW, "anomaly", None, "isolation_forest",
                             "IsolationForest outlier on [execution_length, quality, confidence]")
            elif pos in by_agent:
                self._decide(it, Decision.REVIEW, "anomaly", None, "agent_quality_sigma",
                             f"quality more than {cfg.agent_sigma} sigma from agent {it.example.agent_id}'s mean")

    # --- rule 9: batch poisoning and source share ------------------------------------------------------------------

    def _batch_rules(self, items: list[_Item]) -> list[dict[str, Any]]:
        cfg = self.config
        alerts: list[dict[str, Any]] = []
        poisoned = [it for it in items if it.decision is not None and it.decision.decision is Decision.QUARANTINE
                    and it.decision.reason not in ("pii",)]
        by_rule = Counter(it.decision.rule for it in poisoned)  # type: ignore[union-attr]
        by_agent = Counter(it.example.agent_id for it in poisoned)
        incident_agents: dict[str | None, str] = {}
        for rule, n in by_rule.items():
            if n > cfg.batch_poison_threshold:
                for it in poisoned:
                    if it.decision.rule == rule:  # type: ignore[union-attr]
                        incident_agents.setdefault(it.example.agent_id, f"{n} examples flagged by {rule}")
        for agent, n in by_agent.items():
            if n > cfg.batch_poison_threshold:
                incident_agents.setdefault(agent, f"{n} flagged examples from agent {agent}")
        code = L07ErrorCode.TRAINING_DATA_CONTAMINATION_DETECTED.value
        for agent, why in incident_agents.items():
            hit = 0
            for it in items:
                if it.example.agent_id == agent and (it.decision is None or it.decision.decision is not Decision.QUARANTINE):
                    it.decision = None
                    self._decide(it, Decision.QUARANTINE, "batch_poisoning", code, "batch_poisoning",
                                 f"agent's batch quarantined: {why}")
                    hit += 1
            log.error("%s batch poisoning incident, agent %s: %s", code, agent, why, extra={"error_code": code})
            alerts.append(self._alert("training_data_poisoning", "critical", code,
                                      f"batch poisoning: {why}; {hit} more examples of agent {agent} quarantined",
                                      {"agent_id": agent, "reason": why, "quarantined_extra": hit}))
        secrets = [it for it in items if it.decision is not None and it.decision.reason == "secret"]
        if secrets:
            scode = L07ErrorCode.SECRET_DETECTED_IN_TRAINING_DATA.value
            alerts.append(self._alert(
                "secret_in_training_data", "critical", scode,
                f"{len(secrets)} example(s) carried credentials; they are quarantined masked, rotate the credentials",
                {"example_ids": [it.example.example_id for it in secrets][:50],
                 "kinds": sorted({f.kind for it in secrets for f in (it.scan.secrets if it.scan else [])})},
            ))
        redacted = [it for it in items if it.updates.get("metadata", {}).get("pii_redacted")]
        if redacted:
            pcode = L07ErrorCode.PII_DETECTED_IN_TRAINING_DATA.value
            kinds = Counter(k for it in redacted for k in it.updates["metadata"].get("pii_kinds", []))
            log.warning("%s PII redacted in %d example(s): %s", pcode, len(redacted), dict(kinds),
                        extra={"error_code": pcode})
            alerts.append(self._alert("pii_in_training_data", "warning", pcode,
                                      f"PII redacted in {len(redacted)} example(s)",
                                      {"example_ids": [it.example.example_id for it in redacted][:50],
                                       "kinds": dict(kinds)}))
        self._share_cap(items)
        return alerts

    def _share_cap(self, items: list[_Item]) -> None:
        cfg = self.config
        accepted = [it for it in items if it.decision is None]
        if len(accepted) < cfg.source_share_min_batch:
            return
        cap = max(1, math.floor(cfg.max_source_share * len(accepted)))
        kept: Counter[str | None] = Counter()
        for it in accepted:
            agent = it.example.agent_id
            kept[agent] += 1
            if kept[agent] > cap:
                self._decide(it, Decision.REVIEW, "source_share_cap", None, "source_share_cap",
                             f"agent {agent} above {cfg.max_source_share:.0%} of this batch's accepted examples")

    # --- decisions, persistence, metrics ---------------------------------------------------------------------------

    @staticmethod
    def _decide(item: _Item, decision: Decision, reason: str, code: str | None, rule: str, detail: str) -> None:
        if item.decision is None:
            item.decision = FilterDecision(item.index, item.example.example_id, decision, reason, code, rule, detail,
                                           domain=item.example.domain)

    def _finish(self, item: _Item) -> FilterDecision:
        d = item.decision or FilterDecision(item.index, item.example.example_id, Decision.ACCEPT, "accepted",
                                            domain=item.example.domain)
        ex = item.example
        updates = dict(item.updates)
        flags = item.scan.flags if item.scan is not None else []
        if updates or "scan" in ex.metadata or ex.metadata.get("scan_flags") != flags:
            # The extraction-time cache is a hand-off to this filter, not part of the decided example: it would only
            # bloat stored rows and dataset exports, and after redaction it no longer describes the text.
            metadata = dict(updates.get("metadata", ex.metadata))
            metadata["scan_flags"] = flags
            metadata.pop("scan", None)
            updates["metadata"] = metadata
        updates["status"] = d.decision.status
        updates["content_hash"] = item.content_hash
        d.composite = item.composite
        d.example = _copy_with(ex, updates)
        return d

    async def _persist(self, report: FilterReport) -> None:
        from ..events.publisher import EventPublisher
        from ..store.repositories.audit import audit
        from ..store.repositories.examples import example_row
        from ..store.repositories.filter_decisions import FilterDecisionRepository

        assert self.db is not None
        rows = []
        async with self.db.session() as session:
            repo = FilterDecisionRepository(session)
            for d in report.decisions:
                raw = d.example.model_dump(mode="json") if d.example else (
                    d.raw if isinstance(d.raw, dict) else {"repr": repr(d.raw)[:4000]})
                payload = mask_secrets_deep(raw, self.scanner.secrets)
                # Duplicates live in the rejected table only: stored, they would make the original look like the
                # later arrival on a replay (and an execution duplicate would break the (source_type, execution_id) key).
                if d.example is not None and d.reason not in ("duplicate", "incomplete"):
                    rows.append(example_row(d.example, d.composite, payload))
                if d.decision is not Decision.ACCEPT:
                    repo.add_rejection(d.example_id or f"unparsed-{new_id()}", d.decision.value, d.reason, d.code,
                                       d.rule, d.detail, d.example.agent_id if d.example else None, payload)
                if d.decision is Decision.REVIEW and d.example_id:
                    repo.add_review(d.example_id, d.reason, payload)
                if d.example is not None and d.example.metadata.get("pii_redacted") and d.decision is not Decision.REJECT:
                    await audit(session, "example.pii_redacted", "training_example", d.example_id,
                                details={"kinds": d.example.metadata.get("pii_kinds", []), "decision": d.decision.value},
                                error_code=L07ErrorCode.PII_DETECTED_IN_TRAINING_DATA.value)
            await repo.upsert_examples(rows)
            await repo.mark_rejected([d.example_id for d in report.decisions
                                      if d.example_id and d.reason in ("duplicate", "incomplete")])
            publisher = EventPublisher()
            for alert in report.alerts:
                await publisher.publish(session, "learning.learning_system_alert", alert, subject=alert["alert_id"])

    @staticmethod
    def _alert(name: str, severity: str, code: str, message: str, details: dict[str, Any]) -> dict[str, Any]:
        return {"alert_id": new_id(), "alert_name": name, "severity": severity, "error_code": code, "domain": "data",
                "message": message, "details": details, "circuit_breaker_state": None}

    def _remember(self, items: list[_Item], report: FilterReport, sigs: np.ndarray) -> None:
        """Grow the in-memory pool (near-dup index, diversity counts, seen hashes) with this batch's outcome."""
        if self.db is None:
            seen_hashes, seen_exec = self._seen_hashes, self._seen_exec
            for d in report.decisions:
                ex = d.example
                if ex is not None and d.reason != "duplicate":
                    seen_hashes.setdefault(ex.content_hash, ex.example_id)
                    if ex.execution_id:
                        seen_exec.setdefault((ex.source_type.value, ex.execution_id), ex.example_id)
        known = self._pool_known
        decisions = report.decisions
        accept, review = Decision.ACCEPT, Decision.REVIEW
        rows: list[int] = []
        sources: list[tuple[str, str]] = []
        kept: list[TrainingExample] = []
        accepted: list[tuple[str, str, str]] = []
        for item in items:
            d = decisions[item.index]
            decision, ex = d.decision, d.example
            if (decision is not accept and decision is not review) or ex is None or ex.example_id in known:
                continue
            kept.append(ex)
            rows.append(item.sig)
            # The pool keeps the stored text, not its shingles: the exact check builds them only for candidates.
            sources.append((ex.input_text, ex.output_text))
            if decision is accept:
                accepted.append((ex.example_id, ex.task_type, ex.domain))
        if kept:
            ids = [ex.example_id for ex in kept]
            known.update(ids)
            self._index.add_signed(ids, sigs[rows], sources)
            self._add_to_pool_counts(accepted)

    def _add_to_pool_counts(self, accepted: list[tuple[str, str, str]]) -> None:
        """Count ``(example_id, task_type, domain)`` of newly accepted examples in the diversity pool."""
        self._pool_members.update((eid, (task, domain)) for eid, task, domain in accepted)
        self._pool_task.update(task for _, task, _ in accepted)
        self._pool_domain.update(domain for _, _, domain in accepted)
        self._pool_size += len(accepted)

    async def _refresh_pool(self) -> None:
        """Load stored ACCEPTED/REVIEW examples this instance has not indexed yet (dedup and diversity pool)."""
        if self.db is None:
            return
        from ..store.repositories.filter_decisions import FilterDecisionRepository

        async with self.db.session() as session:
            repo = FilterDecisionRepository(session)
            missing = [eid for eid, _ in await repo.pool_ids(POOL_STATUSES) if eid not in self._pool_known]
            rows = await repo.pool_texts(missing) if missing else []
        size = self.config.shingle_size
        ids, docs = [], []
        for eid, _, inp, out, _, _ in rows:
            self._pool_known.add(eid)
            ids.append(eid)
            docs.append(shingles(normalise_text(inp), normalise_text(out), size))
        self._add_to_pool_counts([(eid, task, domain) for eid, status, _, _, task, domain in rows
                                  if status == ExampleStatus.ACCEPTED.value])
        self._index.add(ids, docs)

    @staticmethod
    def _count(report: FilterReport) -> None:
        # Counted per label set, not per example: one metric update per distinct outcome of the batch.
        outcomes = Counter((d.decision, d.reason, d.domain, d.code) for d in report.decisions)
        for (decision, reason, domain, code), n in outcomes.items():
            EXAMPLES_FILTERED.labels(decision.value.lower(), reason, domain).inc(n)
            if code:
                ERRORS.labels(code, "security" if decision is Decision.QUARANTINE else "data").inc(n)
            if decision is Decision.QUARANTINE and reason not in ("pii", "secret"):
                DATA_POISONING_DETECTED.labels(domain).inc(n)
