"""PII detectors (contract §5.2 rule 3, §7.4, §8 #18) and typed-placeholder redaction.

Phone numbers need separators, card numbers must pass Luhn and IBANs the ISO 7064 mod-97 check, so token counts,
byte sizes, timestamps and ids in ordinary traces are not mistaken for PII.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .findings import Finding

PII_CODE = "E7112"

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
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
# Cheap pre-checks: numeric ids need a run of digits with at most separators between them, e-mails an '@'.
_MAYBE_NUMBER = re.compile(r"\d[\d ().+-]{5,}\d|\d{1,3}\.\d{1,3}\.|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:")


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
}


class PIIDetector:
    """Finds PII spans in text.

    Args:
        custom_names: Literal names (people, customers) to treat as PII, matched on word boundaries, any case.
    """

    def __init__(self, custom_names: list[str] | None = None) -> None:
        names = [n for n in (custom_names or []) if n.strip()]
        self._names = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b", re.I) if names else None

    def detect(self, text: str, field: str) -> list[Finding]:
        """Every non-overlapping PII span in ``text``."""
        found: list[Finding] = []
        taken: list[tuple[int, int]] = []
        maybe_number = _MAYBE_NUMBER.search(text) is not None
        maybe_email = "@" in text
        if maybe_number or maybe_email:
            for det in _DETECTORS:
                if not (maybe_email if det.kind == "email" else maybe_number):
                    continue
                for m in det.pattern.finditer(text):
                    s, e = m.start(), m.end()
                    if any(s < te and ts < e for ts, te in taken) or not det.valid(m.group()):
                        continue
                    taken.append((s, e))
                    found.append(Finding("pii", det.kind, field, s, e, PII_CODE, "pii"))
        # Names last, so a name inside an e-mail address does not hide the address.
        if self._names is not None:
            for m in self._names.finditer(text):
                if not any(m.start() < te and ts < m.end() for ts, te in taken):
                    found.append(Finding("pii", "name", field, m.start(), m.end(), PII_CODE, "pii"))
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
