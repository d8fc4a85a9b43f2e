"""One detector hit: what was found, where, and which rule and error code it maps to."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Finding:
    """A detector hit inside one text field of an example.

    Attributes:
        category: ``secret``, ``poisoning`` or ``pii``.
        kind: Detector name, e.g. ``aws_access_key_id``, ``prompt_injection``, ``email``.
        field: The example field that holds the hit (``input_text``, ``output_text``, ...).
        start: Start offset of the span to mask or redact, in that field's text.
        end: End offset (exclusive).
        code: The contract's error code for this kind (E7100, E7102, E7103, E7111, E7112, E7113).
        reason: Reason recorded with the filter decision.
        digest: sha256 of the matched secret (secrets only), so a masked secret can still be matched to a rotation.
    """

    category: str
    kind: str
    field: str
    start: int
    end: int
    code: str
    reason: str
    digest: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        return cls(**data)


def replace_spans(text: str, spans: list[tuple[int, int, str]]) -> str:
    """Replace non-overlapping ``(start, end, replacement)`` spans; overlapping later spans are skipped."""
    if not spans:
        return text
    out: list[str] = []
    pos = 0
    for start, end, repl in sorted(spans, key=lambda s: (s[0], -s[1])):
        if start < pos:
            continue
        out.append(text[pos:start])
        out.append(repl)
        pos = end
    out.append(text[pos:])
    return "".join(out)


class DisjointSpans:
    """Non-overlapping ``[start, end)`` spans, kept sorted: ``claim`` checks and takes a span in O(log n), so a text
    with tens of thousands of hits costs no more per hit than a text with one (a list scan per hit was quadratic)."""

    def __init__(self, spans: list[tuple[int, int]] | None = None) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []
        for s, e in spans or ():
            self.claim(s, e)

    def claim(self, start: int, end: int) -> bool:
        """Take ``[start, end)`` unless it overlaps a span already taken; True when taken."""
        i = bisect_right(self._starts, start)
        if i and self._ends[i - 1] > start:
            return False
        if i < len(self._starts) and self._starts[i] < end:
            return False
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        return True
