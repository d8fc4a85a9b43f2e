"""Write-once artifact storage on fsspec, with per-file sha256 manifests (contract §7.4).

Layout: ``<artifact_root>/models/<name>/<version>/`` holds the model's files plus ``l07-manifest.json`` (the file list
with sha256 and size of each file) and ``l07-signature.json`` (checksum, signature, key version), so the folder can be
verified on its own, e.g. by L04 before loading. The root is any fsspec URL: a local folder by default, ``s3://...``
or another protocol through its fsspec plugin.

Nothing is ever overwritten: a version folder that exists already is an E7045 conflict. Locally a version folder
appears complete or not at all (copied to a partial folder, renamed into place); a registration that fails half-way
removes what it created, and the debris of a hard crash is cleaned by the next registration of the name (partial
folders) or moved to ``<root>/orphans/`` (a complete folder no registry row refers to).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import fsspec

from ...models.error_codes import L07Error, L07ErrorCode

log = logging.getLogger(__name__)

MANIFEST_FILE = "l07-manifest.json"
SIGNATURE_FILE = "l07-signature.json"
METADATA_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})
# v2 binds the manifest to its registry row (model id, name, version, type, parent); v1 manifests carry name, version
# and type only and no longer verify (re-sign them: ``l07 models resign``).
MANIFEST_SCHEMA = "l07-artifact-manifest-v2"
LEGACY_MANIFEST_SCHEMAS = frozenset({"l07-artifact-manifest-v1"})
BOUND_FIELDS = ("model_id", "name", "version", "model_type", "parent_model_id")
CHUNK = 1 << 20
# A copy in progress lives in ``<name folder>/.l07-partial-<version>~<host>~<pid>~<random>`` until it is renamed into
# place; one whose process is gone, or older than this, is debris of a crash.
PARTIAL_PREFIX = ".l07-partial-"
PARTIAL_MAX_AGE_S = 24 * 3600.0
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

    def put(self, source_dir: str | Path, name: str, version: str, expected: list[dict[str, Any]],
            manifest: dict[str, Any] | None = None, signature: dict[str, Any] | None = None) -> str:
        """Copy ``source_dir`` into a new version folder, checking each file against ``expected`` while copying.

        Locally the files (and the manifest and signature files, when given) go to a hidden partial folder beside
        the version folder, which is renamed into place only when complete: a crash mid-copy leaves a partial folder
        (cleaned later by ``clean_partials``), never a half-written version folder that blocks the version for good.

        Args:
            source_dir: Local folder with the model files.
            name: Model name.
            version: Semantic version.
            expected: The file list from ``hash_local_tree`` (what the manifest will say).
            manifest, signature: Written into the folder before it appears (``write_metadata``'s arguments).

        Returns:
            The folder's path in the store.

        Raises:
            L07Error: E7045 when the version folder exists (write-once), E7042 when copying fails or a source file
            changed between hashing and copying. Nothing stays behind on failure.
        """
        dest = self.model_dir(name, version)
        parent = dest.rsplit("/", 1)[0]
        try:
            self.fs.makedirs(parent, exist_ok=True)
            if self.fs.exists(dest):
                raise FileExistsError(dest)
        except FileExistsError:
            raise self._exists(name, version) from None
        except OSError as exc:
            raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"cannot create {dest}: {exc}") from exc
        if self.is_local:
            self.clean_partials(name)
            work = f"{parent}/{PARTIAL_PREFIX}{version}~{_owner_tag()}"
            os.mkdir(work)
        else:
            work = dest  # object stores have no atomic folder rename; the folder is removed on failure
        try:
            for entry in expected:
                got = self._copy_file(Path(source_dir) / entry["path"], f"{work}/{entry['path']}")
                if got["sha256"] != entry["sha256"] or got["size"] != entry["size"]:
                    raise L07Error(
                        L07ErrorCode.ARTIFACT_UPLOAD_FAILURE,
                        f"{entry['path']} changed while it was being stored; register again",
                        path=entry["path"],
                    )
            if manifest is not None and signature is not None:
                self.write_metadata(work, manifest, signature)
            if work != dest:
                try:
                    os.rename(work, dest)  # atomic; fails on a non-empty dest, so a concurrent registrant loses here
                except OSError as exc:
                    if os.path.isdir(dest):
                        raise self._exists(name, version) from exc
                    raise
        except L07Error:
            self.remove(work)
            raise
        except OSError as exc:
            self.remove(work)
            raise L07Error(L07ErrorCode.ARTIFACT_UPLOAD_FAILURE, f"copying the artifact into {dest} failed: {exc}") from exc
        except BaseException:
            # Cancelled or interrupted: undo when we can; a hard kill leaves only the partial folder (cleaned later).
            self.remove(work)
            raise
        return dest

    @staticmethod
    def _exists(name: str, version: str) -> L07Error:
        return L07Error(
            L07ErrorCode.ARTIFACT_VERSIONING_ERROR,
            f"artifact folder for {name} {version} exists already; storage is write-once, register a new version",
            name=name, version=version,
        )

    def clean_partials(self, name: str, older_than_s: float = PARTIAL_MAX_AGE_S) -> list[str]:
        """Remove the partial folders of ``name`` left by crashed copies: those of a process of this host that is
        gone, and any older than ``older_than_s`` (a copy on another host). Returns what was removed."""
        if not self.is_local:
            return []
        parent = Path(self.model_dir(name, "x")).parent
        removed: list[str] = []
        if not parent.is_dir():
            return removed
        now = time.time()
        for path in parent.glob(f"{PARTIAL_PREFIX}*"):
            try:
                stale = now - path.stat().st_mtime > older_than_s
            except OSError:
                continue
            if stale or _dead_owner(path.name):
                self.remove(str(path))
                removed.append(str(path))
        if removed:
            log.warning("removed partial artifact folders left by interrupted copies", extra={"paths": removed})
        return removed

    def quarantine(self, name: str, version: str) -> str | None:
        """Move a complete version folder that no registry row refers to (its registration crashed between the copy
        and the database commit) to ``<root>/orphans/``, so the version can be registered again. Returns where."""
        dest = self.model_dir(name, version)
        target = f"{self.root.rstrip('/')}/orphans/{check_model_name(name)}/{version}~{_owner_tag()}"
        try:
            if not self.fs.exists(dest):
                return None
            self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
            if self.is_local:
                os.rename(dest, target)
            else:
                self.fs.mv(dest, target, recursive=True)
        except OSError as exc:
            log.warning("could not move an orphaned artifact folder aside", extra={"path": dest, "error": str(exc)})
            return None
        log.warning("orphaned artifact folder moved aside", extra={"path": dest, "to": target})
        return target

    def age_s(self, name: str, version: str) -> float | None:
        """Seconds since the version folder was last modified (None when it does not exist)."""
        dest = self.model_dir(name, version)
        try:
            if self.is_local:
                return time.time() - os.stat(dest).st_mtime
            info = self.fs.info(dest)
        except (OSError, FileNotFoundError):
            return None
        stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
        if stamp is None:
            return None
        stamp = stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)
        return time.time() - stamp

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

    @staticmethod
    def replace_metadata(url: str, manifest: dict[str, Any], signature: dict[str, Any]) -> None:
        """Replace the manifest and signature files of a stored folder (re-signing only; model files are untouched).
        Locally each file is swapped in by rename, so a reader sees the old or the new file, never half of one."""
        fs, dest = fsspec.core.url_to_fs(url)
        dest = dest.rstrip("/")
        for name, value in ((MANIFEST_FILE, manifest), (SIGNATURE_FILE, signature)):
            body = json.dumps(value, indent=2, sort_keys=True).encode("utf-8")
            if _is_local(fs):
                tmp = Path(dest) / f".{name}.{uuid.uuid4().hex[:8]}"
                tmp.write_bytes(body)
                tmp.chmod(0o444)
                os.replace(tmp, Path(dest) / name)
            else:
                fs.pipe_file(f"{dest}/{name}", body)

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


def _owner_tag() -> str:
    # '~' cannot occur in a host name or a version, so the parts split back unambiguously.
    return f"{socket.gethostname()}~{os.getpid()}~{uuid.uuid4().hex[:8]}"


def _dead_owner(folder_name: str) -> bool:
    """True when a partial folder was made by a process of this host that no longer runs."""
    parts = folder_name.split("~")
    if len(parts) != 4 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
