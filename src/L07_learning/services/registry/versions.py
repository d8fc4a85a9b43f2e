"""Semantic versions of registered models: ordering, and the version a new registration gets."""

from __future__ import annotations

from ...models._base import bump_version
from ...models.error_codes import L07Error, L07ErrorCode
from ...models.model_artifact import ModelArtifact


def semver_key(version: str) -> tuple[int, int, int]:
    """``MAJOR.MINOR.PATCH`` as a sortable tuple; pre-release and build suffixes are ignored."""
    major, minor, patch = (int(p) for p in version.split("-")[0].split("+")[0].split("."))
    return major, minor, patch


def version_after(existing: list[str], change: str) -> str:
    """The version after the highest of ``existing`` for a MAJOR, MINOR or PATCH change."""
    return bump_version(max(existing, key=semver_key), change)


def registration_version(artifact: ModelArtifact, existing: list[str]) -> str:
    """The version ``artifact`` registers as: the one it sets, else the next MINOR one of its name.

    Raises:
        L07Error: E7045 when that version of the name exists (versions are immutable).
    """
    version = artifact.version
    if "version" not in artifact.model_fields_set and existing:
        version = version_after(existing, "MINOR")
    if version in existing:
        raise L07Error(
            L07ErrorCode.ARTIFACT_VERSIONING_ERROR,
            f"{artifact.name} {version} is registered already; versions are immutable, use {version_after(existing, 'PATCH')} "
            f"or later", name=artifact.name, version=version,
        )
    return version
