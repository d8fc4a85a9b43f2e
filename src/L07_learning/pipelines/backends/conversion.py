"""A registered model converted once to a fast engine's file format, cached beside the model by its content hash.

The key is the sha256 of the model's (and adapter's) weight and config files, so a retrained model never meets a
stale conversion and the same model converted in two processes lands on the same file (written atomically).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from ...settings import get_settings
from ..export import merge_to_hf

_HASHED_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt")


def model_fingerprint(model_dir: str | Path, adapter_dir: str | Path | None = None) -> str:
    """sha256 over the names and bytes of the files that decide the model's answers."""
    digest = hashlib.sha256()
    for root in (model_dir, adapter_dir):
        if root is None:
            continue
        for f in sorted(Path(root).iterdir()):
            if f.is_file() and f.name.endswith(_HASHED_SUFFIXES):
                digest.update(f.name.encode() + b"\0")
                with f.open("rb") as fh:
                    for block in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(block)
        digest.update(b"\1")
    return digest.hexdigest()


def cache_dir_for(model_dir: str | Path) -> Path:
    """``<parent of the model>/.l07-inference``, or the model cache when the model's folder is read-only.

    Beside the model rather than inside it: the registry verifies the model folder's files, which must not change.
    """
    beside = Path(model_dir).resolve().parent / ".l07-inference"
    try:
        beside.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=beside, prefix=".probe.")
        probe.close()
        return beside
    except OSError:
        fallback = Path(get_settings().model_cache_dir) / "inference"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def source_version(module_file: str | Path) -> str:
    """Short hash of a converter's source: a changed exporter never reuses files the old one wrote."""
    return hashlib.sha256(Path(module_file).read_bytes()).hexdigest()[:12]


def converted(model_dir: str | Path, adapter_dir: str | Path | None, name: str,
              build: Callable[[Path, Path], Path], version: str = "") -> Path:
    """The cached conversion ``<sha256>[-<version>].<name>``; built by ``build(hf_dir, out_path)`` on first use.

    With an adapter, ``hf_dir`` is a temporary merged copy of model + adapter (removed afterwards).
    """
    stem = model_fingerprint(model_dir, adapter_dir) + (f"-{version}" if version else "")
    target = cache_dir_for(model_dir) / f"{stem}.{name}"
    if target.exists():
        return target
    if adapter_dir is None:
        return build(Path(model_dir), target)

    work = Path(tempfile.mkdtemp(prefix=".merge.", dir=target.parent))
    try:
        return build(merge_to_hf(model_dir, adapter_dir, work / "merged"), target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
