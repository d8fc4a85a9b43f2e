"""Rule 4 of the filter (contract §5.2): an example already kept, in this batch or before, is rejected.

Exact duplicates (same normalised content, or one example id twice in a batch) are found by key; near
duplicates (shingle Jaccard at or above the threshold) by MinHash and banded LSH, then checked exactly.
"""

from __future__ import annotations

import numpy as np

from .config import FilterConfig
from .decisions import Batch, Candidate, Decision
from .minhash import decode_many, shingles, signatures
from .pool import ExamplePool


class ExactDuplicates:
    """Same content hash as an earlier example, or the same example id twice in one batch: REJECT.

    Several examples of one execution (the turns of one conversation) are not duplicates: an example's identity is
    its ``example_id`` (replays of one event give the same id and are no-ops in storage), and the splitter keeps
    examples of one execution in one split (contract §5.4).
    """

    def __init__(self, pool: ExamplePool) -> None:
        self.pool = pool

    async def apply(self, batch: Batch) -> None:
        live = batch.undecided()
        if not live:
            return
        batch_ids = {c.example.example_id for c in batch.candidates}
        stored_hashes, _ = await self.pool.stored_keys(live, batch_ids, [])
        batch_hash: dict[str, str] = {}
        seen_ids: set[str] = set()
        for c in live:
            ex = c.example
            earlier = batch_hash.get(c.content_hash) or stored_hashes.get(c.content_hash)
            batch_hash.setdefault(c.content_hash, ex.example_id)
            repeated = ex.example_id in seen_ids
            seen_ids.add(ex.example_id)
            if earlier:
                c.decide(Decision.REJECT, "duplicate", None, "exact_duplicate", f"same content as {earlier}")
            elif repeated:
                c.decide(Decision.REJECT, "duplicate", None, "example_id_duplicate",
                         f"example {ex.example_id} appears twice in this batch")


class NearDuplicates:
    """Shingle Jaccard >= ``near_duplicate_jaccard`` with a kept or earlier example: REJECT.

    Leaves the MinHash rows of the examples it checked in ``batch.signatures`` (row ``candidate.sig``): the pool
    indexes the kept ones with them once the batch is decided.
    """

    def __init__(self, config: FilterConfig, pool: ExamplePool) -> None:
        self.config = config
        self.pool = pool

    async def apply(self, batch: Batch) -> None:
        batch.signatures = np.empty((0, self.config.num_perm), dtype=np.uint32)
        live = batch.undecided()
        if not live:
            return
        size = self.config.shingle_size
        sigs = batch.signatures = self._sign(live)
        found = self.pool.index.find_signed(
            [c.example.example_id for c in live], sigs, lambda i: frozenset(shingles(*live[i].normalised(), size)),
        )
        for c, dup in zip(live, found):
            if dup is not None:
                where = "stored example" if dup.in_pool else "earlier example in the batch"
                c.decide(Decision.REJECT, "duplicate", None, "near_duplicate",
                         f"Jaccard {dup.jaccard:.3f} >= {self.config.near_duplicate_jaccard} with {where} {dup.of}")

    def _sign(self, live: list[Candidate]) -> np.ndarray:
        """The live candidates' MinHash matrix: decoded from the extraction-time cache, computed here for the rest."""
        cfg = self.config
        sigs = np.empty((len(live), cfg.num_perm), dtype=np.uint32)
        cached = [i for i, c in enumerate(live) if c.signature is not None]
        fresh = [i for i, c in enumerate(live) if c.signature is None]
        if cached:
            sigs[cached] = decode_many([str(live[i].signature) for i in cached], cfg.num_perm)
        if fresh:
            docs = [shingles(*live[i].normalised(), cfg.shingle_size) for i in fresh]
            sigs[fresh] = signatures(docs, cfg.num_perm, cfg.minhash_seed)
        for row, c in enumerate(live):
            c.sig = row
        return sigs
