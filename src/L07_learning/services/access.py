"""Storage side of REST access: API keys and the audit row of each API call (contract §7.4 "REST auth", "Audit").

A key is a random 256-bit token shown once at creation; the database keeps only its SHA-256. A slow password hash
(bcrypt, argon2) is not used on purpose: it protects low-entropy secrets that people choose, whereas these tokens
come from ``secrets`` and cannot be brute-forced from their hash whatever the hash speed; a slow hash would instead
add tens of milliseconds to every request (event ingestion included) and force a lookup by a separate key id. A
plain SHA-256 lets the service find the key by an indexed equality on the hash.

What a role may do is the API's business (``api/auth.py``); this module stores and finds keys, whatever the role.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from ..store.db import Database
from ..store.repositories.api_keys import ApiKeyRecord, ApiKeyRepository
from ..store.repositories.audit import audit

__all__ = ["AccessService", "ApiKeyRecord", "TOKEN_PREFIX", "hash_token"]

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
                         actor: str) -> tuple[ApiKeyRecord, str]:
        """Store a new key bound to ``role`` (already checked by the caller) and audit it.

        Returns:
            The stored record and the token. The token is not stored anywhere and cannot be shown again.
        """
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        key_id = "key-" + secrets.token_hex(6)
        async with self.db.session() as session:
            ApiKeyRepository(session).add(key_id, hash_token(token), role, name, attributes)
            await audit(
                session, "api_key.create", "api_key", key_id, actor=actor, actor_type="user",
                details={"role": role, "name": name, "attributes": attributes},
            )
        return ApiKeyRecord(key_id=key_id, key_hash=hash_token(token), role=role, name=name, attributes=attributes), token

    async def find_key(self, token: str) -> ApiKeyRecord | None:
        """The stored key for a presented token, revoked or not; None when unknown."""
        async with self.db.session() as session:
            return await ApiKeyRepository(session).by_hash(hash_token(token))

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

    async def record_api_call(self, action: str, resource_type: str, resource_id: str | None, *, result: str,
                              key_id: str, details: dict[str, Any], error_code: str | None,
                              request_id: str | None) -> None:
        """One audit row for one API call made with a key, in its own transaction."""
        async with self.db.session() as session:
            await audit(session, action, resource_type, resource_id, result=result, actor=key_id,
                        actor_type="api_key", details=details, error_code=error_code, request_id=request_id)
