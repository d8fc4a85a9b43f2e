"""Poisoning detectors (contract §5.2 rules 2 and 9): injection phrasing, backdoor triggers, chat-template control
tokens, invisible or bidirectional Unicode, SQL injection, privilege escalation, malware signatures, and a batch-level
check for rare tokens that co-occur with one output (the shape of a planted backdoor)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import islice

import re2

from .findings import Finding
from .gate import KeywordGate
from .normalize import Normalised, normalise

# Every pattern runs on RE2 (time linear in the text whatever the text: no backtracking), over the text's
# NFKC/confusables skeleton (``normalize``), so fullwidth or lookalike letters do not hide a hit. ``_SP`` is what SQL
# accepts between keywords: whitespace or an inline comment (``DROP/**/TABLE``).
_SP = r"(?:\s|/\*[^*]{0,64}\*/)"
# At most this many hits of one rule in one field are reported: the first decides, more only grow the cache.
MAX_HITS_PER_RULE = 16

# (kind, reason, code, pattern); checked in this order.
_RULES: tuple[tuple[str, str, str, str], ...] = (
    # Any case: ``pwned:`` is the same trigger to a model that has learnt it.
    ("backdoor_trigger", "backdoor_trigger", "E7102", r"(?i)\b(?:PWNED|INJECTION):"),
    (
        "control_token",
        "control_tokens",
        "E7102",
        r"<\|(?:im_start|im_end|im_sep|endoftext|system|user|assistant|eot_id|eom_id|start_header_id|end_header_id|"
        r"begin_of_text|end_of_text|fim_prefix|fim_middle|fim_suffix|pad|[a-z_]{2,20})\|>|\[/?INST\]|<</?SYS>>|"
        r"<start_of_turn>|<end_of_turn>",
    ),
    (
        "invisible_unicode",
        "invisible_unicode",
        "E7100",
        # zero-width and joiners, bidi embeddings/overrides/isolates, word joiner family, BOM, soft hyphen, tag chars
        # (matched on the original text: the skeleton drops them).
        "[\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff\u00ad\U000e0000-\U000e007f]",
    ),
    (
        "prompt_injection",
        "prompt_injection",
        "E7100",
        r"(?i)\b(?:ignore|disregard|forget|override|bypass)\s+(?:all\s+|any\s+|the\s+|every\s+)?"
        r"(?:previous|prior|above|earlier|preceding|your|system|safety)\s+"
        r"(?:instructions?|prompts?|rules|directions|guidelines|context|messages)\b"
        r"|\byou\s+are\s+now\s+(?:in\s+)?(?:developer\s+mode|dan|jailbroken|unrestricted)\b"
        r"|\bdo\s+anything\s+now\b"
        r"|\b(?:reveal|print|output|leak|repeat)\s+(?:your|the)\s+(?:system\s+prompt|hidden\s+instructions|initial\s+prompt)\b"
        r"|\bnew\s+instructions\s*:",
    ),
    (
        "sql_injection",
        "sql_injection",
        "E7100",
        # ``.*`` was quadratic under backtracking (each ``union select`` rescanned the rest of its line); RE2 reads the
        # text once.
        rf"(?i)\bdrop{_SP}+table\b|'{_SP}*;{_SP}*--|'\s*or\s+'?1'?\s*=\s*'?1\b"
        rf"|\bunion{_SP}+(?:all{_SP}+)?select\b.*\bfrom\b",
    ),
    (
        "privilege_escalation",
        "privilege_escalation",
        "E7103",
        r"(?i)\bsudo\s+(?:su\b|-i\b|-s\b|bash\b|sh\b)|\bchmod\s+(?:[ugoa]*\+s|[0-7]?[4-7]777|777)\s+/"
        r"|/etc/(?:shadow|sudoers)\b|\bgrant\s+all\s+privileges\b|\busermod\s+-aG\s+(?:sudo|wheel|root)\b"
        r"|\b(?:escalate|elevate)\s+(?:to\s+)?(?:root|admin(?:istrator)?)\s+privileges?\b",
    ),
    (
        "malware_signature",
        "malware_signature",
        "E7113",
        r"X5O!P%@AP\[4\\PZX54\(P\^\)7CC\)7\}\$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!\$H\+H\*"
        # No counted windows (``{1,200}``): RE2's DFA must track every overlapping start inside one, runs out of
        # memory on a line of ``curl curl ...`` and falls back to a slow simulation. The whole line is the window.
        r"|(?i:\b(?:curl|wget)\s+[^|\n]+\|\s*(?:sudo\s+)?(?:ba|z)?sh\b)"
        r"|(?i:\bpowershell(?:\.exe)?\s+[^\n]*-e(?:nc|ncodedcommand)?\s+[A-Za-z0-9+/=]{16,})"
        r"|(?i:\bnc\s+(?:-\w+\s+)*-e\s+/bin/(?:ba)?sh\b)|(?i:\bbase64\s+(?:-d|--decode)\s*\|\s*(?:ba)?sh\b)"
        r"|\brm\s+-rf\s+/(?:\s|$|\*)",
    ),
)
# The invisible-character rule reads the original text (str); the others read the skeleton's ASCII bytes.
_COMPILED = tuple((kind, reason, code, re2.compile(pattern if kind == "invisible_unicode" else pattern.encode()))
                  for kind, reason, code, pattern in _RULES)

# Lower-case literals of which each rule's pattern needs at least one (in the skeleton): the regex runs only when one
# is present, which keeps the scan cheap on the (vast) clean majority. ``None``: always run.
_KEYWORD_TEXT: dict[str, tuple[str, ...] | None] = {
    "backdoor_trigger": ("pwned:", "injection:"),
    "control_token": ("<|", "inst]", "<<sys>>", "_of_turn>"),
    "invisible_unicode": None,
    "prompt_injection": ("ignore", "disregard", "forget", "override", "bypass", "you are now", "anything now",
                         "reveal", "print", "output", "leak", "repeat", "new instructions"),
    "sql_injection": ("drop", "'", "union"),
    "privilege_escalation": ("sudo", "chmod", "/etc/", "grant", "usermod", "escalate", "elevate"),
    "malware_signature": ("eicar", "curl", "wget", "powershell", "nc ", "base64", "rm -rf"),
}
_KEYWORDS = {k: None if v is None else tuple(w.encode() for w in v) for k, v in _KEYWORD_TEXT.items()}
_GATE = KeywordGate([_KEYWORDS[kind] for kind, *_ in _COMPILED])

POISONING_REASONS = frozenset(r[1] for r in _RULES) | {"trigger_cooccurrence", "batch_poisoning"}


class PoisoningScanner:
    """Per-text poisoning rules.

    Args:
        extra_triggers: More literal backdoor triggers besides ``PWNED:``/``INJECTION:`` (matched like those: on the
            skeleton, in any case).
    """

    def __init__(self, extra_triggers: list[str] | None = None) -> None:
        extra = sorted({normalise(t).text for t in (extra_triggers or []) if t})
        pattern = "(?i)" + "|".join(re2.escape(t) for t in extra)
        # A trigger with non-ASCII letters cannot be matched on the ASCII bytes: those run on the skeleton itself.
        self._extra_on_text = any(not t.isascii() for t in extra)
        self._extra = re2.compile(pattern if self._extra_on_text else pattern.encode()) if extra else None

    def detect(self, text: str, field: str, norm: Normalised | None = None) -> list[Finding]:
        """Every poisoning hit in ``text`` (spans in ``text``), at most ``MAX_HITS_PER_RULE`` per rule.

        Args:
            norm: ``normalise(text)``, when the caller already has it.
        """
        norm = norm or normalise(text)
        data = norm.data
        runs = _GATE.rules(data)
        found: list[Finding] = []
        for i, (kind, reason, code, pattern) in enumerate(_COMPILED):
            if i not in runs:
                continue
            if _KEYWORDS[kind] is None:
                # Invisible characters are among those the skeleton dropped.
                if norm.dropped:
                    found += [Finding("poisoning", kind, field, m.start(), m.end(), code, reason)
                              for m in islice(pattern.finditer(text), MAX_HITS_PER_RULE)]
                continue
            for m in islice(pattern.finditer(data), MAX_HITS_PER_RULE):
                s, e = norm.span(m.start(), m.end())
                found.append(Finding("poisoning", kind, field, s, e, code, reason))
        if self._extra is not None:
            for m in islice(self._extra.finditer(norm.text if self._extra_on_text else data), MAX_HITS_PER_RULE):
                s, e = norm.span(m.start(), m.end())
                found.append(Finding("poisoning", "backdoor_trigger", field, s, e, "E7102", "backdoor_trigger"))
        return found


def _tokens(words: list[str]) -> set[str]:
    """Words and word bigrams of one normalised input."""
    return set(words).union(map(" ".join, zip(words, words[1:])))


def rare_token_cooccurrence(
    input_words: Callable[[int], list[str]],
    output_keys: list[str],
    min_support: int,
    max_doc_share: float,
    output_share: float,
) -> dict[int, str]:
    """Batch check for planted triggers: a rare input token (or word bigram) that almost always comes with one output.

    A token qualifies when it appears in at least ``min_support`` inputs but in no more than ``max_doc_share`` of the
    batch, at least ``output_share`` of its examples share one output, and that output is rare without the token
    (at most a fifth as frequent), i.e. the token, not the task, predicts the output.

    Args:
        input_words: The words of example ``i``'s normalised input (called only for the inputs the check reads).
        output_keys: Per example, a key of the normalised output (equal outputs, equal keys).

    Returns:
        ``{example index: token}`` for every example that carries a suspicious token with its associated output.
    """
    n = len(output_keys)
    if n < min_support:
        return {}
    output_freq = Counter(output_keys)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(output_keys):
        if output_freq[key] >= min_support:
            groups[key].append(i)
    # A token can only be flagged with an output that at least ``min_support`` of its examples share, so only tokens
    # that often enough within one repeated output's examples are worth counting across the batch; ``bound`` is the
    # most examples of one output that carry the token.
    bound: Counter[str] = Counter()
    for members in groups.values():
        within: Counter[str] = Counter()
        for i in members:
            within.update(_tokens(input_words(i)))
        for t, c in within.items():
            if c >= min_support and c > bound[t]:
                bound[t] = c
    if not bound:
        return {}
    limit = max(min_support, int(max_doc_share * n))
    # A token in more than ``limit`` inputs, or in so many that even ``bound`` of them is less than ``output_share``
    # (so no one output can hold that share), cannot qualify. Counts only grow, so such a token is dropped for good,
    # and the pass stops once no token is left (usually after a few hundred inputs).
    alive = set(bound)
    words_only = all(" " not in t for t in bound)
    by_token: dict[str, list[int]] = defaultdict(list)
    for start in range(0, n, 256):
        for i in range(start, min(start + 256, n)):
            words = input_words(i)
            for t in (set(words) if words_only else _tokens(words)).intersection(alive):
                by_token[t].append(i)
        for t in [t for t in alive if t in by_token and (
                len(by_token[t]) > limit or bound[t] / len(by_token[t]) < output_share)]:
            alive.discard(t)
            del by_token[t]
        if not alive:
            return {}
    flagged: dict[int, str] = {}
    for token, idxs in by_token.items():
        if not min_support <= len(idxs) <= limit:
            continue
        top, top_count = Counter(output_keys[i] for i in idxs).most_common(1)[0]
        if top_count < min_support or top_count / len(idxs) < output_share:
            continue
        without = output_freq[top] - top_count
        if without / max(n - len(idxs), 1) > 0.2 * top_count / len(idxs):
            continue
        for i in idxs:
            if output_keys[i] == top:
                flagged.setdefault(i, token)
    return flagged
