"""Leak-free stratified splits (contract §5.4) and the version checksum (§4.3).

Examples that share an ``execution_id``, a ``content_hash`` or a near-duplicate cluster form one group, and a group
always lands in one split. Strata are (domain, task_type); small strata merge into (domain, *) and then (*, *).
Everything is seeded, so the same examples, ratios and seed give the same split on every machine.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter, defaultdict

from ...models.training_example import TrainingExample, compute_content_hash, normalise_text
from ..filtering.dedup import NearDuplicateIndex
from ..filtering.minhash import shingles

SPLIT_ORDER = ("train", "val", "test")
MIN_STRATUM = 10
"""Strata below this size are merged upward (contract §5.4)."""
_FILL_ORDER = ("test", "val")


def member_hash(ex: TrainingExample) -> str:
    """The per-example sha256 used for content addressing (the contract's normalised content hash)."""
    return compute_content_hash(ex.input_text, ex.output_text)


def version_checksum(members: list[tuple[str, str, str]]) -> str:
    """Root hash of a version: sha256 over the ordered ``(split, example_id, content_hash)`` lines."""
    h = hashlib.sha256()
    for split, example_id, content_hash in members:
        h.update(f"{split}\t{example_id}\t{content_hash}\n".encode())
    return h.hexdigest()


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def leakage_groups(examples: list[TrainingExample], jaccard: float = 0.8, shingle_size: int = 3) -> list[int]:
    """Group id per example: shared execution_id, content_hash or near-duplicate cluster give the same id."""
    n = len(examples)
    uf = _UnionFind(n)
    first: dict[tuple[str, str], int] = {}
    for i, ex in enumerate(examples):
        keys = [("h", member_hash(ex))]
        if ex.execution_id:
            keys.append(("e", ex.execution_id))
        for key in keys:
            if key in first:
                uf.union(first[key], i)
            else:
                first[key] = i
    if n > 1:
        index = NearDuplicateIndex(threshold=jaccard)
        ids = [str(i) for i in range(n)]
        docs = [shingles(normalise_text(ex.input_text), normalise_text(ex.output_text), shingle_size) for ex in examples]
        for i, dup in enumerate(index.find(ids, docs)):
            if dup is not None:
                uf.union(int(dup.of), i)
    return [uf.find(i) for i in range(n)]


def strata(examples: list[TrainingExample]) -> list[str]:
    """Stratum label per example, with small strata merged into (domain, *) and then (*, *)."""
    full = [f"{ex.domain}|{ex.task_type}" for ex in examples]
    counts = Counter(full)
    level1 = [s if counts[s] >= MIN_STRATUM else f"{s.split('|', 1)[0]}|*" for s in full]
    counts1 = Counter(level1)
    return [s if counts1[s] >= MIN_STRATUM else "*|*" for s in level1]


def _rng(seed: int, stratum: str) -> random.Random:
    # A string seed hashes with sha512 in CPython's Random, independent of PYTHONHASHSEED.
    return random.Random(f"{seed}:{stratum}")


def _targets(n: int, ratios: dict[str, float]) -> dict[str, int]:
    """Examples per non-train split: round(n x ratio) (half up), at least 1 each when n >= 3."""
    out = {}
    for split, ratio in ratios.items():
        if split == "train":
            continue
        t = math.floor(n * ratio + 0.5)
        if n >= 3:
            t = max(t, 1)
        out[split] = t
    return out


def assign_splits(examples: list[TrainingExample], ratios: dict[str, float], seed: int,
                  jaccard: float = 0.8) -> dict[str, str]:
    """A fresh split: ``{example_id: split}``."""
    groups = leakage_groups(examples, jaccard)
    labels = strata(examples)
    members_of: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members_of[g].append(i)
    by_stratum: dict[str, dict[int, list[int]]] = defaultdict(dict)
    for g, idxs in members_of.items():
        # A group that spans strata is placed by its member with the smallest id (independent of input order).
        anchor = min(idxs, key=lambda i: examples[i].example_id)
        by_stratum[labels[anchor]][g] = idxs
    out: dict[str, str] = {}
    for stratum in sorted(by_stratum):
        members = by_stratum[stratum]
        n = sum(len(v) for v in members.values())
        targets = _targets(n, ratios)
        filled = {k: 0 for k in targets}
        # Groups are ordered by their smallest example id before the seeded shuffle, so the split depends on the
        # examples and the seed, not on the order they were given in.
        order = sorted(members, key=lambda g: min(examples[i].example_id for i in members[g]))
        _rng(seed, stratum).shuffle(order)
        for g in order:
            # Test first, then val: the evaluation splits get their share before train takes the rest.
            split = next((k for k in _FILL_ORDER if k in targets and filled[k] < targets[k]), "train")
            if split != "train":
                filled[split] += len(members[g])
            for i in members[g]:
                out[examples[i].example_id] = split
    return out


def extend_splits(existing: list[TrainingExample], existing_split: dict[str, str], new: list[TrainingExample],
                  ratios: dict[str, float], seed: int, jaccard: float = 0.8) -> dict[str, str]:
    """Splits for ``new`` examples joining a version (contract §4.3, MINOR): existing members keep their split.

    A new example grouped with an existing member (same execution, same content, near-duplicate) follows that member;
    other groups fill the split with the largest deficit toward the ratios in their stratum.
    """
    combined = existing + new
    groups = leakage_groups(combined, jaccard)
    labels = strata(combined)
    n_old = len(existing)
    forced: dict[int, str] = {}
    for i in range(n_old):
        forced.setdefault(groups[i], existing_split[existing[i].example_id])
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for i in range(n_old):
        counts[labels[i]][existing_split[existing[i].example_id]] += 1
    new_groups: dict[int, list[int]] = defaultdict(list)
    out: dict[str, str] = {}
    for i in range(n_old, len(combined)):
        g = groups[i]
        if g in forced:
            out[combined[i].example_id] = forced[g]
            counts[labels[i]][forced[g]] += 1
        else:
            new_groups[g].append(i)
    totals: dict[str, int] = defaultdict(int)
    for lbl in labels:
        totals[lbl] += 1
    order = sorted(new_groups, key=lambda g: min(combined[i].example_id for i in new_groups[g]))
    _rng(seed, "extend").shuffle(order)
    for g in order:
        stratum = labels[new_groups[g][0]]
        n = totals[stratum]
        deficits = {s: ratios.get(s, 0.0) * n - counts[stratum][s] for s in SPLIT_ORDER if s in ratios}
        split = max(deficits, key=lambda s: (deficits[s], -SPLIT_ORDER.index(s)))
        for i in new_groups[g]:
            out[combined[i].example_id] = split
            counts[stratum][split] += 1
    return out
