"""Storage side of REST access: API keys and the audit row of each API call (contract §7.4 "REST auth", "Audit").

A key is a random 256-bit token shown once at creation; the database keeps only its SHA-256. A slow password hash
(bcrypt, argon2) is not used on purpose: it protects low-entropy secrets that people choose, whereas these tokens
come from ``secrets`` and cannot be brute-forced from their hash whatever the hash speed; a slow hash would instead
add tens of milliseconds to every request (event ingestion included) and force a lookup by a separate key id. A
plain SHA-256 lets the service find the key by an indexed equality on the hash.

What a role may do is the API's business (``api/auth.py``); this module stores and finds keys, whatever the role.
It also keeps the producer public keys that sign consumed events (contract §1.9, §7.4; ``ingestion/provenance.py``).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from ..store.db import Database
from ..models.error_codes import L07Error, L07ErrorCode
from ..store.repositories.api_keys import ApiKeyRecord, ApiKeyRepository, ProducerKeyRecord, ProducerKeyRepository
from ..store.repositories.audit import audit
from .ingestion.provenance import check_public_key, normalise_binding

__all__ = ["AccessService", "ApiKeyRecord", "ProducerKeyRecord", "TOKEN_PREFIX", "hash_token"]

TOKEN_PREFIX = "l07_"
# 32 random bytes = 256 bits: far beyond brute force, which is what makes a fast hash safe here.
TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    """SHA-256 hex of a key token (what the database stores)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class AccessService:
    """Creates, finds, lists and revokes API keys, and audits API calls.

    Args:
        db: The database holding ``l07_api_keys`` and the audit log.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    async def create_key(self, role: str, name: str | None, attributes: dict[str, Any],
                         actor: str, *, sources: tuple[str, ...] = (),
                         kinds: tuple[str, ...] = ()) -> tuple[ApiKeyRecord, str]:
        """Store a new key bound to ``role`` (and, for a producer, to ``sources`` and ``kinds``), already checked by
        the caller, and audit it.

        Returns:
            The stored record and the token. The token is not stored anywhere and cannot be shown again.
        """
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        key_id = "key-" + secrets.token_hex(6)
        async with self.db.session() as session:
            ApiKeyRepository(session).add(key_id, hash_token(token), role, name, attributes, sources, kinds)
            await audit(
                session, "api_key.create", "api_key", key_id, actor=actor, actor_type="user",
                details={"role": role, "name": name, "attributes": attributes, "sources": list(sources),
                         "kinds": list(kinds)},
            )
        return ApiKeyRecord(key_id=key_id, key_hash=hash_token(token), role=role, name=name, attributes=attributes,
                            sources=tuple(sources), kinds=tuple(kinds)), token

    async def find_key(self, token: str) -> ApiKeyRecord | None:
        """The stored key for a presented token, revoked or not; None when unknown."""
        async with self.db.session() as session:
            return await ApiKeyRepository(session).by_hash(hash_token(token))

    async def get_key(self, key_id: str) -> ApiKeyRecord | None:
        """The stored key with this id, revoked or not; None when unknown (the console's session names keys by id)."""
        async with self.db.session() as session:
            return await ApiKeyRepository(session).get(key_id)

    async def list_keys(self, include_revoked: bool = False) -> list[ApiKeyRecord]:
        """Stored keys (hashes only)."""
        async with self.db.session() as session:
            return await ApiKeyRepository(session).list(include_revoked=include_revoked)

    async def revoke_key(self, key_id: str, actor: str) -> bool:
        """Revoke a key; returns False when there was nothing to revoke. Audited either way."""
        async with self.db.session() as session:
            done = await ApiKeyRepository(session).revoke(key_id)
            await audit(
                session, "api_key.revoke", "api_key", key_id, result="success" if done else "noop",
                actor=actor, actor_type="user",
            )
        return done

    # --- producer public keys (event signatures) ------------------------------------------------------------------

    async def add_producer_key(self, public_key_pem: str, *, sources: Any, kinds: Any = None, name: str | None = None,
                               key_id: str | None = None, actor: str) -> ProducerKeyRecord:
        """Register a producer's ECDSA P-256 public key, bound to ``sources`` and ``kinds``, and audit it.

        Args:
            public_key_pem: The producer's public key (PEM, SubjectPublicKeyInfo).
            sources: Layers (``L02``) or exact sources the key may sign for.
            kinds: Event kinds (``trace``, ``score``, ``plan``, ``response``, ``human_review``); default: what the
                layers produce.
            key_id: The id producers put in ``signaturekeyid``; default: the first 16 hex digits of the fingerprint.

        Raises:
            L07Error: E7110 for a key that is not a P-256 public key, a bad binding, or a key or id already registered.
        """
        _, fingerprint = check_public_key(public_key_pem)
        bound_sources, bound_kinds = normalise_binding(sources, kinds)
        key_id = (key_id or fingerprint[:16]).strip()
        if not key_id or len(key_id) > 64 or any(c.isspace() for c in key_id):
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           "a producer key id is 1-64 characters without spaces", key_id=key_id)
        record = ProducerKeyRecord(key_id=key_id, name=name, public_key_pem=public_key_pem.strip() + "\n",
                                   fingerprint=fingerprint, sources=bound_sources, kinds=bound_kinds)
        async with self.db.session() as session:
            repo = ProducerKeyRepository(session)
            same = await repo.by_fingerprint(fingerprint) or await repo.get(key_id)
            if same is not None:
                raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                               f"producer key {same.key_id} already holds this id or public key"
                               + (" (revoked)" if not same.active else ""), key_id=same.key_id)
            repo.add(record)
            await audit(session, "producer_key.add", "producer_key", key_id, actor=actor, actor_type="user",
                        details={"name": name, "fingerprint": fingerprint, "sources": list(bound_sources),
                                 "kinds": list(bound_kinds)})
        return record

    async def list_producer_keys(self, include_revoked: bool = False) -> list[ProducerKeyRecord]:
        """Registered producer keys (public parts only)."""
        async with self.db.session() as session:
            return await ProducerKeyRepository(session).list(include_revoked=include_revoked)

    async def remove_producer_key(self, key_id: str, actor: str) -> bool:
        """Revoke a producer key: its signatures are refused from the next batch on. The row stays, so old
        rejections and audit rows keep naming a known key. False when there was nothing to revoke; audited."""
        async with self.db.session() as session:
            done = await ProducerKeyRepository(session).revoke(key_id)
            await audit(session, "producer_key.revoke", "producer_key", key_id, result="success" if done else "noop",
                        actor=actor, actor_type="user")
        return done

    async def record_api_call(self, action: str, resource_type: str, resource_id: str | None, *, result: str,
                              key_id: str, details: dict[str, Any], error_code: str | None,
                              request_id: str | None) -> None:
        """One audit row for one API call made with a key, in its own transaction."""
        async with self.db.session() as session:
            await audit(session, action, resource_type, resource_id, result=result, actor=key_id,
                        actor_type="api_key", details=details, error_code=error_code, request_id=request_id)
