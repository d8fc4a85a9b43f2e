"""Near-duplicate detection: MinHash LSH (banded signatures) verified by exact shingle Jaccard.

Signatures come from rensa (``minhash.signatures``) or from the extraction-time cache. The LSH banding runs in numpy:
each band of ``num_perm / num_bands`` signature values is folded into one 64-bit bucket key, and a chunk of the batch
is sorted and binary-searched against the pool's sorted keys (and the batch's own) at once, so one batch costs a few
array sorts instead of a hash-table insert and query per document and band. LSH only proposes candidates; every
reported pair is checked against the exact Jaccard of the two shingle sets, so the threshold (0.8 by default, contract
§5.2 rule 4) is exact. With 64 permutations in 16 bands of 4 rows, a pair at Jaccard 0.8 becomes a candidate with
probability 1 - (1 - 0.8**4)**16 > 0.9997.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from .minhash import signatures, text_shingles

# Batch documents whose candidate pairs are gathered at once: on templated traffic one document can share buckets
# with thousands of others, so the pair arrays are built per chunk, not for the whole batch.
_CHUNK = 512
# Candidate pairs whose signatures are compared at once (the gathered block is pairs x num_perm x 4 bytes).
_PAIR_SLICE = 1 << 15
# Largest chance that a pair at or above the threshold is pruned by its signature agreement (see _min_agreement).
_MISS = 1e-7
_MIX = np.uint64(0x9E3779B97F4A7C15)

ShingleSource = frozenset[str] | tuple[str, str]
"""A pool document's shingle set, or its raw (input, output) text to build the set from when a candidate needs it."""


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def _min_agreement(threshold: float, num_perm: int) -> int:
    """Fewest equal signature values a candidate needs to get the exact Jaccard check.

    Skipping the rest saves building two shingle sets per false LSH candidate. A pair at Jaccard J agrees on each
    permutation with probability J, so its agreement count is Binomial(num_perm, J); that only grows with J, so the
    tail at J = threshold bounds every pair at or above it. The exact tail is used because a normal approximation
    (mean minus a few standard deviations) is far too tight for few permutations or thresholds near 1.
    """
    pmf = (math.comb(num_perm, k) * threshold**k * (1 - threshold) ** (num_perm - k) for k in range(num_perm + 1))
    # The first k with P(count <= k) above _MISS: requiring k agreements prunes only counts below it.
    return next(k for k, at_most in enumerate(accumulate(pmf)) if at_most > _MISS)


@dataclass(frozen=True)
class NearDuplicate:
    """The earlier document a later one duplicates."""

    of: str
    jaccard: float
    in_pool: bool


