"""REST API keys (``l07_api_keys``): only the hash of each key is stored, never the key itself. Producer public keys
(``l07_producer_keys``) that sign consumed events: public parts only, L07 never holds a producer's private key."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ..tables import SqlApiKey, SqlProducerKey


@dataclass(frozen=True)
class ApiKeyRecord:
    """One stored key as the service layer sees it (the hash is all there is of the secret)."""

    key_id: str
    key_hash: str
    role: str
    name: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    # Producer keys: the sources and event kinds they may send; empty for other roles and for unbound keys.
    sources: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _record(row: SqlApiKey) -> ApiKeyRecord:
    return ApiKeyRecord(
        key_id=row.key_id,
        key_hash=row.key_hash,
        role=row.role,
        name=row.name,
        attributes=dict(row.attributes or {}),
        created_at=row.created_at,
        revoked_at=row.revoked_at,
        sources=tuple(row.sources or ()),
        kinds=tuple(row.kinds or ()),
    )


class ApiKeyRepository:
    """Data access for ``l07_api_keys`` inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, key_id: str, key_hash: str, role: str, name: str | None, attributes: dict[str, Any],
            sources: tuple[str, ...] = (), kinds: tuple[str, ...] = ()) -> None:
        """Insert a new key row."""
        self.session.add(
            SqlApiKey(key_id=key_id, key_hash=key_hash, role=role, name=name, attributes=attributes,
                      sources=list(sources) or None, kinds=list(kinds) or None, created_at=utcnow())
        )

    async def by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        """The key whose hash matches (revoked keys included; the caller decides)."""
        row = await self.session.scalar(select(SqlApiKey).where(SqlApiKey.key_hash == key_hash))
        return _record(row) if row is not None else None

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The key with this id, or None."""
        row = await self.session.get(SqlApiKey, key_id)
        return _record(row) if row is not None else None

    async def list(self, include_revoked: bool = False) -> list[ApiKeyRecord]:
        """Every key, oldest first."""
        stmt = select(SqlApiKey).order_by(SqlApiKey.created_at, SqlApiKey.key_id)
        if not include_revoked:
            stmt = stmt.where(SqlApiKey.revoked_at.is_(None))
        return [_record(r) for r in (await self.session.scalars(stmt)).all()]

    async def revoke(self, key_id: str) -> bool:
        """Mark a key revoked; False when it does not exist or was already revoked."""
        row = await self.session.get(SqlApiKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        return True


@dataclass(frozen=True)
class ProducerKeyRecord:
    """A registered producer public key with its binding."""

    key_id: str
    name: str | None
    public_key_pem: str
    fingerprint: str
    sources: tuple[str, ...]
    kinds: tuple[str, ...]
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def _producer(row: SqlProducerKey) -> ProducerKeyRecord:
    return ProducerKeyRecord(
        key_id=row.key_id, name=row.name, public_key_pem=row.public_key_pem, fingerprint=row.fingerprint,
        sources=tuple(row.sources or ()), kinds=tuple(row.kinds or ()), created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


class ProducerKeyRepository:
    """Data access for ``l07_producer_keys`` inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, record: ProducerKeyRecord) -> None:
        """Insert a new producer key."""
        self.session.add(SqlProducerKey(
            key_id=record.key_id, name=record.name, public_key_pem=record.public_key_pem,
            fingerprint=record.fingerprint, sources=list(record.sources), kinds=list(record.kinds), created_at=utcnow(),
        ))

    async def get(self, key_id: str) -> ProducerKeyRecord | None:
        """The producer key with this id (revoked or not), or None."""
        row = await self.session.get(SqlProducerKey, key_id)
        return _producer(row) if row is not None else None

    async def by_fingerprint(self, fingerprint: str) -> ProducerKeyRecord | None:
        """The producer key with this public-key fingerprint, or None."""
        row = await self.session.scalar(select(SqlProducerKey).where(SqlProducerKey.fingerprint == fingerprint))
        return _producer(row) if row is not None else None

    async def list(self, include_revoked: bool = False) -> list[ProducerKeyRecord]:
        """Every producer key, oldest first."""
        stmt = select(SqlProducerKey).order_by(SqlProducerKey.created_at, SqlProducerKey.key_id)
        if not include_revoked:
            stmt = stmt.where(SqlProducerKey.revoked_at.is_(None))
        return [_producer(r) for r in (await self.session.scalars(stmt)).all()]

    async def revoke(self, key_id: str) -> bool:
        """Mark a producer key revoked; False when it does not exist or was already revoked."""
        row = await self.session.get(SqlProducerKey, key_id)
        if row is None or row.revoked_at is not None:
            return False
        row.revoked_at = utcnow()
        return True
