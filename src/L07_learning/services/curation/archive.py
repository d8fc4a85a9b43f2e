"""A dataset version as one downloadable zip: the export's split files (JSONL or Parquet) and its manifest, so a
browser gets in one file what ``l07 datasets export`` writes into a folder (and the same ``dataset.export`` audit)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..dataset_curator import DatasetCurator

__all__ = ["export_archive"]


async def export_archive(curator: DatasetCurator, dataset_id: str, version: str | None,
                         fmt: str = "jsonl") -> tuple[str, bytes]:
    """``(file name, zip bytes)`` of the version's export; the same errors as ``DatasetCurator.export``."""
    with tempfile.TemporaryDirectory(prefix="l07-export-") as tmp:
        result = await curator.export(dataset_id, version, tmp, fmt)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(tmp).iterdir()):
                archive.write(path, arcname=path.name)
    return f"{result['name']}-{result['version']}-{fmt}.zip", buffer.getvalue()
