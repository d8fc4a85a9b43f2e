"""Who may author which events: producer bindings and producer signatures (contract §1.9, §7.4, §9 "Roles").

Two mechanisms, one rule set:

* **Bindings.** A producer credential (a REST API key with role ``producer``, or a producer public key registered in
  L07) names the sources it speaks for and the event kinds it may send. A source is a layer (``l02``: matches
  ``https://agentic.local/layers/l02`` and ``l02.<name>``) or one exact source string. Kinds are ``trace``,
  ``score``, ``plan``, ``response`` and ``human_review``. A ``human_review`` score needs the ``human_review`` kind:
  it outranks automated scores (§1.7 rule 3) and its ``reference_output`` becomes training output (§1.10), so only a
  reviewer-bound credential may send one. Without this, one credential could post a trace as L02 and a correction as
  L06 and so write an ACCEPTED training example of its own choosing.
* **Signatures** (``verify_event_signatures=true``). Every event carries two CloudEvents extension attributes:
  ``signaturekeyid`` (the registered producer key) and ``signature`` (base64 of the DER ECDSA P-256 / SHA-256
  signature). The signed bytes are the RFC 8785 (JCS) canonical JSON of the event in structured mode **without** its
  ``signature`` attribute (``signaturekeyid`` is inside, so the key id is signed too). Every attribute is covered,
  ``id``, ``source``, ``type``, ``time`` and ``data`` included, so no part can be changed or replayed under another id.
  In HTTP binary mode the structured form is rebuilt from the ``ce-*`` headers, ``Content-Type`` as
  ``datacontenttype``, and the body as ``data``. Platform L01 envelopes cannot carry a signature and are refused when
  verification is on. One deviation from RFC 8785: integers beyond 2^53 are written exactly rather than rounded to
  a double; JSON producers do not send such values in event payloads.

A failure of either is ``E7115 EVENT_AUTHENTICITY_FAILED``: the pipeline stores the event in
``l07_rejected_events`` with the reason (naming the credential), counts it under ``l07_events_rejected_total`` and
raises a security alert (``l07_errors_total{error_type="security"}`` and an ERROR log).
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ...events import json_text
from ...events.cloudevent import PLAN, RESPONSE, SCORE, TRACE, CloudEvent, from_binary
from ...models.error_codes import L07Error, L07ErrorCode
from ...observability.metrics import ERRORS
from ...settings import Settings
from ...store.db import Database
from ...store.repositories.api_keys import ProducerKeyRecord, ProducerKeyRepository

log = logging.getLogger(__name__)

__all__ = [
    "EVENT_KINDS", "HUMAN_REVIEW", "KEY_ID_ATTR", "SIGNATURE_ATTR", "EventBinding", "EventProvenance",
    "canonical_json", "check_public_key", "load_provenance", "normalise_binding", "sign_event", "signing_input",
]

HUMAN_REVIEW = "human_review"
EVENT_KINDS = (TRACE, SCORE, PLAN, RESPONSE, HUMAN_REVIEW)
# Contract §1.1 "Producer" column: what a layer sends when a binding names no kinds. human_review is never implied.
LAYER_KINDS = {"l02": (TRACE,), "l04": (RESPONSE,), "l05": (PLAN,), "l06": (SCORE,)}
SIGNATURE_ATTR = "signature"
KEY_ID_ATTR = "signaturekeyid"

_LAYER = re.compile(r"^l\d\d$")
_LAYER_OF_SOURCE = (re.compile(r"^https?://[^/]+/layers/(l\d\d)/?$", re.I), re.compile(r"^(l\d\d)(?:\.[\w.-]+)?$", re.I))


# --- bindings -------------------------------------------------------------------------------------------------------


def _invalid(message: str, **details: Any) -> L07Error:
    return L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, message, **details)


def normalise_binding(sources: Iterable[str] | None, kinds: Iterable[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Checked, sorted ``(sources, kinds)`` of a producer credential.

    Sources are layer names (``L02``, any case, stored ``l02``) or exact source strings (a URI, or the sibling form
    ``l02.agent-runtime``). Kinds default to what the named layers produce (contract §1.1).

    Raises:
        L07Error: E7110 when no source is named, a source or kind is not recognised, or kinds cannot be defaulted.
    """
    out_sources: set[str] = set()
    for raw in sources or ():
        for item in str(raw).split(","):
            item = item.strip()
            if not item:
                continue
            if _LAYER.match(item.lower()):
                out_sources.add(item.lower())
            elif "://" in item or "." in item:
                out_sources.add(item)
            else:
                raise _invalid(f"source {item!r} is neither a layer (L02) nor a full source "
                               f"(https://agentic.local/layers/l02, l02.agent-runtime)", source=item)
    if not out_sources:
        raise _invalid("a producer credential must be bound to at least one source (--source L0N)")
    out_kinds: set[str] = set()
    for raw in kinds or ():
        for item in str(raw).split(","):
            item = item.strip().lower()
            if not item:
                continue
            if item not in EVENT_KINDS:
                raise _invalid(f"event kind {item!r} is not one of {', '.join(EVENT_KINDS)}", kind=item,
                               allowed=list(EVENT_KINDS))
            out_kinds.add(item)
    if not out_kinds:
        for source in out_sources:
            out_kinds.update(LAYER_KINDS.get(source, ()))
        if not out_kinds:
            raise _invalid(f"name the event kinds for {', '.join(sorted(out_sources))} (--kinds "
                           f"{','.join(EVENT_KINDS)})", allowed=list(EVENT_KINDS))
    return tuple(sorted(out_sources)), tuple(sorted(out_kinds))


