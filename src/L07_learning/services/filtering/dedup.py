"""Near-duplicate detection: MinHash LSH over word shingles (``rensa``), verified by exact shingle Jaccard.

LSH only proposes candidates; every reported pair is checked against the exact Jaccard of the two shingle sets, so
the threshold (0.8 by default, contract §5.2 rule 4) is exact and the answer does not depend on hash luck beyond the
LSH candidate recall. With 64 permutations in 16 bands of 4 rows, a pair at Jaccard 0.8 becomes a candidate with
probability 1 - (1 - 0.8**4)**16 > 0.9997.
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
    return list(map(" ".join, zip(*(words[i:] for i in range(size)))))


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

    ``find`` indexes a batch provisionally; ``keep`` then commits the documents that stay in the pool and drops the
    rest, so a batch is hashed and inserted once.

    Args:
        threshold: Jaccard at or above which two documents are near-duplicates.
        num_perm: MinHash permutations.
        num_bands: LSH bands (``num_perm`` must be divisible by it).
        seed: MinHash seed (fixed, so candidate sets are reproducible).
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 64, num_bands: int = 16, seed: int = 42) -> None:
        if num_perm % num_bands:
            raise ValueError(f"num_perm {num_perm} is not divisible by num_bands {num_bands}")
        self.threshold = threshold
        self.num_perm = num_perm
        self.num_bands = num_bands
        self.seed = seed
        self._lsh = RMinHashLSH(threshold=threshold, num_perm=num_perm, num_bands=num_bands)
        self._docs: dict[int, tuple[str, list[str]]] = {}
        self._sets: dict[int, frozenset[str]] = {}
        self._known: set[str] = set()
        self._next_key = 0
        self._pending: list[tuple[int, str, list[str]]] = []

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._known

    def add(self, doc_ids: list[str], docs: list[list[str]]) -> None:
        """Add documents (shingle lists) to the pool; ids already present are skipped."""
        pairs = [(i, d) for i, d in zip(doc_ids, docs) if i not in self._known]
        if not pairs:
            return
        matrix = RMinHash.digest_matrix_from_token_sets([d for _, d in pairs], self.num_perm, self.seed)
        self._lsh.insert_matrix(matrix, self._next_key)
        for offset, (doc_id, doc) in enumerate(pairs):
            self._docs[self._next_key + offset] = (doc_id, doc)
            self._known.add(doc_id)
        self._next_key += len(pairs)

    def _set(self, key: int) -> frozenset[str]:
        if key not in self._sets:
            self._sets[key] = frozenset(self._docs[key][1])
        return self._sets[key]

    def find(self, doc_ids: list[str], docs: list[list[str]]) -> list[NearDuplicate | None]:
        """For each document, the earlier one it near-duplicates: in the pool, or earlier in this batch.

        The batch stays indexed provisionally until ``keep`` says which documents join the pool.
        """
        self.keep([])
        n = len(docs)
        if n == 0:
            return []
        start = self._next_key
        matrix = RMinHash.digest_matrix_from_token_sets(docs, self.num_perm, self.seed)
        flags = self._lsh.insert_matrix_and_query_duplicate_flags(matrix, start)
        self._next_key += n
        self._pending = [(start + i, doc_ids[i], docs[i]) for i in range(n)]
        result: list[NearDuplicate | None] = [None] * n
        flagged = [i for i in range(n) if flags[i]]
        if not flagged:
            return result
        batch_sets: dict[int, frozenset[str]] = {}

        def batch_set(i: int) -> frozenset[str]:
            if i not in batch_sets:
                batch_sets[i] = frozenset(docs[i])
            return batch_sets[i]

        hashes = RMinHash.from_token_sets([docs[i] for i in flagged], self.num_perm, self.seed)
        for i, candidates in zip(flagged, self._lsh.query_all(hashes)):
            best: NearDuplicate | None = None
            for key in candidates:
                if key < start:
                    if key not in self._docs or self._docs[key][0] == doc_ids[i]:
                        continue  # dropped earlier, or this very document filtered again
                    j, of, in_pool = jaccard(batch_set(i), self._set(key)), self._docs[key][0], True
                elif key < start + i:
                    # Only an earlier arrival makes this one the duplicate (contract §5.2 rule 4).
                    j, of, in_pool = jaccard(batch_set(i), batch_set(key - start)), doc_ids[key - start], False
                else:
                    continue
                if j >= self.threshold and (best is None or (in_pool, j) > (best.in_pool, best.jaccard)):
                    best = NearDuplicate(of, j, in_pool)
            result[i] = best
        return result

    def keep(self, doc_ids: list[str] | set[str]) -> None:
        """Commit the documents of the last ``find`` batch named in ``doc_ids`` to the pool; drop the others."""
        keep = set(doc_ids)
        for key, doc_id, doc in self._pending:
            if doc_id in keep and doc_id not in self._known:
                self._docs[key] = (doc_id, doc)
                self._known.add(doc_id)
            else:
                self._lsh.remove(key)
        self._pending = []
