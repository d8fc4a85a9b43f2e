"""Content scan of one example: secrets, poisoning and PII findings, cached at extraction in ``metadata["scan"]``.

Contract §8 #17: the scans run at extraction and are cached on the example, so ``filter()``'s 100 ms budget covers
gating, dedup and scoring. The cache holds everything the filter needs to decide without reading the text again:
the findings (spans, kinds, secret digests: enough to mask, redact and quarantine exactly as a fresh scan would), the
normalised content hash, an output hash (batch trigger check) and the MinHash signature. ``metadata["scan_flags"]``
is its human-readable summary.

The cache is trusted only with a valid MAC (keyed BLAKE2b) over itself and the example's scanned text, made under
the scanner's key (by default a key made fresh in each process), for the same scanner configuration. A cache written
by a caller, by another process, or before the text changed is never trusted: the filter scans again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import secrets
import weakref
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from ...models.training_example import TrainingExample, normalise_text
from .config import FilterConfig
from .findings import Finding, replace_spans
from .minhash import encode, shingles, signatures
from .normalize import normalise
from .pii import PIIDetector
from .poisoning import PoisoningScanner
from .secret_scan import SecretScanner, masked_form

SCAN_VERSION = "3"
SCANNED_FIELDS = ("input_text", "output_text", "final_answer", "reasoning")
_CATEGORY_LIST = {"secret": "secrets", "poisoning": "poisoning", "pii": "pii"}
_PROCESS_KEY = secrets.token_bytes(32)
_SEP = "\x1f"
CONTENT_HASH_SEPARATOR = "\u241f"
"""The separator ``models.training_example.compute_content_hash`` puts between input and output (a test pins it)."""


@dataclass
class ScanReport:
    """Findings of one example, grouped by category."""

    secrets: list[Finding] = field(default_factory=list)
    poisoning: list[Finding] = field(default_factory=list)
    pii: list[Finding] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.secrets or self.poisoning or self.pii)

    @property
    def flags(self) -> list[str]:
        if not self:
            return []
        return sorted({f"{f.category}:{f.kind}" for f in (*self.secrets, *self.poisoning, *self.pii)})

    def findings_json(self) -> str:
        if not self:
            return "[]"
        return json.dumps([f.to_dict() for f in (*self.secrets, *self.poisoning, *self.pii)], sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ScanReport":
        report = cls()
        if text != "[]":
            for raw in json.loads(text):
                f = Finding.from_dict(raw)
                getattr(report, _CATEGORY_LIST[f.category]).append(f)
        return report


_NO_FINDINGS = ScanReport()
"""Shared by every clean cached example: the filter only reads scan reports."""

# Caches this process issued, by ``id(example)``: an example that is still the very object annotated, with the very
# cache dict and text objects it was annotated with, needs no MAC check (that is ~5x the cost of this lookup). A copy,
# an edit, or a round trip through JSON misses here and is checked by MAC instead. Entries go with their example.
_ISSUED: dict[int, tuple[Any, ...]] = {}


def _issue(example: TrainingExample, key: bytes, fingerprint: str, cache: dict[str, Any], result: "CachedScan") -> None:
    oid = id(example)
    ref = weakref.ref(example, lambda _, oid=oid: _ISSUED.pop(oid, None))
    _ISSUED[oid] = (ref, key, fingerprint, cache, result, example.input_text, example.output_text,
                    example.final_answer, example.reasoning)


@dataclass
class CachedScan:
    """What the extraction-time cache tells the filter about one example (trusted: its MAC checked out)."""

    report: ScanReport
    content_hash: str
    output_hash: str
    signature: str


def hash_normalised(input_norm: str, output_norm: str) -> str:
    """``compute_content_hash`` from already normalised text (normalised once for hash and shingles)."""
    return hashlib.sha256((input_norm + CONTENT_HASH_SEPARATOR + output_norm).encode("utf-8")).hexdigest()


def output_hash(output_norm: str) -> str:
    """Key of a normalised output: equal outputs, equal keys (the batch trigger check counts outputs)."""
    return hashlib.blake2b(output_norm.encode("utf-8"), digest_size=16).hexdigest()


class ContentScanner:
    """Runs the secret, poisoning and PII detectors over an example's text fields, and caches the result.

    Args:
        config: Filter configuration (custom PII names, extra triggers, shingle and MinHash parameters).
        cache_key: MAC key that authenticates scan caches. Default: this process's random key, so caches are
            trusted only when this process wrote them; pass a shared key to trust an extractor in another process.
    """

    def __init__(self, config: FilterConfig | None = None, cache_key: bytes | None = None) -> None:
        self._key = cache_key or _PROCESS_KEY
        cfg = config or FilterConfig()
        self.config = cfg
        self.secrets = SecretScanner()
        self.poisoning = PoisoningScanner(cfg.extra_backdoor_triggers)
        self.pii = PIIDetector(cfg.pii_custom_names)
        # A cache made with other detectors or other MinHash parameters is not this scanner's answer.
        self.fingerprint = hashlib.sha256(json.dumps(
            [SCAN_VERSION, cfg.pii_custom_names, cfg.extra_backdoor_triggers, cfg.shingle_size, cfg.num_perm,
             cfg.minhash_seed]).encode()).hexdigest()[:16]

    def scan(self, example: TrainingExample) -> ScanReport:
        """Findings for every scanned text field of ``example`` (no side effects)."""
        return self.scan_texts(tuple(getattr(example, name) for name in SCANNED_FIELDS))

    def _mac(self, ex: TrainingExample, content_hash: str, out_hash: str, findings: str, signature: str) -> str:
        # Every part is length-prefixed, so no characters can be moved from one part into its neighbour (a hash, the
        # findings or a text) while the MAC still checks out.
        parts = (self.fingerprint, content_hash, out_hash, findings, signature,
                 ex.input_text, ex.output_text, ex.final_answer, ex.reasoning)
        payload = "".join(f"{len(p)}{_SEP}{p}" for p in parts)
        return hashlib.blake2b(payload.encode("utf-8", "surrogatepass"), key=self._key, digest_size=16).hexdigest()

    async def annotate_many_async(self, examples: list[TrainingExample]) -> list[TrainingExample]:
        """``annotate_many`` that keeps the event loop free: the detectors run in the scan process pool (``_POOL``)
        unless the batch holds less than ``INLINE_SCAN_CHARS`` of text (then the scan costs less than handing it
        over). What ingestion calls, so one large event cannot stall ``/health/live`` or other requests."""
        texts = [tuple(getattr(ex, name) or "" for name in SCANNED_FIELDS) for ex in examples]
        if sum(len(t) for fields in texts for t in fields) < INLINE_SCAN_CHARS:
            return self.annotate_many(examples)
        loop = asyncio.get_running_loop()
        settings = self.config.model_dump_json()
        try:
            digests = await loop.run_in_executor(_pool(), _digest_texts, settings, texts)
        except BrokenProcessPool:
            _reset_pool()
            digests = await asyncio.to_thread(_digest_texts, settings, texts)
        return self.annotate_many(examples, digests)

    def scan_texts(self, fields: tuple[str, ...]) -> ScanReport:
        """``scan`` of an example's scanned fields given as text (``SCANNED_FIELDS`` order)."""
        report = ScanReport()
        for name, text in zip(SCANNED_FIELDS, fields):
            if not text:
                continue
            norm = normalise(text)
            report.secrets += self.secrets.detect(text, name, norm) + self.secrets.masked(text, name)
            report.poisoning += self.poisoning.detect(text, name, norm)
            report.pii += self.pii.detect(text, name, norm)
        return report

    def digest_texts(self, texts: list[tuple[str, ...]]) -> list[tuple[str, str, str, str]]:
        """The text-derived part of each example's cache: ``(findings JSON, content hash, output hash, MinHash)``,
        from its scanned fields (``SCANNED_FIELDS`` order; input and output come first). Pure: it runs in the scan
        pool for large batches."""
        cfg = self.config
        norms = [(normalise_text(f[0]), normalise_text(f[1])) for f in texts]
        sigs = signatures([shingles(i, o, cfg.shingle_size) for i, o in norms], cfg.num_perm, cfg.minhash_seed)
        return [(self.scan_texts(f).findings_json(), hash_normalised(i, o), output_hash(o), encode(sig))
                for f, (i, o), sig in zip(texts, norms, sigs)]

    def annotate_many(self, examples: list[TrainingExample],
                      digests: list[tuple[str, str, str, str]] | None = None) -> list[TrainingExample]:
        """Copies of ``examples`` with the scan cached in ``metadata["scan"]`` and summarised in
        ``metadata["scan_flags"]``. The extractor calls this once per batch, so ``filter()`` does not rescan.

        Text is not changed here: the filter masks and redacts when it decides.

        Args:
            digests: ``digest_texts`` of the examples when it ran elsewhere (``annotate_many_async``).
        """
        if digests is None:
            digests = self.digest_texts([tuple(getattr(ex, name) for name in SCANNED_FIELDS) for ex in examples])
        out = []
        for ex, (findings, content_hash, out_hash, signature) in zip(examples, digests):
            report = _NO_FINDINGS if findings == "[]" else ScanReport.from_json(findings)
            metadata = dict(ex.metadata)
            metadata["scan"] = {"v": SCAN_VERSION, "content_hash": content_hash, "output_hash": out_hash,
                                "findings": findings, "minhash": signature,
                                "mac": self._mac(ex, content_hash, out_hash, findings, signature)}
            metadata["scan_flags"] = report.flags
            new = ex.model_copy(update={"metadata": metadata, "content_hash": content_hash})
            _issue(new, self._key, self.fingerprint, metadata["scan"],
                   CachedScan(report, content_hash, out_hash, signature))
            out.append(new)
        return out

    def annotate(self, example: TrainingExample) -> TrainingExample:
        """``annotate_many`` for one example."""
        return self.annotate_many([example])[0]

    def cached(self, example: TrainingExample) -> CachedScan | None:
        """The cached scan when it is trusted (right key, configuration and text), else ``None``."""
        cache = example.metadata.get("scan")
        if cache.__class__ is not dict:
            return None
        issued = _ISSUED.get(id(example))
        if issued is not None:
            ref, key, fingerprint, issued_cache, result, inp, out, answer, reasoning = issued
            if (ref() is example and cache is issued_cache and key == self._key and fingerprint == self.fingerprint
                    and example.input_text is inp and example.output_text is out and example.final_answer is answer
                    and example.reasoning is reasoning):
                return result
        try:
            findings = cache["findings"]
            if cache["mac"] != self._mac(example, cache["content_hash"], cache["output_hash"], findings, cache["minhash"]):
                return None
            report = _NO_FINDINGS if findings == "[]" else ScanReport.from_json(findings)
            return CachedScan(report, cache["content_hash"], cache["output_hash"], cache["minhash"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return None  # malformed cache: scan again rather than trust it


INLINE_SCAN_CHARS = 32_768
"""Below this much text in a batch the scan runs in place: handing it to a worker would cost more than it takes."""
_POOL: ProcessPoolExecutor | None = None
_POOL_PID = 0
_WORKER_SCANNERS: dict[str, ContentScanner] = {}


def _pool() -> ProcessPoolExecutor:
    """The process pool content scans run in (made on first use, again after a fork). ``spawn``: the parent runs an
    event loop and database threads, which a forked child must not inherit."""
    global _POOL, _POOL_PID
    if _POOL is None or _POOL_PID != os.getpid():
        workers = max(1, min(4, (os.cpu_count() or 2) - 1))
        _POOL = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        _POOL_PID = os.getpid()
    return _POOL


def _reset_pool() -> None:
    global _POOL
    if _POOL is not None:
        _POOL.shutdown(wait=False, cancel_futures=True)
    _POOL = None


def _digest_texts(settings: str, texts: list[tuple[str, ...]]) -> list[tuple[str, str, str, str]]:
    """Worker side of ``annotate_many_async``: ``ContentScanner.digest_texts`` under the caller's configuration (the
    MAC is made by the caller, under its key, which never leaves it)."""
    scanner = _WORKER_SCANNERS.get(settings)
    if scanner is None:
        scanner = _WORKER_SCANNERS[settings] = ContentScanner(FilterConfig.model_validate_json(settings))
    return scanner.digest_texts(texts)


def mask_secrets_in_text(text: str, findings: list[Finding]) -> str:
    """``text`` with each secret span replaced by its masked token."""
    return replace_spans(text, [(f.start, f.end, masked_form(f.kind, text[f.start:f.end])) for f in findings])


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
