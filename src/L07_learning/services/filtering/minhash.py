"""MinHash signatures of examples (rensa), and their compact text form for the extraction-time cache.

A signature is one row of ``num_perm`` uint32 values over the word shingles of the normalised ``input | output``
pair. The extractor computes it once (``ContentScanner.annotate_many``) so the filter only decodes it; the filter
computes it itself for examples without a trusted cache and for examples whose text it rewrote (PII, secrets).
"""

from __future__ import annotations

import binascii

import numpy as np
from rensa import RMinHash

from ...models.training_example import normalise_text

SEPARATOR = "\u241f"


def shingles(input_norm: str, output_norm: str, size: int) -> list[str]:
    """Word ``size``-grams of normalised input and output (a separator keeps the two sides apart).

    Texts shorter than ``size`` words give one shingle, the whole text, so they match only exact copies.
    """
    words = input_norm.split() + [SEPARATOR] + output_norm.split()
    if len(words) <= size:
        return [" ".join(words)]
    return list(map(" ".join, zip(*(words[i:] for i in range(size)))))


def text_shingles(input_text: str, output_text: str, size: int) -> frozenset[str]:
    """The shingle set of raw (not yet normalised) input and output text."""
    return frozenset(shingles(normalise_text(input_text), normalise_text(output_text), size))


def signatures(docs: list[list[str]] | list[frozenset[str]], num_perm: int, seed: int) -> np.ndarray:
    """``(len(docs), num_perm)`` uint32 MinHash matrix of shingle documents."""
    if not docs:
        return np.empty((0, num_perm), dtype=np.uint32)
    matrix = RMinHash.digest_matrix_from_token_sets(docs, num_perm, seed)
    return np.asarray(matrix.to_rows(), dtype=np.uint32)


def encode(row: np.ndarray) -> str:
    """One signature as base64 text (it lives in ``metadata["scan"]``, which must stay JSON)."""
    return binascii.b2a_base64(row.astype("<u4").tobytes(), newline=False).decode("ascii")


def decode_many(texts: list[str], num_perm: int) -> np.ndarray:
    """Signatures from their base64 form, as one matrix (one join and one ``frombuffer``, not a row at a time)."""
    raw = b"".join(map(binascii.a2b_base64, texts))
    return np.frombuffer(raw, dtype="<u4").reshape(len(texts), num_perm).astype(np.uint32, copy=False)
