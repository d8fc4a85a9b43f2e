"""Field types shared by the response schemas."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator


def as_utc(value: datetime) -> datetime:
    """Stored times are UTC; SQLite returns them without a zone, which is not RFC 3339. Attach UTC when missing."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


UtcDateTime = Annotated[datetime, AfterValidator(as_utc)]
