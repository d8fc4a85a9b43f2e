"""Secret detectors (contract §5.2 rule 2): cloud keys, tokens, private keys, JWTs, high-entropy credentials.

A secret is never stored in clear (not even in quarantine): ``mask_token`` replaces it with its kind and a short
sha256 prefix; the finding keeps the full sha256 so the leaked credential can be matched when it is rotated.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from typing import Any

import re2

from .findings import DisjointSpans, Finding
from .gate import KeywordGate
from .normalize import Normalised, normalise

SECRET_CODE = "E7111"

# (kind, pattern, group holding the secret value). RE2 (linear time whatever the text) over the skeleton
# (``normalize``): a fullwidth or lookalike key is still a key.
_PATTERN_TEXT: tuple[tuple[str, str, int], ...] = (
    ("private_key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----[\s\S]*?(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|\z)", 0),
    ("aws_access_key_id", r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}\b", 0),
    ("aws_secret_access_key", r"(?i)aws_secret_access_key\s*[=:]\s*[\"']?([A-Za-z0-9/+=]{20,})", 1),
    ("jwt", r"\beyJ[A-Za-z0-9_-]{6,}\.eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{6,}", 0),
    ("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})\b", 0),
    ("slack_token", r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b", 0),
    ("api_key", r"\b(?:sk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}|AIza[0-9A-Za-z_-]{35}|sk_live_[0-9A-Za-z]{20,})\b", 0),
    ("bearer_token", r"(?i)\bbearer\s+([A-Za-z0-9._~+/-]{20,}=*)", 1),
    ("connection_string_password", r"\b[a-z][a-z0-9+]*://[^\s:/@]+:([^\s@/]{4,})@", 1),
)
# They read the skeleton's ASCII bytes (``Normalised.data``).
_PATTERNS: tuple[tuple[str, Any, int], ...] = tuple((k, re2.compile(p.encode()), g) for k, p, g in _PATTERN_TEXT)
# Lower-case literals each pattern needs (same order as _PATTERNS): the regex runs only when one is present.
_KEYWORD_TEXT: tuple[tuple[str, ...], ...] = (
    ("private key",), ("akia", "asia", "agpa", "aida", "aroa"), ("aws_secret_access_key",), ("eyj",),
    ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), ("xox",), ("sk-", "aiza", "sk_live_"), ("bearer",),
    ("://",),
)
_KEYWORDS = tuple(tuple(k.encode() for k in keys) for keys in _KEYWORD_TEXT)
_ASSIGNMENT_KEYWORDS = (b"password", b"passwd", b"pwd", b"secret", b"token", b"key")
_GATE = KeywordGate([*_KEYWORDS, _ASSIGNMENT_KEYWORDS])

# key=value credentials: flagged when the value looks random (entropy) rather than a placeholder word.
_ASSIGNMENT = re2.compile(
    rb"(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|client[_-]?secret|private[_-]?key)\b"
    rb"[\"']?\s*[=:]\s*[\"']?([^\s\"',;]{8,})"
)
# Long random-looking tokens with mixed classes (base64-ish); hex digests (max 4 bits/char) stay below the bar. A match
# always starts a run of token characters (leftmost, greedy), so RE2 needs no lookbehind to keep to whole tokens.
_LONG_TOKEN = re2.compile(rb"[A-Za-z0-9+/_-]{32,}={0,2}")
_PLACEHOLDER_VALUE = re.compile(r"<[^>]+>|\*+|x+|\$\{?\w+\}?|changeme|password|example|redacted|none|null", re.I)
_LOWER, _UPPER, _DIGIT = re.compile(r"[a-z]"), re.compile(r"[A-Z]"), re.compile(r"\d")
# Entropy (and the mixed-classes test) of a longer value is judged on its first characters: the bar is per character,
# and a megabyte-long token must not cost megabyte-long counts.
_ENTROPY_PREFIX = 4096
# More secret-shaped matches than this in one field: the field is reported as one ``secret_flood`` finding over all
# of it (stored masked whole, quarantined), so a text built of millions of token look-alikes costs a bounded scan.
MAX_MATCHES = 1_000
FLOOD_KIND = "secret_flood"


class _Flood(Exception):
    """More than ``MAX_MATCHES`` secret-shaped matches in one field."""


def shannon_entropy(value: str) -> float:
    """Bits per character of ``value``."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


