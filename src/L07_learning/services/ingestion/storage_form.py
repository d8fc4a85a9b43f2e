"""The stored form of what a batch writes (contract §7.4: producer content never rests in clear), with the detector
work for long strings done ahead of the write transaction.

``StorageRedactor`` remembers the detector spans of short strings only (tool names, parameter values: they repeat).
A batch's long strings (answers, outputs, raw payloads of up to 1 MB each) are what the secret and PII detectors spend
their time on, so ``BatchRedactor`` also remembers those for the batch in flight: ``warm`` runs the redaction of the
pre-composed examples, join payloads and rejected payloads in a worker thread before the transaction opens (the event
loop keeps serving meanwhile), and the transaction's own redaction then finds the spans of the very same strings
already made. A string the transaction composes differently is simply detected there, as before. Only long strings
are done ahead: short ones are remembered by ``StorageRedactor`` anyway, and a batch without long text pays nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ...events.cloudevent import RawEvent, raw_text
from ...models.training_example import TrainingExample
from ...store.repositories.joins import JoinRow
from ..filtering.redaction import StorageRedactor
from .rejections import clean

_MIN_LONG = 513
"""Strings this long or longer are not kept by ``StorageRedactor``'s own span cache."""
_MAX_KEPT_CHARS = 64_000_000
"""Most text one batch keeps spans for (16 MB requests hold at most about this much, in a few copies)."""


class BatchRedactor(StorageRedactor):
    """``StorageRedactor`` that also keeps the detector spans of long strings until ``forget``."""

    def __init__(self, custom_names: Iterable[str] | None = None) -> None:
        super().__init__(custom_names)
        self._long: dict[tuple[str, str], tuple[tuple[int, int, str, str], ...]] = {}
        self._long_chars = 0

    def _detect(self, text: str, credential_key: str) -> tuple[tuple[int, int, str, str], ...]:
        if len(text) < _MIN_LONG:
            return super()._detect(text, credential_key)
        key = (credential_key, text)
        found = self._long.get(key)
        if found is None:
            found = super()._detect(text, credential_key)
            if self._long_chars + len(text) <= _MAX_KEPT_CHARS:
                self._long[key] = found
                self._long_chars += len(text)
        return found

    def forget(self) -> None:
        """Drop the long strings' spans (at the end of each batch: they are its text)."""
        self._long = {}
        self._long_chars = 0


def stored_example(redact: StorageRedactor, example: TrainingExample) -> dict[str, Any]:
    """The PENDING row's JSON with every string's secrets masked and PII redacted (tool parameters and metadata
    included), so the example row never holds either in clear, should filtering fail or come later. The in-memory
    example keeps its text for the filter to decide on; a row filtered again later is quarantined by its masks. The
    scan cache stays out of the row: it vouches for the clear text only."""
    data = example.model_dump(mode="json")
    data["metadata"] = {k: v for k, v in data["metadata"].items() if k != "scan"}
    return redact(data)


def long_strings(redact: StorageRedactor, value: Any, key: str = "", out: list[tuple[str, str]] | None = None
                 ) -> list[tuple[str, str]]:
    """``(string, key it is stored under)`` of every string in ``value`` that ``redact`` would detect on and not
    remember by itself, walked as ``StorageRedactor`` walks it (identifier keys skipped)."""
    found = [] if out is None else out
    if isinstance(value, str):
        if len(value) >= _MIN_LONG:
            found.append((value, key))
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k in redact.keep_keys:
                continue
            if isinstance(k, str) and len(k) >= _MIN_LONG:
                found.append((k, ""))
            long_strings(redact, v, str(k) if isinstance(v, str) else "", found)
    elif isinstance(value, (list, tuple)):
        for v in value:
            long_strings(redact, v, "", found)
    return found


def expected_long(redact: StorageRedactor, examples: list[TrainingExample], rows: Iterable[JoinRow],
                  rejected: Iterable[Any]) -> list[tuple[str, str]]:
    """The long strings the transaction is expected to redact: in the pre-composed examples' stored form, the join
    payloads it will save, and the rejected raw payloads. Cheap: no detector runs here."""
    found: list[tuple[str, str]] = []
    for ex in examples:
        # Tool outputs and parameters are part of the output text, the context of the input: no long text, no walk.
        if max(len(ex.input_text), len(ex.output_text), len(ex.reasoning or "")) >= _MIN_LONG:
            long_strings(redact, ex.model_dump(mode="json"), "", found)
    for row in rows:
        if row.dirty:
            long_strings(redact, [row.trace, row.scores], "", found)
    for raw in rejected:
        text = clean(raw_text(raw.body if isinstance(raw, RawEvent) else raw))
        if len(text) >= _MIN_LONG:
            try:
                long_strings(redact, json.loads(text), "", found)
            except (ValueError, RecursionError):
                pass
            found.append((text, ""))  # the plain-text form, for a payload that is not JSON
    return found


def warm(redact: BatchRedactor, strings: list[tuple[str, str]]) -> None:
    """Make (and remember in ``redact``) the detector spans of ``strings``. Runs in a worker thread."""
    for text, key in strings:
        redact.text(text, key=key)
