"""Content scan of one example: secrets, poisoning and PII findings, with a cache in ``metadata["scan"]``.

Contract §8 #17: the scans run at extraction and are cached on the example, so ``filter()``'s 100 ms budget covers
gating, dedup and scoring. The cache is trusted only while it names the example's current content hash and carries a
valid HMAC under the scanner's key (by default a key made fresh in each process, so a cache written by a caller, or
by anyone outside this process, is never trusted); otherwise the filter scans again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from ...models.training_example import TrainingExample, compute_content_hash
from .config import FilterConfig
from .findings import Finding, replace_spans
from .pii import PIIDetector
from .poisoning import PoisoningScanner
from .secret_scan import SecretScanner, mask_token

SCAN_VERSION = "1"
SCANNED_FIELDS = ("input_text", "output_text", "final_answer", "reasoning")


@dataclass
class ScanReport:
    """Findings of one example, grouped by category."""

    secrets: list[Finding] = field(default_factory=list)
    poisoning: list[Finding] = field(default_factory=list)
    pii: list[Finding] = field(default_factory=list)

    @property
    def flags(self) -> list[str]:
        if not (self.secrets or self.poisoning or self.pii):
            return []
        return sorted({f"{f.category}:{f.kind}" for f in (*self.secrets, *self.poisoning, *self.pii)})

    def to_cache(self, content_hash: str, key: bytes) -> dict[str, Any]:
        findings = [f.to_dict() for f in (*self.secrets, *self.poisoning, *self.pii)]
        return {"version": SCAN_VERSION, "content_hash": content_hash, "findings": findings,
                "mac": _mac(key, content_hash, findings)}

    @classmethod
    def from_cache(cls, cache: dict[str, Any]) -> "ScanReport":
        report = cls()
        for raw in cache.get("findings", []):
            f = Finding.from_dict(raw)
            getattr(report, {"secret": "secrets", "poisoning": "poisoning", "pii": "pii"}[f.category]).append(f)
        return report


_PROCESS_KEY = secrets.token_bytes(32)


def _mac(key: bytes, content_hash: str, findings: list[dict[str, Any]]) -> str:
    payload = SCAN_VERSION + content_hash + json.dumps(findings, sort_keys=True)
    return hmac.new(key, payload.encode("utf-8"), hashlib.sha256).hexdigest()


class ContentScanner:
    """Runs the secret, poisoning and PII detectors over an example's text fields.

    Args:
        config: Filter configuration (custom PII names, extra triggers).
        cache_key: HMAC key that authenticates scan caches. Default: this process's random key, so caches are
            trusted only when this process wrote them; pass a shared key to trust an extractor in another process.
    """

    def __init__(self, config: FilterConfig | None = None, cache_key: bytes | None = None) -> None:
        self._key = cache_key or _PROCESS_KEY
        cfg = config or FilterConfig()
        self.secrets = SecretScanner()
        self.poisoning = PoisoningScanner(cfg.extra_backdoor_triggers)
        self.pii = PIIDetector(cfg.pii_custom_names)

    def scan(self, example: TrainingExample) -> ScanReport:
        """Findings for every scanned text field of ``example`` (no side effects)."""
        report = ScanReport()
        for name in SCANNED_FIELDS:
            text = getattr(example, name)
            if not text:
                continue
            report.secrets += self.secrets.detect(text, name)
            report.poisoning += self.poisoning.detect(text, name)
            report.pii += self.pii.detect(text, name)
        return report

    def cached_or_scan(self, example: TrainingExample, content_hash: str) -> ScanReport:
        """The cached report when it is current for ``content_hash``, else a fresh scan."""
        cache = example.metadata.get("scan")
        if isinstance(cache, dict) and cache.get("version") == SCAN_VERSION and cache.get("content_hash") == content_hash:
            try:
                if hmac.compare_digest(str(cache.get("mac", "")), _mac(self._key, content_hash, cache["findings"])):
                    return ScanReport.from_cache(cache)
            except (KeyError, TypeError, ValueError):
                pass  # malformed cache: scan again rather than trust it
        return self.scan(example)

    def annotate(self, example: TrainingExample) -> TrainingExample:
        """A copy of ``example`` with the scan cached in ``metadata["scan"]`` and ``metadata["scan_flags"]``.

        The extractor calls this so ``filter()`` does not rescan. Text is not changed here: the filter masks and
        redacts when it decides.
        """
        content_hash = compute_content_hash(example.input_text, example.output_text)
        report = self.scan(example)
        metadata = dict(example.metadata)
        metadata["scan"] = report.to_cache(content_hash, self._key)
        metadata["scan_flags"] = report.flags
        return example.model_copy(update={"metadata": metadata})


def mask_secrets_in_text(text: str, findings: list[Finding]) -> str:
    """``text`` with each secret span replaced by its masked token."""
    return replace_spans(text, [(f.start, f.end, mask_token(f.kind, text[f.start:f.end])) for f in findings])


def mask_secrets_deep(value: Any, scanner: SecretScanner) -> Any:
    """Any JSON-like value with every secret in every string masked (for persisted payloads)."""
    if isinstance(value, str):
        found = scanner.detect(value, "")
        return mask_secrets_in_text(value, found) if found else value
    if isinstance(value, dict):
        return {k: mask_secrets_deep(v, scanner) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets_deep(v, scanner) for v in value]
    return value
