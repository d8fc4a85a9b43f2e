"""Uploaded files (``/v1/files``): bytes under ``<L07 home>/files`` (folder 0700, files 0600), one row each."""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ...models.error_codes import L07Error, L07ErrorCode
from ...settings import Settings, private_dir
from ...store.db import Database
from ...store.repositories.fine_tuning import FineTuningRepository

PURPOSES = frozenset({"fine-tune"})


class FileTooLarge(L07Error):
    """An upload over the size limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                         f"file larger than {limit} bytes (the limit is L07_API_MAX_REQUEST_BYTES)",
                         limit_bytes=limit, param="file", openai_code="file_too_large")

    @property
    def http_status(self) -> int:
        return 413


def not_found(kind: str, ident: str, param: str) -> L07Error:
    """A 404 naming what was looked for (E7028: the file or job behind a dataset that does not exist)."""
    return L07Error(L07ErrorCode.DATASET_NOT_FOUND, f"no {kind} with id {ident!r}", param=param,
                    openai_code=f"{kind.replace(' ', '_')}_not_found")


class FileStore:
    """Files uploaded for fine-tuning.

    Args:
        db: Database holding the rows.
        settings: Where the bytes go (``settings.home / "files"``).
    """

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.folder = Path(settings.home) / "files"

    async def upload(self, filename: str, purpose: str, chunks: AsyncIterator[bytes], created_by: str,
                     max_bytes: int) -> dict[str, Any]:
        """Store an upload streamed in ``chunks``.

        Raises:
            L07Error: E7110 for an unknown purpose or an empty file; 413 (``FileTooLarge``) above ``max_bytes``.
        """
        if purpose not in PURPOSES:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"purpose {purpose!r} is not supported; use 'fine-tune'", param="purpose")
        file_id = "file-" + uuid.uuid4().hex
        private_dir(self.folder)
        path = self.folder / file_id
        digest = hashlib.sha256()
        size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise FileTooLarge(max_bytes)
                    digest.update(chunk)
                    await asyncio.to_thread(out.write, chunk)
            if size == 0:
                raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "the file is empty", param="file")
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        async with self.db.session() as session:
            FineTuningRepository(session).add_file(file_id=file_id, filename=filename[:512], purpose=purpose,
                                                   bytes=size, sha256=digest.hexdigest(), path=str(path),
                                                   created_by=created_by)
            return await FineTuningRepository(session).file(file_id)  # type: ignore[return-value]

    async def get(self, file_id: str) -> dict[str, Any]:
        """One file's row (404 E7028 when unknown)."""
        async with self.db.session() as session:
            row = await FineTuningRepository(session).file(file_id)
        if row is None:
            raise not_found("file", file_id, "file_id")
        return row

    async def list(self, purpose: str | None = None) -> list[dict[str, Any]]:
        async with self.db.session() as session:
            return await FineTuningRepository(session).files(purpose)

    async def delete(self, file_id: str) -> dict[str, Any]:
        """Remove the row and the bytes; the examples imported from the file stay (they carry its provenance)."""
        row = await self.get(file_id)
        async with self.db.session() as session:
            await FineTuningRepository(session).delete_file(file_id)
        Path(row["path"]).unlink(missing_ok=True)
        return row

    async def set_import(self, file_id: str, format: str, report: dict[str, Any]) -> None:  # noqa: A002
        async with self.db.session() as session:
            await FineTuningRepository(session).set_import(file_id, format, report)