def layer_of(source: str) -> str | None:
    """``l02`` for ``https://agentic.local/layers/l02`` or ``l02.agent-runtime``; None otherwise."""
    for pattern in _LAYER_OF_SOURCE:
        m = pattern.match(source)
        if m:
            return m.group(1).lower()
    return None


def binding_kind(kind: str, record: Mapping[str, Any]) -> str:
    """The kind a binding must allow for this event: ``human_review`` for a reviewer's score, else its kind."""
    if kind == SCORE and record.get("evaluation_method") == HUMAN_REVIEW:
        return HUMAN_REVIEW
    return kind


@dataclass(frozen=True)
class EventBinding:
    """What one credential may send. ``holder`` names it in rejection reasons (``API key key-…``)."""

    holder: str
    sources: tuple[str, ...]
    kinds: tuple[str, ...]

    def check(self, event: CloudEvent, kind: str, record: Mapping[str, Any]) -> None:
        """Raise E7115 unless the event's source and kind are within this binding."""
        if not self.sources:
            raise _refused(f"{self.holder} is not bound to any event source, so it may not send events; make a bound "
                           f"key: l07 keys create --role producer --source L0N --kinds KIND,...", self, event)
        layer = layer_of(event.source)
        if not any(s == event.source or (s == layer) for s in self.sources):
            raise _refused(f"{self.holder} may send events from {', '.join(self.sources)} only; this event's source "
                           f"is {event.source!r}", self, event)
        needed = binding_kind(kind, record)
        if needed not in self.kinds:
            if needed == HUMAN_REVIEW:
                message = (f"{self.holder} is not bound to kind human_review: a human_review score outranks automated "
                           f"scores and its reference_output becomes training output, so only a reviewer-bound "
                           f"credential may send one (bound kinds: {', '.join(self.kinds)})")
            else:
                message = f"{self.holder} may send {', '.join(self.kinds)} events only; this is a {needed} event"
            raise _refused(message, self, event)


def _refused(message: str, binding: EventBinding | None, event: CloudEvent | None) -> L07Error:
    ERRORS.labels(error_code=L07ErrorCode.EVENT_AUTHENTICITY_FAILED.value, error_type="security").inc()
    log.error("security: event refused (E7115): %s", message,
              extra={"holder": binding.holder if binding else None, "event_id": event.id if event else None,
                     "source": event.source if event else None})
    return L07Error(L07ErrorCode.EVENT_AUTHENTICITY_FAILED, message,
                    holder=binding.holder if binding else None, source=event.source if event else None)