class _SortedKeys:
    """Bucket keys of the pool (or of a batch so far), as a few sorted segments (merged geometrically, so adding a
    batch never re-sorts a large pool) with the position of each key's document."""

    def __init__(self) -> None:
        self._segments: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, keys: np.ndarray, positions: np.ndarray) -> None:
        order = np.argsort(keys)
        self._segments.append((keys[order], positions[order]))
        while len(self._segments) > 1 and len(self._segments[-1][0]) * 2 >= len(self._segments[-2][0]):
            (k2, p2), (k1, p1) = self._segments.pop(), self._segments.pop()
            keys_all, pos_all = np.concatenate([k1, k2]), np.concatenate([p1, p2])
            order = np.argsort(keys_all, kind="stable")  # timsort: two sorted runs merge in linear time
            self._segments.append((keys_all[order], pos_all[order]))

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(query index, pool position)`` pairs of every key found (sorted ``keys`` search fastest)."""
        q_parts, p_parts = [], []
        for seg_keys, seg_pos in self._segments:
            lo = np.searchsorted(seg_keys, keys, "left")
            hi = np.searchsorted(seg_keys, keys, "right")
            hits = np.flatnonzero(hi > lo)
            if not hits.size:
                continue
            counts = hi[hits] - lo[hits]
            # Every position lo..hi-1 of every hit, without a Python loop: a running index minus each run's offset.
            offsets = np.repeat(np.cumsum(counts) - counts - lo[hits], counts)
            q_parts.append(np.repeat(hits, counts))
            p_parts.append(seg_pos[np.arange(int(counts.sum())) - offsets])
        if not q_parts:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty
        return np.concatenate(q_parts), np.concatenate(p_parts)


class NearDuplicateIndex:
    """A growing pool of documents plus batch queries against it and within the batch.

    ``find``/``find_signed`` only query; ``add``/``add_signed`` put documents into the pool (the filter adds what it
    kept once the batch is decided).

    Args:
        threshold: Jaccard at or above which two documents are near-duplicates.
        num_perm: MinHash permutations.
        num_bands: LSH bands (``num_perm`` must be divisible by it).
        seed: MinHash seed (fixed, so candidate sets are reproducible).
        shingle_size: Words per shingle, for pool documents added as raw text.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, num_bands: int = 16, seed: int = 42,
                 shingle_size: int = 3) -> None:
        if num_perm % num_bands:
            raise ValueError(f"num_perm {num_perm} is not divisible by num_bands {num_bands}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.num_bands = num_bands
        self.seed = seed
        self.shingle_size = shingle_size
        self._min_agree = _min_agreement(threshold, num_perm)
        self._keys = _SortedKeys()
        self._sigs = np.empty((0, num_perm), dtype=np.uint32)
        self._size = 0
        self._ids: list[str] = []
        self._sources: list[ShingleSource] = []
        self._known: set[str] = set()

    def __len__(self) -> int:
        return self._size

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._known

    def bucket_keys(self, sigs: np.ndarray) -> np.ndarray:
        """``(n, num_bands)`` uint64 bucket keys; the band number is mixed in, so bands share one key space."""
        rows = self.num_perm // self.num_bands
        bands = sigs.reshape(len(sigs), self.num_bands, rows).astype(np.uint64)
        key = np.zeros((len(sigs), self.num_bands), dtype=np.uint64)
        for r in range(rows):
            key = (key ^ bands[:, :, r]) * _MIX
        return key ^ (np.arange(self.num_bands, dtype=np.uint64) * _MIX)

    def add(self, doc_ids: list[str], docs: list[list[str]]) -> None:
        """Add documents (shingle lists) to the pool; ids already present are skipped."""
        self.add_signed(doc_ids, signatures(docs, self.num_perm, self.seed), [frozenset(d) for d in docs])

    def add_signed(self, doc_ids: list[str], sigs: np.ndarray, sources: list[ShingleSource]) -> None:
        """Add documents by signature; ``sources`` give each one's shingle set, or its raw text, from which the set is
        built only when a candidate needs the exact check (so the pool need not hold every shingle set)."""
        known = self._known
        keep = [i for i, doc_id in enumerate(doc_ids) if doc_id not in known]
        if not keep:
            return
        if len(keep) < len(doc_ids):
            doc_ids, sources = [doc_ids[i] for i in keep], [sources[i] for i in keep]
            sigs = sigs[keep]
        start, n = self._size, len(keep)
        if start + n > len(self._sigs):
            grown = np.empty((max(2 * len(self._sigs), start + n, 1024), self.num_perm), dtype=np.uint32)
            grown[:start] = self._sigs[:start]
            self._sigs = grown
        self._sigs[start:start + n] = sigs
        self._ids += doc_ids
        self._sources += sources
        known.update(doc_ids)
        self._size += n
        keys = self.bucket_keys(sigs)
        positions = np.repeat(np.arange(start, start + n, dtype=np.int64), self.num_bands)
        self._keys.add(keys.ravel(), positions)

    def find(self, doc_ids: list[str], docs: list[list[str]]) -> list[NearDuplicate | None]:
        """For each document (a shingle list), the earlier one it near-duplicates: in the pool, or earlier here."""
        return self.find_signed(doc_ids, signatures(docs, self.num_perm, self.seed), lambda i: frozenset(docs[i]))

    def find_signed(
        self, doc_ids: list[str], sigs: np.ndarray, batch_set: Callable[[int], frozenset[str]]
    ) -> list[NearDuplicate | None]:
        """For each document, the earlier one it near-duplicates: in the pool, or earlier in this batch.

        Args:
            doc_ids: Ids of the batch's documents.
            sigs: Their ``(n, num_perm)`` signatures.
            batch_set: The shingle set of batch document ``i`` (called only for LSH candidates).
        """
        n = len(doc_ids)
        result: list[NearDuplicate | None] = [None] * n
        memo: dict[int, frozenset[str]] = {}

        def shingle_set(i: int) -> frozenset[str]:
            if i not in memo:
                memo[i] = batch_set(i)
            return memo[i]

        keys = self.bucket_keys(sigs)
        # The batch's keys so far: a chunk is added before it is searched, so its own documents find each other.
        batch_keys = _SortedKeys()
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            flat = keys[start:stop].ravel()
            batch_keys.add(flat, np.repeat(np.arange(start, stop, dtype=np.int64), self.num_bands))
            order = np.argsort(flat)
            sorted_keys, query_doc = flat[order], start + order // self.num_bands
            candidates: dict[int, set[tuple[bool, int]]] = {}
            if self._size:
                q, pos = self._keys.lookup(sorted_keys)
                self._add_near(query_doc[q], pos, self._size, self._sigs, sigs, True, candidates)
            q, pos = batch_keys.lookup(sorted_keys)
            doc = query_doc[q]
            earlier = pos < doc  # the later arrival is the candidate duplicate
            self._add_near(doc[earlier], pos[earlier], n, sigs, sigs, False, candidates)
            for i, cands in candidates.items():
                result[i] = self._verify(i, doc_ids, cands, shingle_set)
        return result

    def _add_near(self, doc: np.ndarray, other: np.ndarray, stride: int, other_sigs: np.ndarray, sigs: np.ndarray,
                  in_pool: bool, candidates: dict[int, set[tuple[bool, int]]]) -> None:
        """Put each distinct ``(doc, other)`` pair whose signatures agree enough into ``candidates``.

        A pair found through several bands is kept once before any signature is gathered (``other < stride``).
        """
        pairs = np.unique(doc * stride + other)
        for s in range(0, len(pairs), _PAIR_SLICE):
            d, o = np.divmod(pairs[s:s + _PAIR_SLICE], stride)
            near = np.count_nonzero(other_sigs[o] == sigs[d], axis=1) >= self._min_agree
            for i, j in zip(d[near].tolist(), o[near].tolist()):
                candidates.setdefault(i, set()).add((in_pool, j))

    def _verify(self, i: int, doc_ids: list[str], cands: set[tuple[bool, int]],
                batch_set: Callable[[int], frozenset[str]]) -> NearDuplicate | None:
        best: NearDuplicate | None = None
        for in_pool, j in sorted(cands):
            if in_pool:
                if self._ids[j] == doc_ids[i]:
                    continue  # this very document filtered again
                other, of = self._source(j), self._ids[j]
            else:
                other, of = batch_set(j), doc_ids[j]
            sim = jaccard(batch_set(i), other)
            if sim >= self.threshold and (best is None or (in_pool, sim) > (best.in_pool, best.jaccard)):
                best = NearDuplicate(of, sim, in_pool)
        return best

    def _source(self, pos: int) -> frozenset[str]:
        source = self._sources[pos]
        if isinstance(source, tuple):
            source = text_shingles(source[0], source[1], self.shingle_size)
            self._sources[pos] = source
        return source
