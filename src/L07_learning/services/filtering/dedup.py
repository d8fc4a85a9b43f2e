"""Near-duplicate detection: MinHash LSH over word shingles (``rensa``), verified by exact shingle Jaccard.

LSH only proposes candidates; every reported pair is checked against the exact Jaccard of the two shingle sets, so
the threshold (0.8 by default, contract §5.2 rule 4) is exact and the answer does not depend on hash luck beyond the
LSH candidate recall. With 128 permutations in 32 bands of 4 rows, a pair at Jaccard 0.8 becomes a candidate with
probability 1 - (1 - 0.8**4)**32 > 0.9999.
"""

from __future__ import annotations

from dataclasses import dataclass

from rensa import RMinHash, RMinHashLSH

SEPARATOR = "\u241f"


def shingles(input_norm: str, output_norm: str, size: int) -> list[str]:
    """Word ``size``-grams of normalised input and output (a separator keeps the two sides apart).

    Texts shorter than ``size`` words give one shingle, the whole text, so they match only exact copies.
    """
    words = input_norm.split() + [SEPARATOR] + output_norm.split()
    if len(words) <= size:
        return [" ".join(words)]
    return [" ".join(words[i:i + size]) for i in range(len(words) - size + 1)]


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    """Exact Jaccard similarity of two shingle sets."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


@dataclass(frozen=True)
class NearDuplicate:
    """The earlier document a later one duplicates."""

    of: str
    jaccard: float
    in_pool: bool


class NearDuplicateIndex:
    """A growing pool of documents plus batch queries against it and within the batch.

    Args:
        threshold: Jaccard at or above which two documents are near-duplicates.
        num_perm: MinHash permutations.
        num_bands: LSH bands (``num_perm`` must be divisible by it).
        seed: MinHash seed (fixed, so candidate sets are reproducible).
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, num_bands: int = 32, seed: int = 42) -> None:
        if num_perm % num_bands:
            raise ValueError(f"num_perm {num_perm} is not divisible by num_bands {num_bands}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.num_bands = num_bands
        self.seed = seed
        self._lsh = RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=num_bands)
        self._ids: list[str] = []
        self._sets: list[frozenset[str]] = []
        self._known: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._known

    def add(self, doc_ids: list[str], docs: list[list[str]]) -> None:
        """Add documents (shingle lists) to the pool; ids already present are skipped."""
        pairs = [(i, d) for i, d in zip(doc_ids, docs) if i not in self._known]
        if not pairs:
            return
        matrix = RMinHash.digest_matrix_from_token_sets([d for _, d in pairs], self.num_perm, self.seed)
        self._lsh.insert_matrix(matrix, len(self._ids))
        for doc_id, doc in pairs:
            self._ids.append(doc_id)
            self._sets.append(frozenset(doc))
            self._known.add(doc_id)

    def find(self, doc_ids: list[str], docs: list[list[str]]) -> list[NearDuplicate | None]:
        """For each document, the earlier one it near-duplicates: in the pool, or earlier in this batch.

        The batch itself is not added to the pool; call ``add`` for the documents that should stay.
        """
        n = len(docs)
        if n == 0:
            return []
        matrix = RMinHash.digest_matrix_from_token_sets(docs, self.num_perm, self.seed)
        batch_lsh = RMinHashLSH(threshold=self.threshold, num_perm=self.num_perm, num_bands=self.num_bands)
        batch_flags = batch_lsh.insert_matrix_and_query_duplicate_flags(matrix, 0)
        pool_flags = self._lsh.query_duplicate_flags_matrix(matrix) if self._ids else [False] * n
        flagged = [i for i in range(n) if batch_flags[i] or pool_flags[i]]
        result: list[NearDuplicate | None] = [None] * n
        if not flagged:
            return result
        sets = {i: frozenset(docs[i]) for i in flagged}
        hashes = RMinHash.from_token_sets([docs[i] for i in flagged], self.num_perm, self.seed)
        for i, mh in zip(flagged, hashes):
            best: NearDuplicate | None = None
            if pool_flags[i]:
                for key in self._lsh.query(mh):
                    j = jaccard(sets[i], self._sets[key])
                    if j >= self.threshold and (best is None or j > best.jaccard):
                        best = NearDuplicate(self._ids[key], j, True)
            if best is None and batch_flags[i]:
                for key in batch_lsh.query(mh):
                    # Only an earlier arrival makes this one the duplicate (contract §5.2 rule 4).
                    if key >= i or key not in sets:
                        continue
                    j = jaccard(sets[i], sets[key])
                    if j >= self.threshold and (best is None or j > best.jaccard):
                        best = NearDuplicate(doc_ids[key], j, False)
            result[i] = best
        return result