# --- canonical JSON (RFC 8785) and signing --------------------------------------------------------------------------


def _number(value: float) -> str:
    """ECMAScript ``Number.prototype.toString`` of a finite double, which RFC 8785 prescribes."""
    if value == 0:
        return "0"
    mantissa, _, exp_text = repr(abs(value)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    digits = int_part + frac_part
    # The decimal point sits after ``point`` digits of ``digits`` (ECMAScript's n, with k = len(digits)).
    point = len(int_part) + (int(exp_text) if exp_text else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0")
    k = len(digits)
    if k <= point <= 21:
        out = digits + "0" * (point - k)
    elif 0 < point <= 21:
        out = digits[:point] + "." + digits[point:]
    elif -6 < point <= 0:
        out = "0." + "0" * -point + digits
    else:
        e = point - 1
        out = digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return ("-" if value < 0 else "") + out


def _write(value: Any, out: list[str]) -> None:
    if value is None or isinstance(value, bool):
        out.append("null" if value is None else ("true" if value else "false"))
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and Infinity have no canonical JSON form")
        out.append(_number(value))
    elif isinstance(value, str):
        # The escapes of JSON.stringify, which RFC 8785 prescribes: \" \\ \b \f \n \r \t and \u00xx, the rest as is.
        out.append(encode_basestring(value))
    elif isinstance(value, Mapping):
        out.append("{")
        # RFC 8785 §3.2.3: members sorted by the UTF-16 code units of their names.
        for i, key in enumerate(sorted(value, key=lambda k: str(k).encode("utf-16-be"))):
            if not isinstance(key, str):
                raise TypeError("object keys must be strings")
            if i:
                out.append(",")
            out.append(encode_basestring(key))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"{type(value).__name__} is not JSON")


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical UTF-8 JSON of ``value``."""
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")


def signing_input(event: Mapping[str, Any]) -> bytes:
    """The bytes a producer signs: the canonical JSON of the structured event without its ``signature``."""
    return canonical_json({k: v for k, v in event.items() if k != SIGNATURE_ATTR})


def sign_event(event: Mapping[str, Any], private_key: ec.EllipticCurvePrivateKey, key_id: str) -> dict[str, Any]:
    """A copy of a structured-mode event signed with ``private_key`` as producer key ``key_id`` (what a producer
    does before sending; also ``l07 keys producers sign``)."""
    out = copy.deepcopy(dict(event))
    out.pop(SIGNATURE_ATTR, None)
    out[KEY_ID_ATTR] = key_id
    der = private_key.sign(signing_input(out), ec.ECDSA(hashes.SHA256()))
    out[SIGNATURE_ATTR] = base64.b64encode(der).decode("ascii")
    return out


def check_public_key(pem: str) -> tuple[ec.EllipticCurvePublicKey, str]:
    """The P-256 public key in ``pem`` and its fingerprint (sha256 hex of the DER SubjectPublicKeyInfo).

    Raises:
        L07Error: E7110 when it is not a PEM public key on P-256 (a private key is refused: L07 never holds one).
    """
    if "PRIVATE KEY" in pem:
        raise _invalid("this is a private key; register the producer's public key only (the producer keeps the private one)")
    try:
        key = serialization.load_pem_public_key(pem.encode("utf-8"))
    except (ValueError, TypeError) as exc:
        raise _invalid(f"not a PEM public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _invalid("producer keys must be ECDSA P-256 (secp256r1) public keys (contract §7.4)")
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, hashlib.sha256(der).hexdigest()


# --- verification -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verifier:
    record: ProducerKeyRecord
    key: ec.EllipticCurvePublicKey
    binding: EventBinding


def _structured_form(body: Any, headers: Mapping[str, str] | None) -> dict[str, Any] | None:
    """The event as its producer signed it (structured mode), or None for a platform L01 envelope."""
    if headers is not None and any(k.lower() == "ce-specversion" for k in headers):
        if isinstance(body, Mapping):
            body = json.dumps(body)
        return from_binary(headers, body)
    if isinstance(body, Mapping):
        obj = dict(body)
    else:
        text = bytes(body).decode("utf-8") if isinstance(body, (bytes, bytearray, memoryview)) else body
        obj, _ = json_text.read(text)
    if not isinstance(obj, dict) or "specversion" not in obj:
        return None
    return obj


class EventProvenance:
    """The checks one ingestion call applies to each parsed event.

    Args:
        binding: The caller's binding (the REST key's), or None when the caller is not bound (in-process, admin).
        producer_keys: Registered producer keys by id when ``verify_event_signatures`` is on, else None.
    """

    def __init__(self, binding: EventBinding | None, producer_keys: Mapping[str, ProducerKeyRecord] | None) -> None:
        self.binding = binding
        self.verify = producer_keys is not None
        self._records = dict(producer_keys or {})
        self._verifiers: dict[str, _Verifier] = {}

    def check(self, event: CloudEvent, kind: str, record: Mapping[str, Any], body: Any,
              headers: Mapping[str, str] | None) -> None:
        """Raise E7115 unless the event is within the caller's binding and, when verification is on, carries a
        valid signature of a registered, unrevoked producer key whose own binding covers it."""
        if self.binding is not None:
            self.binding.check(event, kind, record)
        if self.verify:
            self._verify(event, kind, record, body, headers)

    def _verify(self, event: CloudEvent, kind: str, record: Mapping[str, Any], body: Any,
                headers: Mapping[str, str] | None) -> None:
        try:
            form = _structured_form(body, headers)
        except (ValueError, TypeError, L07Error):
            form = None
        signature = form.get(SIGNATURE_ATTR) if form else None
        key_id = form.get(KEY_ID_ATTR) if form else None
        if not isinstance(signature, str) or not isinstance(key_id, str) or not signature or not key_id:
            raise _refused(f"event is not signed, and verify_event_signatures is on: it needs the '{SIGNATURE_ATTR}' "
                           f"and '{KEY_ID_ATTR}' attributes (L01 envelopes cannot be signed)", self.binding, event)
        verifier = self._verifier(key_id, event)
        try:
            der = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise _refused(f"the signature of producer key {key_id!r} is not base64", self.binding, event) from None
        try:
            signed = signing_input(form)
        except (TypeError, ValueError) as exc:  # an in-process dict holding non-JSON values, NaN...
            raise _refused(f"the event has no canonical JSON form to verify: {exc}", verifier.binding, event) from None
        try:
            verifier.key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise _refused(f"the signature does not match producer key {key_id!r}: the event was changed after "
                           f"signing, or signed with another key", verifier.binding, event) from None
        except (ValueError, TypeError) as exc:
            raise _refused(f"the signature of producer key {key_id!r} cannot be checked: {exc}", verifier.binding,
                           event) from None
        verifier.binding.check(event, kind, record)

    def _verifier(self, key_id: str, event: CloudEvent) -> _Verifier:
        cached = self._verifiers.get(key_id)
        if cached is not None:
            return cached
        rec = self._records.get(key_id)
        if rec is None:
            raise _refused(f"producer key {key_id!r} is not registered (l07 keys producers add)", self.binding, event)
        holder = f"producer key {rec.key_id}"
        if not rec.active:
            raise _refused(f"{holder} was revoked", self.binding, event)
        key, _ = check_public_key(rec.public_key_pem)
        verifier = _Verifier(rec, key, EventBinding(holder, rec.sources, rec.kinds))
        self._verifiers[key_id] = verifier
        return verifier


async def load_provenance(db: Database, settings: Settings, binding: EventBinding | None) -> EventProvenance | None:
    """The checks for one ingestion call; None when there is nothing to check (no binding, verification off).

    Producer keys are read per call, so a revocation holds from the next batch on.
    """
    keys: dict[str, ProducerKeyRecord] | None = None
    if settings.verify_event_signatures:
        async with db.session() as session:
            keys = {k.key_id: k for k in await ProducerKeyRepository(session).list(include_revoked=True)}
    if binding is None and keys is None:
        return None
    return EventProvenance(binding, keys)
