"""The text the detectors match against: NFKC plus a confusables skeleton, with offsets back to the original text.

Fullwidth forms (``ＡＫＩＡ…``, ``PWNED：``, ``john＠example.com``), mathematical and Cyrillic/Greek lookalikes
(``ѕk-…``, ``АKIA…``), non-ASCII digits and invisible or combining marks spliced into a word would each let a secret,
a trigger or an e-mail address slip past patterns written for ASCII. Every detector therefore matches the skeleton
and maps its spans back, so masking and redaction still cut the original text.

The skeleton is per character: NFKC (compatibility forms), then non-ASCII decimal digits to ASCII digits, Unicode
spaces to ``" "``, combining marks and format characters (zero-width, bidi controls) dropped, and every remaining
non-ASCII character that Unicode's confusables table (UTS #39, via ``confusable-homoglyphs``, a small pure-Python
package that ships the table as data) lists as a lookalike of a single ASCII character replaced by it. The full
UTS #39 skeleton is not used: it also rewrites ASCII (``m`` -> ``rn``), which would break every ASCII pattern; only
non-ASCII characters are folded. The invisible-Unicode rule reads the original text, since the skeleton drops them.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_DROP_CATEGORIES = frozenset({"Mn", "Me", "Cf"})
# Longer non-ASCII texts are folded with numpy (one pass over code points) instead of ``str.translate``, whose
# per-character dictionary lookups made a megabyte of lookalikes cost half a second.
_VECTOR_MIN = 4096


@lru_cache(maxsize=1)
def _ascii_lookalikes() -> dict[str, str]:
    """Non-ASCII character -> the single ASCII character the confusables table says it looks like."""
    from confusable_homoglyphs.confusables import confusables_data  # loads the table (~40 ms) on first non-ASCII text

    table: dict[str, str] = {}
    for char, entries in confusables_data.items():
        if char.isascii():
            # The table lists each ASCII character's lookalikes under it too: fold every one of them to it.
            for e in entries:
                other = e["c"]
                if len(char) == 1 and len(other) == 1 and not other.isascii() and char.isprintable():
                    table.setdefault(other, char)
        elif len(char) == 1:
            for e in entries:
                other = e["c"]
                if len(other) == 1 and other.isascii() and other.isprintable():
                    table.setdefault(char, other)
                    break
    return table


@lru_cache(maxsize=65536)
def fold_char(ch: str) -> str:
    """The skeleton of one non-ASCII character (may be empty, or longer than one character)."""
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        if c.isascii():
            out.append(c)
        elif unicodedata.category(c) in _DROP_CATEGORIES:
            continue
        elif c.isspace():
            out.append(" ")
        elif (d := unicodedata.decimal(c, None)) is not None:
            out.append(str(d))
        else:
            out.append(_ascii_lookalikes().get(c, c))
    return "".join(out)


@dataclass(frozen=True)
class Normalised:
    """A text's skeleton and the way back to the original's offsets.

    ``data`` is the skeleton as ASCII bytes, each other character one ``?``: what the RE2 patterns read. Offsets are
    the same as in ``text``, and to those patterns (ASCII classes, word boundaries and spaces; none names ``?``) a
    ``?`` is what any non-ASCII character is, while bytes spare RE2 re-encoding the text and converting offsets per
    call. ``dropped``: some character (zero-width, bidi control, combining mark) has no skeleton at all.
    ``starts``/``origins``/``lengths`` list, for each original character whose skeleton is not exactly one character
    long, where its skeleton starts, where it is in the original, and how long the skeleton is; empty when every
    character kept its length (offsets are then the same in both texts).
    """

    original: str
    text: str
    data: bytes = b""
    dropped: bool = False
    starts: tuple[int, ...] = ()
    origins: tuple[int, ...] = ()
    lengths: tuple[int, ...] = ()

    def _orig(self, n: int) -> tuple[int, bool]:
        i = bisect_right(self.starts, n) - 1
        if i < 0:
            return n, False
        start, origin, length = self.starts[i], self.origins[i], self.lengths[i]
        if n < start + length:
            return origin, True
        return origin + 1 + (n - start - length), False

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The original text's span of the skeleton's ``[start, end)``."""
        if not self.starts:
            return start, end
        s, _ = self._orig(start)
        if end <= start:
            return s, s
        e, _ = self._orig(end - 1)
        return s, max(e + 1, s)


