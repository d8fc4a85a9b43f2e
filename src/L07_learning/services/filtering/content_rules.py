"""Rules 2 and 3 of the filter (contract §5.2): what the text holds.

``ContentScan`` reads each example once (or takes the scan cached at extraction) and rewrites the text to its stored
form, secrets masked and PII redacted; the rules after it decide from that scan: secrets, poisoning in one example,
a trigger token planted across the batch, then PII.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from ...models.error_codes import L07ErrorCode
from ...models.training_example import normalise_text
from .config import FilterConfig
from .decisions import Batch, Candidate, Decision
from .findings import replace_spans
from .pii import FLOOD_KIND as PII_FLOOD
from .pii import Placeholders
from .poisoning import rare_token_cooccurrence
from .scan import ContentScanner
from .secret_scan import masked_form


class ContentScan:
    """Scan every example (or verify its extraction-time scan) and rewrite secrets and PII out of its text."""

    def __init__(self, scanner: ContentScanner) -> None:
        self.scanner = scanner

    async def apply(self, batch: Batch) -> None:
        for c in batch.candidates:
            cached = self.scanner.cached(c.example)
            if cached is not None:
                # Scanned at extraction (contract §8 #17): the text is not read again here.
                c.scan, c.content_hash, c.output_key = cached.report, cached.content_hash, cached.output_hash
                c.signature = cached.signature
            else:
                c.scan = self.scanner.scan(c.example)
                c.rekey()
            if c.scan:
                _rewrite(c)


def _rewrite(c: Candidate) -> None:
    """Mask secrets and redact PII in every scanned field (stored forms never hold either), then re-key."""
    scan = c.scan
    assert scan is not None
    ex = c.example
    if scan.secrets or scan.pii:
        placeholders = Placeholders()
        by_field: dict[str, list[tuple[int, int, str]]] = {}
        for f in scan.secrets:
            text = getattr(ex, f.field)
            by_field.setdefault(f.field, []).append((f.start, f.end, masked_form(f.kind, text[f.start:f.end])))
        for f in scan.pii:
            text = getattr(ex, f.field)
            by_field.setdefault(f.field, []).append((f.start, f.end, placeholders.token(f.kind, text[f.start:f.end])))
        for name, spans in by_field.items():
            c.updates[name] = replace_spans(getattr(ex, name), spans)
    if "input_text" in c.updates or "output_text" in c.updates:
        # Stored text changed: hash, output key and signature follow the stored form, not the cached one.
        c.norm, c.signature = None, None
        c.rekey()


class Secrets:
    """A credential in the text quarantines the example (stored masked, with the secrets' digests)."""

    async def apply(self, batch: Batch) -> None:
        code = L07ErrorCode.SECRET_DETECTED_IN_TRAINING_DATA.value
        for c in batch.candidates:
            secrets = c.scan.secrets  # type: ignore[union-attr]
            if secrets:
                kinds = sorted({f.kind for f in secrets})
                digests = sorted({f"{f.kind}:sha256:{f.digest}" for f in secrets})
                c.decide(Decision.QUARANTINE, "secret", code, f"secret:{kinds[0]}",
                         f"{len(secrets)} secret(s) masked: {', '.join(digests)}")


class Poisoning:
    """Injection phrasing, backdoor triggers and the like found in one example quarantine it."""

    async def apply(self, batch: Batch) -> None:
        for c in batch.candidates:
            hits = c.scan.poisoning  # type: ignore[union-attr]
            if hits:
                first = hits[0]
                fields = sorted({f.field for f in hits if f.kind == first.kind})
                c.decide(Decision.QUARANTINE, first.reason, first.code, f"poisoning:{first.kind}",
                         f"{first.kind} in {', '.join(fields)}")


class TriggerCooccurrence:
    """A rare input token that always comes with one output across the batch is a planted trigger: quarantine."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config

    async def apply(self, batch: Batch) -> None:
        code = L07ErrorCode.BACKDOOR_PATTERN_DETECTED.value
        candidates = batch.candidates
        for pos, token in self._flagged(candidates).items():
            candidates[pos].decide(Decision.QUARANTINE, "trigger_cooccurrence", code, "poisoning:rare_token_cooccurrence",
                                   f"rare input token {token!r} co-occurs with one output across the batch")

    def _flagged(self, candidates: list[Candidate]) -> dict[int, str]:
        cfg = self.config
        # Count distinct (input, output) pairs: the same task replayed many times is repetition (the dedup rule's
        # business), not a trigger. A planted backdoor pairs *different* inputs carrying the token with one output.
        first_of: dict[str, int] = {}
        members: dict[int, list[int]] = defaultdict(list)
        for pos, c in enumerate(candidates):
            rep = first_of.setdefault(c.content_hash, pos)
            members[rep].append(pos)
        reps = list(members)
        outputs = Counter(candidates[r].output_key for r in reps)
        if len(reps) < cfg.trigger_min_support or outputs.most_common(1)[0][1] < cfg.trigger_min_support:
            return {}  # no output repeats often enough to be a planted target: skip reading the inputs
        flagged = rare_token_cooccurrence(
            lambda i: normalise_text(candidates[reps[i]].texts()[0]).split(), [candidates[r].output_key for r in reps],
            cfg.trigger_min_support, cfg.trigger_max_doc_share, cfg.trigger_output_share,
        )
        return {pos: token for idx, token in flagged.items() for pos in members[reps[idx]]}


class Pii:
    """PII is redacted (the default) or dropped by configuration; more distinct values than allowed quarantine."""

    def __init__(self, config: FilterConfig) -> None:
        self.config = config

    async def apply(self, batch: Batch) -> None:
        cfg = self.config
        code = L07ErrorCode.PII_DETECTED_IN_TRAINING_DATA.value
        for c in batch.candidates:
            hits = c.scan.pii  # type: ignore[union-attr]
            if not hits or c.decision is not None:
                continue
            # A hit is one distinct PII value: the same address quoted in input and output is one person's data.
            distinct = {(f.kind, getattr(c.example, f.field)[f.start:f.end].strip().lower()) for f in hits}
            kinds = Counter(kind for kind, _ in distinct)
            summary = ", ".join(f"{k}={n}" for k, n in sorted(kinds.items()))
            if PII_FLOOD in kinds:
                # Too many PII-shaped strings to read one by one: the field is stored redacted whole, for review.
                c.decide(Decision.QUARANTINE, "pii", code, "pii:flood",
                         f"more PII-shaped strings than the scan reads one by one ({summary})")
            elif len(distinct) > cfg.pii_max_hits:
                c.decide(Decision.QUARANTINE, "pii", code, "pii:too_many_hits",
                         f"{len(distinct)} PII values > {cfg.pii_max_hits} ({summary})")
            elif cfg.pii_action == "drop":
                c.decide(Decision.REJECT, "pii", code, "pii:drop", f"PII dropped by configuration ({summary})")
            else:
                c.updates.setdefault("metadata", dict(c.example.metadata))["pii_redacted"] = True
                c.updates["metadata"]["pii_kinds"] = sorted(kinds)
