"""The one storage form of untrusted content: secrets masked and PII redacted in any JSON-like value.

Everything L07 writes that came from a producer (pending joins, rejected events, dead letters, reward signals,
preference pairs, example rows) goes through ``redact_for_storage`` first, so a credential or a person's data never
rests in clear, whatever the filter later decides. It uses the filter's own detectors (``secret_scan``, ``pii``) and
its replacement forms: ``<SECRET_MASKED kind=.. sha256=..>`` for secrets, ``<EMAIL_1>``-style placeholders for PII,
numbered per stored value so one address keeps one placeholder across the fields of a record. Both forms are never
detected again, so redacting stored content a second time changes nothing.

Identifier fields (``execution_id``, ``evaluation_id``, event ids...) are kept as they are: joins, idempotency and
lineage match on them. An identifier is not free text; a producer that puts a credential into an id leaks it into
every system that routes on that id, not only into L07.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from .findings import replace_spans
from .pii import PIIDetector, Placeholders
from .secret_scan import SecretScanner, masked_form

IDENTIFIER_KEYS: frozenset[str] = frozenset({
    "_event_id", "_seq", "execution_id", "evaluation_id", "plan_id", "task_id", "agent_id", "trace_id",
    "example_id", "signal_id", "pair_id", "chosen_example_id", "rejected_example_id", "source_event_ids",
    "content_hash", "source_trace_hash", "prompt_hash", "timestamp", "start_time", "end_time", "created_at",
    "execution_timestamp",
})
"""Keys whose values are identifiers, stored unchanged (the whole value under the key)."""
# Key words that make a string value a credential assignment (the secret scanner's ``key=value`` rule).
_CREDENTIAL_KEY_WORDS = ("password", "passwd", "pwd", "secret", "token", "key")
_MIN_FINDING_LEN = 6
_SECRET = "\x00secret"
_CACHED_MAX_LEN = 512
_CACHE_SIZE = 50_000


class StorageRedactor:
    """Masks secrets and redacts PII in JSON-like values before they are stored.

    Args:
        custom_names: Names (people, customers) to redact as ``<NAME_n>``, as the filter's ``pii_custom_names``.
        keep_keys: Dict keys whose values are kept unchanged (identifiers).
    """

    def __init__(self, custom_names: Iterable[str] | None = None,
                 keep_keys: Iterable[str] = IDENTIFIER_KEYS) -> None:
        self.secrets = SecretScanner()
        names = [n for n in (custom_names or []) if n.strip()]
        self.pii = PIIDetector(names)
        self.keep_keys = frozenset(keep_keys)
        # Below this length no detector can match (the shortest finding, an e-mail like a@b.co, has 6 characters);
        # a custom name can be shorter.
        self._min_len = min([_MIN_FINDING_LEN, *(len(n.strip()) for n in names)])
        # Detector spans of recently seen strings: tool names, parameter values and keys repeat across records, and
        # the detectors cost far more than a lookup.
        self._spans: dict[tuple[str, str], tuple[tuple[int, int, str, str], ...]] = {}

    def __call__(self, value: Any) -> Any:
        """``value`` with every string (dict keys included) masked and redacted; a new object, the input untouched."""
        return self._walk(value, Placeholders())

    def text(self, text: str, placeholders: Placeholders | None = None, key: str = "") -> str:
        """One string with its secrets masked and its PII replaced by typed placeholders.

        ``key`` is the dict key the string is stored under: ``{"password": "..."}`` is a credential assignment
        although the value alone does not say so, exactly as the filter sees it in the example's JSON text.
        """
        if len(text) < self._min_len:
            return text
        credential_key = bool(key) and any(word in key.lower() for word in _CREDENTIAL_KEY_WORDS)
        cache_key = (key if credential_key else "", text)
        found = self._spans.get(cache_key)
        if found is None:
            found = self._detect(text, key if credential_key else "")
            if len(text) <= _CACHED_MAX_LEN:
                if len(self._spans) >= _CACHE_SIZE:
                    self._spans.clear()
                self._spans[cache_key] = found
        if not found:
            return text
        holder = placeholders or Placeholders()
        return replace_spans(text, [(s, e, repl if kind == _SECRET else holder.token(kind, text[s:e]))
                                    for s, e, kind, repl in found])

    def _detect(self, text: str, credential_key: str) -> tuple[tuple[int, int, str, str], ...]:
        """``(start, end, kind, mask)`` per secret (kind ``_SECRET``) and ``(start, end, pii kind, "")`` per PII span."""
        if credential_key:
            prefix = f"{credential_key}="
            n = len(prefix)
            secrets = [(f.start - n, f.end - n, f.kind) for f in self.secrets.detect(prefix + text, "") if f.start >= n]
        else:
            secrets = [(f.start, f.end, f.kind) for f in self.secrets.detect(text, "")]
        spans = [(s, e, _SECRET, masked_form(kind, text[s:e])) for s, e, kind in secrets]
        for f in self.pii.detect(text, ""):
            # A PII match inside a masked secret is gone with the secret (and would otherwise displace the mask).
            if not any(f.start < e and s < f.end for s, e, _ in secrets):
                spans.append((f.start, f.end, f.kind, ""))
        return tuple(spans)

    def raw(self, payload: Any) -> Any:
        """A raw transport payload (JSON text, bytes or an object): JSON is redacted value by value, so it stays
        valid JSON; anything else is redacted as text."""
        if isinstance(payload, (bytes, bytearray, memoryview)):
            payload = bytes(payload).decode("utf-8", "replace")
        if isinstance(payload, str):
            try:
                parsed = json.loads(payload)
            except ValueError:
                return self.text(payload)
            if isinstance(parsed, (dict, list)):
                redacted = self(parsed)
                # Unchanged content keeps its exact bytes (what the producer sent is what an operator reads).
                return payload if redacted == parsed else json.dumps(redacted, ensure_ascii=False, separators=(",", ":"))
            return self.text(payload)
        return self(payload)

    def _walk(self, value: Any, holder: Placeholders) -> Any:
        if isinstance(value, str):
            return self.text(value, holder)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for k, v in value.items():
                if isinstance(k, str) and k in self.keep_keys:
                    out[k] = v
                elif isinstance(v, str):
                    out[self.text(k, holder) if isinstance(k, str) else k] = self.text(v, holder, key=str(k))
                else:
                    out[self.text(k, holder) if isinstance(k, str) else k] = self._walk(v, holder)
            return out
        if isinstance(value, (list, tuple)):
            return [self._walk(v, holder) for v in value]
        return value


_DEFAULT = StorageRedactor()


def redact_for_storage(value: Any) -> Any:
    """``value`` (any JSON-like value) with secrets masked and PII redacted: the form every stored copy takes."""
    return _DEFAULT(value)


def redact_raw(payload: Any) -> Any:
    """A raw payload's storage form (``StorageRedactor.raw``)."""
    return _DEFAULT.raw(payload)
