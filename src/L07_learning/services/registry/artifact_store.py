"""Write-once artifact storage on fsspec, with per-file sha256 manifests (contract §7.4).

Layout: ``<artifact_root>/models/<name>/<version>/`` holds the model's files plus ``l07-manifest.json`` (the file list
with sha256 and size of each file) and ``l07-signature.json`` (checksum, signature, key version), so the folder can be
verified on its own, e.g. by L04 before loading. The root is any fsspec URL: a local folder by default, ``s3://...``
or another protocol through its fsspec plugin.

Nothing is ever overwritten: a version folder that exists already is an E7045 conflict. A registration that fails
half-way removes the folder it created, so a failed register stores nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import fsspec

from ...models.error_codes import L07Error, L07ErrorCode

log = logging.getLogger(__name__)

MANIFEST_FILE = "l07-manifest.json"
SIGNATURE_FILE = "l07-signature.json"
METADATA_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})
MANIFEST_SCHEMA = "l07-artifact-manifest-v1"
CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


def canonical_json(value: Any) -> bytes:
    """The canonical byte form of a JSON value: sorted keys, no whitespace, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def manifest_checksum(manifest: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical manifest: the value that gets signed."""
    return "sha256:" + hashlib.sha256(canonical_json(manifest)).hexdigest()


def check_model_name(name: str) -> str:
    """Reject names that could escape the artifact root (``..``, absolute paths, odd characters).

    Raises:
        L07Error: E7110 for an unsafe name.
    """
    if not _NAME_RE.match(name) or any(part in {".", ".."} for part in name.split("/")):
        raise L07Error(
            L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
            f"model name {name!r} must be letters, digits, '.', '_', '-' in '/'-separated parts (like org/model)",
            name=name,
        )
    return name


def hash_local_tree(source_dir: str | Path) -> list[dict[str, Any]]:
    """sha256 and size of every regular file under ``source_dir``, sorted by relative path.

    Raises:
        L07Error: E7042 when the folder is missing, empty, contains links or unreadable files.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"artifact source {root} is not a readable folder", source=str(root))
    files: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            problems.append(f"{rel}: symbolic links are not stored (copy the target in)")
            continue
        if path.is_dir():
            continue
        if rel in METADATA_FILES:
            continue  # re-registering an exported artifact folder: its old manifest is not model content
        try:
            files.append({"path": rel, **_hash_file(path)})
        except OSError as exc:
            problems.append(f"{rel}: {exc.strerror or exc}")
    if problems:
        raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, "artifact files unreadable: " + "; ".join(problems), problems=problems)
    if not files:
        raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"artifact source {root} holds no files", source=str(root))
    return files


def _hash_file(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size}