def normalise(text: str) -> Normalised:
    """``text``'s skeleton (NFKC + confusables, see the module docstring); ASCII text is returned as it is."""
    if text.isascii():
        return Normalised(text, text, text.encode("ascii"))
    if len(text) > _VECTOR_MIN:
        return _normalise_vector(text)
    table: dict[int, str] = {}
    resized: list[str] = []
    for ch in set(text):
        if ch.isascii():
            continue
        folded = fold_char(ch)
        if folded != ch:
            table[ord(ch)] = folded
            if len(folded) != 1:
                resized.append(ch)
    skeleton = text.translate(table) if table else text
    data = skeleton.encode("ascii", "replace")
    dropped = any(table[ord(ch)] == "" for ch in resized)
    if not resized:
        return Normalised(text, skeleton, data)
    starts, origins, lengths = [], [], []
    shift = 0
    for m in re.finditer("[" + "".join(map(re.escape, resized)) + "]", text):
        o = m.start()
        length = len(table[ord(text[o])])
        starts.append(o + shift)
        origins.append(o)
        lengths.append(length)
        shift += length - 1
    return Normalised(text, skeleton, data, dropped, tuple(starts), tuple(origins), tuple(lengths))


def _normalise_vector(text: str) -> Normalised:
    """``normalise`` for long non-ASCII text, on arrays of code points (same result)."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    high = codes >= 128
    seen = np.zeros(int(codes.max()) + 1, dtype=bool)
    seen[codes[high]] = True
    distinct = np.flatnonzero(seen)
    folds = [fold_char(chr(c)) for c in distinct.tolist()]
    lengths_of = np.fromiter((len(f) for f in folds), dtype=np.int64, count=len(folds))
    if all(f == chr(c) for f, c in zip(folds, distinct.tolist())):
        return Normalised(text, text, text.encode("ascii", "replace"))
    if bool(np.all(lengths_of == 1)):
        # Every character folds to one character (the usual case): offsets stay, one table lookup per character.
        lut = np.arange(int(distinct[-1]) + 1, dtype=np.uint32)
        lut[distinct] = np.fromiter((ord(f) for f in folds), dtype=np.uint32, count=len(folds))
        out = lut[codes]
        return Normalised(text, _decode(out), np.where(out < 128, out, 63).astype(np.uint8).tobytes())
    slot = np.searchsorted(distinct, codes)  # index into ``distinct`` (meaningful where ``high``)
    slot[~high] = 0
    lens = np.where(high, lengths_of[slot], 1)
    width = max(1, int(lengths_of.max()))
    table = np.zeros((len(folds), width), dtype=np.uint32)
    for i, f in enumerate(folds):
        if f:
            table[i, :len(f)] = np.frombuffer(f.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    ends = np.cumsum(lens)
    starts_all = ends - lens
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint32)
    low = ~high
    out[starts_all[low]] = codes[low]
    for k in range(width):
        sel = high & (lens > k)
        out[starts_all[sel] + k] = table[slot[sel], k]
    skeleton = _decode(out)
    data = np.where(out < 128, out, 63).astype(np.uint8).tobytes()
    resized = np.flatnonzero(lens != 1)
    dropped = bool(np.any(lens == 0))
    if not len(resized):
        return Normalised(text, skeleton, data, dropped)
    return Normalised(text, skeleton, data, dropped, tuple(starts_all[resized].tolist()), tuple(resized.tolist()),
                      tuple(lens[resized].tolist()))


def _decode(out: np.ndarray) -> str:
    """Code points back to ``str`` by the narrowest codec that holds them (UTF-32 decoding is the slow one)."""
    top = int(out.max()) if len(out) else 0
    if top < 256:
        return out.astype(np.uint8).tobytes().decode("latin-1")
    if top < 0xD800:
        return out.astype("<u2").tobytes().decode("utf-16-le")
    return out.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")