MASK_RE = re.compile(r"<SECRET_MASKED kind=[a-z_]+ sha256=(?P<digest>[0-9a-f]{12})>")
# A text that carries one of our masks held a secret when it was stored (e.g. a PENDING row filtered again after a
# crash): it must be quarantined like the original, so the mask is a finding of its own, kept as it is when masking.
MASKED_KIND = "masked_secret"


def mask_token(kind: str, value: str) -> str:
    """The stored replacement of a secret: kind plus a 12-hex sha256 prefix, never the value.

    The format is chosen so that no detector matches it again (masking is idempotent).
    """
    return f"<SECRET_MASKED kind={kind} sha256={sha256_hex(value)[:12]}>"


def masked_form(kind: str, value: str) -> str:
    """What a secret finding's span becomes in stored text: its mask, or itself when it already is one."""
    return value if kind == MASKED_KIND else mask_token(kind, value)


class SecretScanner:
    """Finds secrets in text.

    Args:
        assignment_entropy: Minimum bits/char for a ``password=...``-style value to count as a credential.
        token_entropy: Minimum bits/char for a bare 32+ character token to count as a credential.
    """

    def __init__(self, assignment_entropy: float = 3.0, token_entropy: float = 4.5) -> None:
        self.assignment_entropy = assignment_entropy
        self.token_entropy = token_entropy

    def masked(self, text: str, field: str) -> list[Finding]:
        """Our own masks in ``text``: secrets that were masked before this text was stored."""
        if "<SECRET_MASKED" not in text:
            return []
        return [Finding("secret", MASKED_KIND, field, m.start(), m.end(), SECRET_CODE, "secret", m.group("digest"))
                for m in MASK_RE.finditer(text)]

    def detect(self, text: str, field: str, norm: Normalised | None = None) -> list[Finding]:
        """Every secret span in ``text`` (the span covers the value only, so masking keeps the context).

        Args:
            norm: ``normalise(text)``, when the caller already has it.
        """
        norm = norm or normalise(text)
        skeleton = norm.text
        found: list[Finding] = []
        # Already-masked secrets are not secrets: never report (and re-mask) our own tokens.
        taken = DisjointSpans([m.span() for m in MASK_RE.finditer(text)])

        matches = 0

        def add(kind: str, s: int, e: int) -> None:
            nonlocal matches
            matches += 1
            if matches > MAX_MATCHES:
                raise _Flood
            s, e = norm.span(s, e)
            if not taken.claim(s, e):
                return
            found.append(Finding("secret", kind, field, s, e, SECRET_CODE, "secret", sha256_hex(text[s:e])))

        data = norm.data
        runs = _GATE.rules(data)
        try:
            for i, (kind, pattern, group) in enumerate(_PATTERNS):
                if i in runs:
                    for m in pattern.finditer(data):
                        add(kind, m.start(group), m.end(group))
            if len(_PATTERNS) in runs:
                for m in _ASSIGNMENT.finditer(data):
                    value = skeleton[m.start(1):m.end(1)]
                    if (not _PLACEHOLDER_VALUE.fullmatch(value)
                            and shannon_entropy(value[:_ENTROPY_PREFIX]) >= self.assignment_entropy):
                        add("credential_assignment", m.start(1), m.end(1))
            for m in _LONG_TOKEN.finditer(data):
                value = skeleton[m.start():min(m.end(), m.start() + _ENTROPY_PREFIX)]
                mixed = all(p.search(value) for p in (_LOWER, _UPPER, _DIGIT))
                if mixed and shannon_entropy(value) >= self.token_entropy:
                    add("high_entropy_token", m.start(), m.end())
        except _Flood:
            return [Finding("secret", FLOOD_KIND, field, 0, len(text), SECRET_CODE, "secret", sha256_hex(text))]
        return found
