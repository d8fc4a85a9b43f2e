"""The content scan of a batch's examples, done before its write transaction opens (issue 22, HIGH 3).

Examples are composed inside the transaction, after the claim and the join, because what an event completes depends on
the join rows other batches left. The scan of their text (secrets, poisoning, PII, MinHash: the CPU-heavy part of a
batch) must not hold the database's write lock meanwhile, so it is done ahead, keyed by the text it read:

1. ``ScanCache.prepare``, no transaction open: the batch's join rows are read in a short read-only session (no row
   locks), the parsed events are joined on them exactly as the transaction will (``joining.apply``), and the texts of
   the examples that yields are scanned off the event loop (``ContentScanner.annotate_many_async``: the scan process
   pool). The digests are kept by scanned text (``SCANNED_FIELDS``).
2. In the transaction, ``ScanCache.annotate`` attaches to each composed example the digest of its very text plus a
   fresh MAC: a lookup and a keyed hash, no detector runs.
3. When a composed example's text was not scanned ahead (a concurrent writer changed the join rows between 1 and 2),
   ``annotate`` raises ``ScanMiss``; the transaction rolls back, those examples are scanned with no transaction open,
   and the batch runs again. A rolled-back attempt leaves nothing (claims, joins, rejections all go with it), so the
   retry neither loses nor duplicates anything. After ``SCAN_ROUNDS`` such rounds under sustained contention the last
   attempt scans its few remaining examples in place rather than starve.

Step 1 also redacts, in a worker thread, what the batch is expected to store (the pre-composed examples, the join
payloads, the rejected raw payloads), so the storage redaction in the transaction finds the detector spans of its long
strings already made (``storage_form.BatchRedactor``).

Nothing from step 1 is trusted beyond the text it was computed from: a digest is found only under the exact text the
transaction composed, and the cache the filter reads carries a MAC over that text, so atomicity and the filter's
guarantees are those of a scan done in the transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from ...models._base import utcnow
from ...models.training_example import TrainingExample
from ...store.db import Database
from ...store.repositories.joins import JoinRepository, JoinRow
from ..filtering import ContentScanner
from ..filtering.scan import SCANNED_FIELDS
from .joining import BatchState, apply, join_keys
from .parsing import Parsed
from .results import ItemResult
from .storage_form import BatchRedactor, expected_long, warm

log = logging.getLogger(__name__)

SCAN_ROUNDS = 3
"""Transactions rolled back for a scan miss before the last attempt scans in place."""

Texts = tuple[str, ...]
Digest = tuple[str, str, str, str]


def texts_of(example: TrainingExample) -> Texts:
    """What the scan reads of an example, and so the key its digest is kept under."""
    return tuple(getattr(example, name) or "" for name in SCANNED_FIELDS)


class ScanMiss(Exception):
    """Examples composed in the transaction whose text was not scanned ahead; the transaction rolls back."""

    def __init__(self, examples: list[TrainingExample]) -> None:
        super().__init__(f"{len(examples)} examples not scanned ahead")
        self.examples = examples


class ScanCache:
    """Scan digests of one ingestion call's examples, by scanned text (made with no transaction open)."""

    def __init__(self, scanner: ContentScanner) -> None:
        self.scanner = scanner
        self._digests: dict[Texts, Digest] = {}

    async def prepare(self, db: Database, parsed: list[Parsed], raw_events: Sequence[Any] = (),
                      redact: BatchRedactor | None = None) -> None:
        """Compose the examples ``parsed`` would complete on the join rows stored now, and scan them (step 1). With
        ``redact``, also make the storage redaction's detector spans of what the batch will store (``storage_form``).

        Best effort: a failure here only means the transaction finds misses (step 3), where a database failure is
        reported as E7014 and a scan failure rejects the event at fault, as they always were."""
        seen: set[tuple[str, str]] = set()
        work: list[Parsed] = []
        for p in parsed:
            if p.event is None or p.error is not None or p.kind is None or (p.event.source, p.event.id) in seen:
                continue
            seen.add((p.event.source, p.event.id))
            work.append(p)
        examples: list[TrainingExample] = []
        rows: list[JoinRow] = []
        keys = join_keys(work)
        if keys:
            try:
                async with db.session() as session:
                    stored = await JoinRepository(session).load(keys, lock=False)
            except Exception:  # noqa: BLE001 - see the docstring
                log.debug("pre-scan: reading the join rows failed; the transaction scans what it composes",
                          exc_info=True)
                return
            state = BatchState(now=utcnow(), rows=stored)
            items = {p.index: ItemResult("processed") for p in work}
            for seq, p in enumerate(work):
                try:
                    apply(state, p, items, seq)
                except Exception:  # noqa: BLE001 - the transaction rejects this event with its code
                    continue
            examples = [ex for item in items.values() for ex in item.examples]
            rows = list(state.rows.values())
            try:
                await self.fill(examples)
            except Exception:  # noqa: BLE001 - see the docstring
                log.debug("pre-scan failed; the transaction retries it for the examples it composes", exc_info=True)
        rejected = [raw_events[p.index] for p in parsed if p.error is not None and p.index < len(raw_events)]
        if redact is not None and (examples or rows or rejected):
            try:
                strings = expected_long(redact, examples, rows, rejected)
                if strings:
                    await asyncio.to_thread(warm, redact, strings)
            except Exception:  # noqa: BLE001 - the transaction redacts what is left, and reports what fails
                log.debug("pre-redaction failed; the transaction redacts in full", exc_info=True)

    async def fill(self, examples: list[TrainingExample]) -> None:
        """Scan the examples whose text has no digest yet (off the event loop for large batches)."""
        todo: dict[Texts, TrainingExample] = {}
        for ex in examples:
            key = texts_of(ex)
            if key not in self._digests:
                todo.setdefault(key, ex)
        if not todo:
            return
        for key, ex in zip(todo, await self.scanner.annotate_many_async(list(todo.values()))):
            scan = ex.metadata["scan"]
            self._digests[key] = (scan["findings"], scan["content_hash"], scan["output_hash"], scan["minhash"])

    async def annotate(self, examples: list[TrainingExample], *, scan_missing: bool = False) -> list[TrainingExample]:
        """``examples`` with their scan cached in ``metadata["scan"]`` from the digests of their text (step 2).

        Raises ``ScanMiss`` for examples without one, unless ``scan_missing`` (the last round): then they are scanned
        here."""
        missing = [ex for ex in examples if texts_of(ex) not in self._digests]
        if missing:
            if not scan_missing:
                raise ScanMiss(missing)
            log.warning("%d examples scanned inside the ingestion transaction: their joins kept changing under "
                        "concurrent writers", len(missing))
            await self.fill(missing)
        digests = self._digests
        return self.scanner.annotate_many(examples, [digests[texts_of(ex)] for ex in examples])
