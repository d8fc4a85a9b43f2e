"""REST API keys (``l07_api_keys``): only the hash of each key is stored, never the key itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ...models._base import utcnow
from ..tables import SqlApiKey


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
    )


class ApiKeyRepository:
    """Data access for ``l07_api_keys`` inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, key_id: str, key_hash: str, role: str, name: str | None, attributes: dict[str, Any]) -> None:
        """Insert a new key row."""
        self.session.add(
            SqlApiKey(key_id=key_id, key_hash=key_hash, role=role, name=name, attributes=attributes, created_at=utcnow())
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
