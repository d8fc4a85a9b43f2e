"""PII detectors (contract §5.2 rule 3, §7.4, §8 #18) and typed-placeholder redaction.

Phone numbers need separators, card numbers must pass Luhn and IBANs the ISO 7064 mod-97 check, so token counts,
byte sizes, timestamps and ids in ordinary traces are not mistaken for PII.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import re2

from .findings import DisjointSpans, Finding
from .normalize import Normalised, normalise

PII_CODE = "E7112"

# Every repetition is bounded (RFC 5321: local part <= 64, label <= 63, a handful of labels) and a match can only start
# where a run of address characters starts (``%`` included: a run of ``%`` was a quadratic retry per character).
_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,63}\b")
# Separators are required between groups (§8 #18): a bare run of digits is never a phone number, and a phone
# number is not a slice of a longer run of digit groups (a card number that failed Luhn, an account number).
_PHONE = re.compile(
    r"(?<![\w.+])(?<!\d[ -])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w.]|[ -]\d)"
)
_CARD = re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_NINO = re.compile(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.])")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")
# Where PII can be at all, found in one linear RE2 pass: every detector's pattern without its lookarounds and word
# boundaries (so each is a superset of its detector), joined. Each hit of this union, widened by ``_WINDOW`` (longer
# than any PII match and the two characters its lookahead reads), bounds where the exact patterns (Python ``re``, for
# their lookarounds) run: a true match starts inside some union hit (the union's leftmost hits leave no candidate
# uncovered), so the windows hold every one of them, and ordinary text costs one RE2 pass.
# Counted repetitions are loosened to ``+`` (a superset still): RE2's DFA would otherwise track every overlapping start
# inside a counted window and, on text built for it, run out of memory and fall back to a slow simulation.
_CANDIDATES = re2.compile(
    # digit runs of 8+ digits (cards, SSNs, phones with spaces or hyphens), IBAN, NINO, e-mail, dotted numbers
    # (IPv4, phones with dots), IPv6, any phone shape: each as short as its detector's shortest match allows, so
    # ordinary text (``Task 12``) opens no window.
    rb"(?:\d[ -]?){7}(?:\d[ -]?)*\d|[A-Z][A-Z]\d\d[ A-Z0-9]{11,}|[A-Z][A-Z] ?\d\d ?\d\d ?\d\d ?[A-D]"
    rb"|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z][A-Za-z]+"
    rb"|\d+\.\d+\.\d+(?:\.\d+)*|(?:[0-9A-Fa-f]+:){7}[0-9A-Fa-f]+"
    rb"|(?:\+\d+[ .-]?)?(?:\(\d+\)[ .-]?|\d+[ .-])\d+[ .-]\d+"
)
# A window runs past its candidate by the longest PII match other than an e-mail address (an IBAN: 64) plus the two
# characters a lookahead reads, or by the longest address (64 + 1 + 9 labels of 63 + ...) when an ``@`` follows
# within reach of the candidate (an address's ``@`` is at most 65 characters after its start).
_WINDOW = 80
_EMAIL_WINDOW = 720
# A field whose candidates span more than this, or that yields more matches than ``MAX_MATCHES``, is not scanned
# match by match: it is reported as one ``pii_flood`` finding over the whole field, so it is stored fully redacted
# and quarantined (content_rules.Pii). Bounds the per-field cost whatever the text; ordinary text is far below both.
MAX_WINDOW_CHARS = 200_000
MAX_MATCHES = 2_000
FLOOD_KIND = "pii_flood"


def _windows(data: bytes) -> list[tuple[int, int]] | None:
    """Disjoint ``[start, end)`` ranges of the text that hold every possible PII match (None: over the caps)."""
    out: list[tuple[int, int]] = []
    size = len(data)
    total = 0
    for n, m in enumerate(_CANDIDATES.finditer(data)):
        if n >= MAX_MATCHES:
            return None
        s, e = m.start(), m.end()
        reach = _EMAIL_WINDOW if data.find(b"@", s, e + _WINDOW) >= 0 else _WINDOW
        e = min(size, e + reach)
        if out and s <= out[-1][1]:
            total += max(0, e - out[-1][1])
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            total += e - s
            out.append((s, e))
        if total > MAX_WINDOW_CHARS:
            return None
    return out


def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a digit string (card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """ISO 13616 IBAN check: move the first four characters to the end, letters to numbers, mod 97 == 1."""
    s = candidate.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    try:
        number = int("".join(str(int(c, 36)) for c in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


@dataclass(frozen=True)
class _Detector:
    kind: str
    pattern: re.Pattern[str]

    def valid(self, match: str) -> bool:
        if self.kind == "credit_card":
            digits = re.sub(r"\D", "", match)
            return 13 <= len(digits) <= 19 and luhn_ok(digits)
        if self.kind == "iban":
            return iban_ok(match)
        return True


# Order matters: longer structured ids first, so a card number is not also reported as a phone number.
_DETECTORS = (
    _Detector("credit_card", _CARD),
    _Detector("iban", _IBAN),
    _Detector("ssn", _SSN),
    _Detector("national_id", _NINO),
    _Detector("email", _EMAIL),
    _Detector("ip_address", _IPV4),
    _Detector("ip_address", _IPV6),
    _Detector("phone", _PHONE),
)

PLACEHOLDER = {
    "credit_card": "CARD",
    "iban": "IBAN",
    "ssn": "SSN",
    "national_id": "NATIONAL_ID",
    "email": "EMAIL",
    "ip_address": "IP",
    "phone": "PHONE",
    "name": "NAME",
    FLOOD_KIND: "PII_FLOOD",
}


class PIIDetector:
    """Finds PII spans in text.

    Args:
        custom_names: Literal names (people, customers) to treat as PII, matched on word boundaries, any case.
    """

    def __init__(self, custom_names: list[str] | None = None) -> None:
        names = sorted({normalise(n.strip()).text for n in (custom_names or []) if n.strip()})
        self._name_keys = tuple(n.casefold() for n in names)
        self._names = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b", re.I) if names else None

    def detect(self, text: str, field: str, norm: Normalised | None = None) -> list[Finding]:
        """Every non-overlapping PII span in ``text`` (matched on its skeleton, see ``normalize``).

        Args:
            norm: ``normalise(text)``, when the caller already has it.
        """
        norm = norm or normalise(text)
        skeleton = norm.text
        found: list[Finding] = []
        taken = DisjointSpans()
        windows = _windows(norm.data)
        if windows is None:
            return [Finding("pii", FLOOD_KIND, field, 0, len(text), PII_CODE, "pii")]
        matches = 0
        for det in _DETECTORS:
            for ws, we in windows:
                for m in det.pattern.finditer(skeleton, ws, we):
                    matches += 1
                    if matches > MAX_MATCHES:
                        return [Finding("pii", FLOOD_KIND, field, 0, len(text), PII_CODE, "pii")]
                    if not det.valid(m.group()):
                        continue
                    s, e = norm.span(m.start(), m.end())
                    if taken.claim(s, e):
                        found.append(Finding("pii", det.kind, field, s, e, PII_CODE, "pii"))
        # Names last, so a name inside an e-mail address does not hide the address.
        if self._names is not None:
            folded = skeleton.casefold()
            if any(k in folded for k in self._name_keys):
                for m in self._names.finditer(skeleton):
                    s, e = norm.span(m.start(), m.end())
                    if taken.claim(s, e):
                        found.append(Finding("pii", "name", field, s, e, PII_CODE, "pii"))
        return found


class Placeholders:
    """Numbers PII values per type across the fields of one example: the same value keeps the same token."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], str] = {}
        self._count: dict[str, int] = {}

    def token(self, kind: str, value: str) -> str:
        key = (kind, value.strip().lower())
        if key not in self._seen:
            label = PLACEHOLDER.get(kind, kind.upper())
            self._count[label] = self._count.get(label, 0) + 1
            self._seen[key] = f"<{label}_{self._count[label]}>"
        return self._seen[key]
