"""What the filter compares a batch with: the examples already kept (contract §5.1 diversity, §5.2 rule 4).

With a database the pool is the stored ACCEPTED/REVIEW examples (loaded once, then grown batch by batch) and the
stored content hashes and execution keys answer the exact-duplicate check; without one it is what this filter
instance has seen.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ...models.training_example import ExampleStatus, TrainingExample, normalise_text
from ...store.db import Database
from ...store.repositories.filter_decisions import FilterDecisionRepository
from .config import FilterConfig
from .decisions import Candidate, Decision, FilterReport
from .dedup import NearDuplicateIndex
from .minhash import shingles

POOL_STATUSES = (ExampleStatus.ACCEPTED.value, ExampleStatus.REVIEW.value)

ExecKey = tuple[str, str]


class ExamplePool:
    """Near-duplicate index, diversity counts and (in memory) seen keys of the examples kept so far."""

    def __init__(self, config: FilterConfig, db: Database | None) -> None:
        self.config = config
        self.db = db
        self.index = NearDuplicateIndex(
            config.near_duplicate_jaccard, config.num_perm, config.num_bands, config.minhash_seed, config.shingle_size,
        )
        self._task: Counter[str] = Counter()
        self._domain: Counter[str] = Counter()
        self._size = 0
        self._members: dict[str, tuple[str, str]] = {}
        self._known: set[str] = set()
        # In-memory mode only: what this instance has seen (the database answers these when there is one).
        self._seen_hashes: dict[str, str] = {}
        self._seen_exec: dict[ExecKey, str] = {}

    @property
    def empty(self) -> bool:
        return self._size == 0 and not self._members

    def diversity(self, ex: TrainingExample) -> float:
        """§5.1 diversity of ``ex`` against the accepted pool (0.5 when the pool is empty)."""
        same = self._task[ex.task_type] + self._domain[ex.domain]
        size = self._size
        own = self._members.get(ex.example_id)
        if own is not None:
            # Re-filtering a stored example (a replay) must not compare it with itself.
            size -= 1
            same -= (own[0] == ex.task_type) + (own[1] == ex.domain)
        if size <= 0:
            return 0.5
        return 1 - same / (2 * size)

    async def stored_keys(self, live: list[Candidate], batch_ids: set[str],
                          exec_keys: list[ExecKey]) -> tuple[dict[str, str], dict[ExecKey, str]]:
        """``({content_hash: example_id}, {execution key: example_id})`` of kept examples outside this batch."""
        if self.db is not None:
            async with self.db.session() as session:
                repo = FilterDecisionRepository(session)
                hashes = await repo.stored_hashes([c.content_hash for c in live], batch_ids)
                execs = await repo.stored_execution_keys(exec_keys, batch_ids) if exec_keys else {}
            return hashes, execs
        # Only the batch's own keys are looked up: the cost follows the batch, not the pool.
        seen_h, seen_x = self._seen_hashes, self._seen_exec
        hashes = {h: e for c in live if (e := seen_h.get(h := c.content_hash)) and e not in batch_ids}
        execs = {k: e for k in exec_keys if (e := seen_x.get(k)) and e not in batch_ids}
        return hashes, execs

    async def refresh(self) -> None:
        """Load stored ACCEPTED/REVIEW examples this pool has not indexed yet."""
        if self.db is None:
            return
        async with self.db.session() as session:
            repo = FilterDecisionRepository(session)
            missing = [eid for eid, _ in await repo.pool_ids(POOL_STATUSES) if eid not in self._known]
            rows = await repo.pool_texts(missing) if missing else []
        size = self.config.shingle_size
        ids, docs = [], []
        for eid, _, inp, out, _, _ in rows:
            self._known.add(eid)
            ids.append(eid)
            docs.append(shingles(normalise_text(inp), normalise_text(out), size))
        self._count([(eid, task, domain) for eid, status, _, _, task, domain in rows
                     if status == ExampleStatus.ACCEPTED.value])
        self.index.add(ids, docs)

    def remember(self, candidates: list[Candidate], report: FilterReport, sigs: np.ndarray | None) -> None:
        """Grow the pool (near-dup index, diversity counts, seen keys) with this batch's outcome.

        ``sigs`` holds the MinHash row (``candidate.sig``) of every candidate that reached the near-duplicate rule,
        which every ACCEPT or REVIEW candidate did.
        """
        if self.db is None:
            seen_hashes, seen_exec = self._seen_hashes, self._seen_exec
            for d in report.decisions:
                ex = d.example
                if ex is not None and d.reason != "duplicate":
                    seen_hashes.setdefault(ex.content_hash, ex.example_id)
                    if ex.execution_id:
                        seen_exec.setdefault((ex.source_type.value, ex.execution_id), ex.example_id)
        known = self._known
        decisions = report.decisions
        accept, review = Decision.ACCEPT, Decision.REVIEW
        rows: list[int] = []
        sources: list[tuple[str, str]] = []
        kept: list[TrainingExample] = []
        accepted: list[tuple[str, str, str]] = []
        for c in candidates:
            d = decisions[c.index]
            decision, ex = d.decision, d.example
            if (decision is not accept and decision is not review) or ex is None or ex.example_id in known:
                continue
            kept.append(ex)
            rows.append(c.sig)
            # The pool keeps the stored text, not its shingles: the exact check builds them only for candidates.
            sources.append((ex.input_text, ex.output_text))
            if decision is accept:
                accepted.append((ex.example_id, ex.task_type, ex.domain))
        if kept:
            assert sigs is not None
            ids = [ex.example_id for ex in kept]
            known.update(ids)
            self.index.add_signed(ids, sigs[rows], sources)
            self._count(accepted)

    def _count(self, accepted: list[tuple[str, str, str]]) -> None:
        """Count ``(example_id, task_type, domain)`` of newly accepted examples in the diversity pool."""
        self._members.update((eid, (task, domain)) for eid, task, domain in accepted)
        self._task.update(task for _, task, _ in accepted)
        self._domain.update(domain for _, _, domain in accepted)
        self._size += len(accepted)