class ArtifactStore:
    """Model folders under an fsspec root.

    Args:
        root: fsspec URL or local path of the artifact root.
        cache_dir: Local folder where remote artifacts are downloaded before loading.
    """

    def __init__(self, root: str, cache_dir: str | Path | None = None) -> None:
        self.root_url = root
        self.fs, self.root = fsspec.core.url_to_fs(root)
        self.cache_dir = Path(cache_dir) if cache_dir else None

    @property
    def is_local(self) -> bool:
        return _is_local(self.fs)

    def model_dir(self, name: str, version: str) -> str:
        """Path (in the store's filesystem) of one model version's folder."""
        return f"{self.root.rstrip('/')}/models/{check_model_name(name)}/{version}"

    def url(self, path: str) -> str:
        """A full URL for a store path (``file:///...`` locally)."""
        return self.fs.unstrip_protocol(path)

    def put(self, source_dir: str | Path, name: str, version: str, expected: list[dict[str, Any]]) -> str:
        """Copy ``source_dir`` into a new version folder, checking each file against ``expected`` while copying.

        Args:
            source_dir: Local folder with the model files.
            name: Model name.
            version: Semantic version.
            expected: The file list from ``hash_local_tree`` (what the manifest will say).

        Returns:
            The folder's path in the store.

        Raises:
            L07Error: E7045 when the version folder exists (write-once), E7042 when copying fails or a source file
            changed between hashing and copying. Nothing stays behind on failure.
        """
        dest = self.model_dir(name, version)
        try:
            self.fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            if self.is_local:
                os.mkdir(dest)  # atomic reservation: exactly one registrant gets the folder
            elif self.fs.exists(dest):
                raise FileExistsError(dest)
        except FileExistsError:
            raise L07Error(
                L07ErrorCode.ARTIFACT_VERSIONING_ERROR,
                f"artifact folder for {name} {version} exists already; storage is write-once, register a new version",
                name=name, version=version,
            ) from None
        except OSError as exc:
            raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"cannot create {dest}: {exc}") from exc
        try:
            for entry in expected:
                got = self._copy_file(Path(source_dir) / entry["path"], f"{dest}/{entry['path']}")
                if got["sha256"] != entry["sha256"] or got["size"] != entry["size"]:
                    raise L07Error(
                        L07ErrorCode.ARTIFACT_UPLOAD_FAILURE,
                        f"{entry['path']} changed while it was being stored; register again",
                        path=entry["path"],
                    )
        except L07Error:
            self.remove(dest)
            raise
        except OSError as exc:
            self.remove(dest)
            raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"copying the artifact into {dest} failed: {exc}") from exc
        return dest

    def _copy_file(self, src: Path, dst: str) -> dict[str, Any]:
        digest = hashlib.sha256()
        size = 0
        parent = dst.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        with open(src, "rb") as fin, self.fs.open(dst, "wb") as fout:
            while chunk := fin.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                fout.write(chunk)
        return {"sha256": digest.hexdigest(), "size": size}

    def write_metadata(self, dest: str, manifest: dict[str, Any], signature: dict[str, Any]) -> None:
        """Write the manifest and signature files, then make local files read-only (write-once on disk too)."""
        with self.fs.open(f"{dest}/{MANIFEST_FILE}", "wb") as fh:
            fh.write(json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
        with self.fs.open(f"{dest}/{SIGNATURE_FILE}", "wb") as fh:
            fh.write(json.dumps(signature, indent=2, sort_keys=True).encode("utf-8"))
        if self.is_local:
            for path in Path(dest).rglob("*"):
                if path.is_file():
                    path.chmod(0o444)

    def remove(self, dest: str) -> None:
        """Delete a folder this process created (only used to undo a failed registration)."""
        try:
            if self.is_local:
                for path in Path(dest).rglob("*"):
                    if path.is_file():
                        path.chmod(0o644)
                shutil.rmtree(dest, ignore_errors=True)
            elif self.fs.exists(dest):
                self.fs.rm(dest, recursive=True)
        except OSError as exc:  # leave a log line; the DB never points at this folder
            log.warning("could not remove a half-written artifact folder", extra={"path": dest, "error": str(exc)})

    @staticmethod
    def check_files(url: str, manifest: dict[str, Any]) -> list[str]:
        """Compare a stored folder (any fsspec URL) with its manifest.

        Returns:
            One line per problem (missing, extra, size or sha256 mismatch, manifest file changed); empty when intact.
        """
        fs, dest = fsspec.core.url_to_fs(url)
        dest = dest.rstrip("/")
        problems: list[str] = []
        try:
            if not fs.exists(dest):
                return [f"artifact folder {url} is missing"]
            present = {p[len(dest) + 1:] for p in fs.find(dest) if p.startswith(dest + "/")}
        except OSError as exc:
            return [f"artifact folder unreadable: {exc}"]
        expected = {f["path"]: f for f in manifest.get("files", [])}
        for rel in sorted(set(expected) - present):
            problems.append(f"{rel}: missing")
        for rel in sorted(present - set(expected) - METADATA_FILES):
            problems.append(f"{rel}: not in the manifest")
        for rel, entry in expected.items():
            if rel not in present:
                continue
            try:
                got = _hash_fs_file(fs, f"{dest}/{rel}")
            except OSError as exc:
                problems.append(f"{rel}: unreadable ({exc})")
                continue
            if got["size"] != entry["size"]:
                problems.append(f"{rel}: size {got['size']} != {entry['size']}")
            elif got["sha256"] != entry["sha256"]:
                problems.append(f"{rel}: sha256 mismatch")
        if MANIFEST_FILE in present:
            try:
                with fs.open(f"{dest}/{MANIFEST_FILE}", "rb") as fh:
                    on_disk = json.loads(fh.read())
                if on_disk != manifest:
                    problems.append(f"{MANIFEST_FILE}: differs from the registered manifest")
            except (OSError, ValueError) as exc:
                problems.append(f"{MANIFEST_FILE}: unreadable ({exc})")
        else:
            problems.append(f"{MANIFEST_FILE}: missing")
        return problems

    def materialise(self, url: str, model_id: str) -> Path:
        """A local folder with the artifact's files: the folder itself when local, else a download into the cache."""
        fs, dest = fsspec.core.url_to_fs(url)
        if _is_local(fs):
            return Path(dest)
        if self.cache_dir is None:
            raise L07Error(L07ErrorCode.CONFIGURATION_NOT_FOUND, "a local cache folder is needed for remote artifacts")
        local = self.cache_dir / model_id
        if local.exists():
            shutil.rmtree(local)
        local.mkdir(parents=True)
        try:
            fs.get(dest.rstrip("/") + "/", str(local), recursive=True)
        except OSError as exc:
            raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"downloading {url} failed: {exc}") from exc
        return local


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol
    return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))


def _hash_fs_file(fs: Any, path: str) -> dict[str, Any]:
    digest = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return {"sha256": digest.hexdigest(), "size": size}
