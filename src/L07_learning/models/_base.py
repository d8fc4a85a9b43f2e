"""Shared helpers for the domain models: UTC clock, id factory, semver check."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict

SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?\Z")


def utcnow() -> datetime:
    """Timezone-aware now in UTC (the contract's clock)."""
    return datetime.now(timezone.utc)


def new_id() -> str:
    """A UUID4 string, the contract's id format."""
    return str(uuid.uuid4())


def check_semver(value: str) -> str:
    """Validate a semantic version string (``MAJOR.MINOR.PATCH``)."""
    if not SEMVER_RE.match(value):
        raise ValueError(f"'{value}' is not a semantic version (MAJOR.MINOR.PATCH)")
    return value


def bump_version(version: str, change: str) -> str:
    """Next semantic version for a MAJOR, MINOR or PATCH change."""
    major, minor, patch = (int(p) for p in version.split("-")[0].split("+")[0].split("."))
    change = change.upper()
    if change == "MAJOR":
        return f"{major + 1}.0.0"
    if change == "MINOR":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


class L07Model(BaseModel):
    """Base for every domain model: enums serialise by value, assignment is validated."""

    model_config = ConfigDict(use_enum_values=False, validate_assignment=True, populate_by_name=True)
