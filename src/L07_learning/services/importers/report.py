"""The per-line report of one import: what was imported, what the filter held back and why, what was refused."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ImportReport:
    """Counts and per-line detail. Every record of the source is in exactly one of ``imported`` (accepted
    examples), ``filtered`` (read, but REVIEW, REJECT or QUARANTINE by the quality filter), ``refused`` (not readable
    as an example, with its E7xxx code) or ``skipped`` (not training data by its own type)."""

    format: str
    file: str
    sha256: str
    imported: list[dict[str, Any]] = field(default_factory=list)
    filtered: list[dict[str, Any]] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    pairs: int = 0

    @property
    def example_ids(self) -> list[str]:
        return [r["example_id"] for r in self.imported]

    def counts(self) -> dict[str, int]:
        return {"imported": len(self.imported), "filtered": len(self.filtered), "refused": len(self.refused),
                "skipped": len(self.skipped), "preference_pairs": self.pairs}

    def filtered_reasons(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.filtered:
            key = f"{r['decision']}/{r['reason']}"
            out[key] = out.get(key, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "file": self.file, "sha256": self.sha256, "counts": self.counts(),
                "filtered_reasons": self.filtered_reasons(), "imported": self.imported, "filtered": self.filtered,
                "refused": self.refused, "skipped": self.skipped}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImportReport":
        return cls(format=data["format"], file=data["file"], sha256=data["sha256"], imported=data["imported"],
                   filtered=data["filtered"], refused=data["refused"], skipped=data["skipped"],
                   pairs=data["counts"]["preference_pairs"])
