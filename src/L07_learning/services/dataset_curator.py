"""``DatasetCurator``: versioned, content-addressed, leak-free datasets (contract §3.2, §4.3, §5.4).

Every version is immutable. ``create_dataset`` starts a dataset at 1.0.0 (a rebuild under an existing name is the
next MAJOR) with a fresh stratified split; ``add_examples`` makes a MINOR version in which existing members keep their
split. A version is stored in one transaction together with its ``learning.dataset_ready`` event and audit record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from .. import __version__
from ..events.publisher import EventPublisher
from ..models._base import bump_version, new_id, utcnow
from ..models.dataset import (
    DEFAULT_SPLIT_RATIOS,
    ChangeType,
    Dataset,
    DatasetLineage,
    DatasetStatistics,
    DatasetVersion,
    validate_split_ratios,
)
from ..models.error_codes import L07Error, L07ErrorCode
from ..models.training_example import TrainingExample
from ..observability.metrics import DATASET_QUALITY_MEAN, DATASET_QUALITY_STDDEV, DATASET_SIZE, DATASETS_CREATED
from ..settings import Settings, get_settings
from ..store.db import Database, get_database
from ..store.repositories.audit import audit
from ..store.repositories.datasets import DatasetRepository
from ..store.repositories.examples import ExampleRepository
from .curation.export import FORMATS, write_split_files
from .curation.splits import SPLIT_ORDER, assign_splits, extend_splits, member_hash, strata, version_checksum
from .curation.statistics import compute_statistics
from .filtering.config import FilterConfig

log = logging.getLogger(__name__)

MAX_DATASET_SIZE = 100_000
"""Above this, stratified downsampling applies (contract §4.3, E7024)."""
MANIFEST_FORMAT = "l07-dataset-manifest/1"


def _code_version() -> str:
    """Package version plus the git commit of the source tree when there is one (for rebuilds)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
            timeout=2, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


_CODE_VERSION: str | None = None


def code_version() -> str:
    global _CODE_VERSION
    if _CODE_VERSION is None:
        _CODE_VERSION = _code_version()
    return _CODE_VERSION


class DatasetCurator:
    """Builds and versions datasets from training examples.

    Args:
        db: Database (default: the shared one from settings).
        settings: Settings (default ``get_settings()``).
        filter_config: The filter configuration the examples passed; pinned in each version's lineage.
    """

    def __init__(self, db: Database | None = None, settings: Settings | None = None,
                 filter_config: FilterConfig | None = None) -> None:
        self.settings = settings or get_settings()
        self.db = db or get_database(self.settings.database_url)
        self.filter_config = filter_config or FilterConfig.from_settings(self.settings)

    # --- create and extend -----------------------------------------------------------------------------------------

    async def create_dataset(
        self,
        name: str,
        examples: list[TrainingExample],
        split_ratios: dict[str, float] | None = None,
        seed: int = 42,
        min_examples: int = 1000,
        reason: str | None = None,
        created_by: str = "l07",
        splits: dict[str, str] | None = None,
    ) -> Dataset:
        """Build a dataset version with a fresh stratified, leak-free split.

        A new name starts at 1.0.0; an existing name gets its next MAJOR version (a full rebuild). ``splits`` fixes
        the split of the examples it names (an OpenAI job's training file trains, its validation file validates);
        the caller then answers for keeping related examples apart.

        Raises:
            L07Error: E7020 with zero examples, E7029 for invalid ratios, E7110 for an invalid example.
        """
        started = time.perf_counter()
        ratios = self._ratios(split_ratios)
        examples = self._unique(self._check_examples(examples, name))
        if not examples:
            raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES, f"no examples to build dataset {name!r}", name=name)
        examples = self._downsample(examples, seed)
        split_of = assign_splits(examples, ratios, seed, self.filter_config.near_duplicate_jaccard)
        split_of.update({k: v for k, v in (splits or {}).items() if k in split_of})
        async with self.db.session() as session:

            existing = await DatasetRepository(session).get_by_name(name)
        if existing is None:
            dataset_id, version, parent, change = new_id(), "1.0.0", None, ChangeType.MAJOR
        else:
            dataset_id, parent = existing.dataset_id, existing.latest_version
            version, change = bump_version(parent, "MAJOR"), ChangeType.MAJOR
        return await self._store(
            dataset_id, name, version, parent, change, examples, split_of, ratios, seed, min_examples,
            added=[e.example_id for e in examples], removed=[], reason=reason or ("rebuild" if parent else "create"),
            created_by=created_by, new_dataset=existing is None, started=started,
        )

    async def add_examples(self, dataset_id: str, examples: list[TrainingExample], reason: str | None = None,
                           min_examples: int = 1000) -> Dataset:
        """A new MINOR version with ``examples`` appended; the previous version is unchanged.

        Existing members keep their split; examples already in the dataset are skipped. New examples that share an
        execution, content or near-duplicate cluster with a member join that member's split.

        Raises:
            L07Error: E7028 for an unknown dataset, E7020 when nothing new is added, E7110 for an invalid example.
        """
        started = time.perf_counter()
        current = await self.get_dataset(dataset_id)
        new = self._unique(self._check_examples(examples, current.name))
        known_ids = {e.example_id for e in current.examples}
        known_hashes = {member_hash(e) for e in current.examples}
        fresh = [e for e in new if e.example_id not in known_ids]
        same_content = [e.example_id for e in fresh if member_hash(e) in known_hashes]
        if not fresh:
            raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES,
                           f"none of the {len(examples)} examples is new to dataset {current.name!r}",
                           dataset_id=current.dataset_id)
        existing_split = {eid: split for split, ids in current.splits.items() for eid in ids}
        placed = extend_splits(current.examples, existing_split, fresh, current.split_ratios, current.split_seed,
                               self.filter_config.near_duplicate_jaccard)
        split_of = {**existing_split, **placed}
        version = bump_version(current.version, "MINOR")
        note = f"; {len(same_content)} share content with members and follow their split" if same_content else ""
        return await self._store(
            current.dataset_id, current.name, version, current.version, ChangeType.MINOR,
            current.examples + fresh, split_of, current.split_ratios, current.split_seed, min_examples,
            added=[e.example_id for e in fresh], removed=[], reason=(reason or f"added {len(fresh)} examples") + note,
            created_by="l07", new_dataset=False, started=started,
        )

    async def remove_examples(self, dataset_id: str, example_ids: list[str], reason: str,
                              min_examples: int = 1000) -> Dataset:
        """A new MINOR version without ``example_ids`` (quarantine, purge, PII); the other members stay put.

        Raises:
            L07Error: E7028 for an unknown dataset, E7110 without a reason or when no id is a member, E7020 when
                nothing would remain.
        """
        started = time.perf_counter()
        if not reason or not reason.strip():
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH, "removing examples needs a reason (§4.3)")
        current = await self.get_dataset(dataset_id)
        drop = set(example_ids) & {e.example_id for e in current.examples}
        if not drop:
            raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                           f"none of the {len(example_ids)} ids is a member of {current.name!r} {current.version}",
                           dataset_id=current.dataset_id)
        kept = [e for e in current.examples if e.example_id not in drop]
        if not kept:
            raise L07Error(L07ErrorCode.INSUFFICIENT_EXAMPLES, f"removing {len(drop)} examples would empty "
                           f"{current.name!r}", dataset_id=current.dataset_id)
        split_of = {eid: split for split, ids in current.splits.items() for eid in ids if eid not in drop}
        return await self._store(
            current.dataset_id, current.name, bump_version(current.version, "MINOR"), current.version,
            ChangeType.MINOR, kept, split_of, current.split_ratios, current.split_seed, min_examples,
            added=[], removed=sorted(drop), reason=reason, created_by="l07", new_dataset=False, started=started,
        )

    # --- read ------------------------------------------------------------------------------------------------------

    async def get_dataset(self, dataset_id: str, version: str | None = None, verify: bool = True) -> Dataset:
        """A dataset version with its examples and splits loaded (default: the latest version).

        ``dataset_id`` may also be the dataset's name.

        Raises:
            L07Error: E7028 for an unknown dataset or version; E7031 when a stored example no longer matches the
                content hash the version recorded (``verify``).
        """

        async with self.db.session() as session:
            repo = DatasetRepository(session)
            ds = await repo.resolve(dataset_id)
            if ds is None:
                raise L07Error(L07ErrorCode.DATASET_NOT_FOUND, f"unknown dataset {dataset_id!r}", dataset_id=dataset_id)
            version = version or ds.latest_version
            row = await repo.get_version(ds.dataset_id, version)
            if row is None:
                known = [v.version for v in await repo.versions(ds.dataset_id)]
                raise L07Error(L07ErrorCode.DATASET_NOT_FOUND, f"dataset {ds.name!r} has no version {version}",
                               dataset_id=ds.dataset_id, version=version, versions=known)
            members = await repo.members(ds.dataset_id, version)
            examples = await ExampleRepository(session).get_many([m[0] for m in members])
        by_id = {e.example_id: e for e in examples}
        missing = [m[0] for m in members if m[0] not in by_id]
        changed = [m[0] for m in members if m[0] in by_id and member_hash(by_id[m[0]]) != m[3]]
        if verify and (missing or changed):
            raise L07Error(L07ErrorCode.DATASET_LOADING_FAILURE,
                           f"dataset {ds.name!r} {version}: {len(missing)} member(s) missing, {len(changed)} changed "
                           "since the version was recorded", missing=missing[:20], changed=changed[:20])
        splits: dict[str, list[str]] = {s: [] for s in SPLIT_ORDER}
        for eid, split, _, _ in members:
            splits.setdefault(split, []).append(eid)
        data = row.data or {}
        return Dataset(
            dataset_id=ds.dataset_id, name=ds.name, version=version,
            examples=[by_id[m[0]] for m in members if m[0] in by_id], splits=splits,
            statistics=DatasetStatistics.model_validate(row.statistics),
            created_at=row.created_at, lineage=DatasetLineage.model_validate(row.lineage),
            storage_location=data.get("storage_location"), format="jsonl", compression="none",
            checksum_sha256=row.checksum_sha256, split_seed=row.split_seed,
            split_ratios=data.get("split_ratios", dict(DEFAULT_SPLIT_RATIOS)), manifest=row.manifest,
            created_by=data.get("created_by", "l07"), processing_duration_seconds=data.get("processing_duration_seconds", 0.0),
            notes=row.reason,
        )

    async def get_version(self, dataset_id: str, version: str | None = None) -> DatasetVersion:
        """The version record (change type, added/removed ids, split counts, checksum)."""

        async with self.db.session() as session:
            repo = DatasetRepository(session)
            ds = await repo.resolve(dataset_id)
            if ds is None:
                raise L07Error(L07ErrorCode.DATASET_NOT_FOUND, f"unknown dataset {dataset_id!r}", dataset_id=dataset_id)
            row = await repo.get_version(ds.dataset_id, version or ds.latest_version)
            if row is None:
                raise L07Error(L07ErrorCode.DATASET_NOT_FOUND, f"dataset {ds.name!r} has no version {version}",
                               dataset_id=ds.dataset_id, version=version)
            data = row.data or {}
            return DatasetVersion(
                dataset_id=ds.dataset_id, version=row.version, parent_version=row.parent_version,
                change_type=ChangeType(row.change_type), added_example_ids=data.get("added_example_ids", []),
                removed_example_ids=data.get("removed_example_ids", []), split_counts=data.get("split_counts", {}),
                checksum_sha256=row.checksum_sha256, split_seed=row.split_seed, created_at=row.created_at,
                reason=row.reason,
            )

    async def list_datasets(self) -> list[dict[str, Any]]:
        """Every dataset with its latest version, number of versions and latest split counts."""

        async with self.db.session() as session:
            repo = DatasetRepository(session)
            counts = await repo.version_counts()
            out = []
            for ds in await repo.list():
                row = await repo.get_version(ds.dataset_id, ds.latest_version)
                out.append({
                    "dataset_id": ds.dataset_id, "name": ds.name, "version": ds.latest_version,
                    "versions": counts.get(ds.dataset_id, 0), "created_at": ds.created_at, "updated_at": ds.updated_at,
                    "split_counts": (row.data or {}).get("split_counts", {}) if row else {},
                    "checksum_sha256": row.checksum_sha256 if row else None,
                })
            return out

    async def list_versions(self, dataset_id: str) -> list[DatasetVersion]:
        """Every version of a dataset, oldest first."""

        async with self.db.session() as session:
            repo = DatasetRepository(session)
            ds = await repo.resolve(dataset_id)
            if ds is None:
                raise L07Error(L07ErrorCode.DATASET_NOT_FOUND, f"unknown dataset {dataset_id!r}", dataset_id=dataset_id)
            versions = [v.version for v in await repo.versions(ds.dataset_id)]
        return [await self.get_version(ds.dataset_id, v) for v in versions]

    async def diff(self, dataset_id: str, v1: str, v2: str) -> dict[str, Any]:
        """What changed from version ``v1`` to ``v2``: added, removed and moved examples, counts, statistics."""
        a = await self.get_dataset(dataset_id, v1, verify=False)
        b = await self.get_dataset(dataset_id, v2, verify=False)
        split_a = {eid: s for s, ids in a.splits.items() for eid in ids}
        split_b = {eid: s for s, ids in b.splits.items() for eid in ids}
        stats_a, stats_b = a.statistics, b.statistics
        numeric = ("total_examples", "train_split_count", "val_split_count", "test_split_count", "avg_quality_score",
                   "quality_score_stddev", "avg_confidence", "max_class_share", "label_entropy")
        return {
            "dataset_id": a.dataset_id, "name": a.name, "from": v1, "to": v2,
            "added": sorted(set(split_b) - set(split_a)),
            "removed": sorted(set(split_a) - set(split_b)),
            "moved": sorted(
                ({"example_id": e, "from": split_a[e], "to": split_b[e]} for e in set(split_a) & set(split_b)
                 if split_a[e] != split_b[e]), key=lambda m: m["example_id"]),
            "split_counts": {v1: {s: len(ids) for s, ids in a.splits.items()},
                             v2: {s: len(ids) for s, ids in b.splits.items()}},
            "task_types": {v1: stats_a.examples_by_task_type, v2: stats_b.examples_by_task_type},
            "statistics_delta": {
                k: round((getattr(stats_b, k) or 0) - (getattr(stats_a, k) or 0), 6) for k in numeric
            },
            "checksum_sha256": {v1: a.checksum_sha256, v2: b.checksum_sha256},
        }

    # --- export ----------------------------------------------------------------------------------------------------

    async def export(self, dataset_id: str, version: str | None, path: str | Path, format: str = "jsonl") -> dict[str, Any]:  # noqa: A002
        """Write one file per split plus ``manifest.json`` into the folder ``path``.

        The files load with ``datasets.load_dataset("json" | "parquet", data_files={split: file})`` as they are.

        Returns:
            ``{"files": {split: {path, rows, sha256}}, "manifest": path, "format": ...}``.

        Raises:
            L07Error: E7028 unknown dataset, E7500 unknown format, E7031 when members changed since the version.
        """
        if format not in FORMATS:
            raise L07Error(L07ErrorCode.HYPERPARAMETER_CONFIG_INVALID, f"format must be one of {FORMATS}, got {format!r}",
                           format=format)
        dataset = await self.get_dataset(dataset_id, version)
        out_dir = Path(path)
        files = write_split_files(dataset, out_dir, format)
        manifest = dict(dataset.manifest)
        manifest["export"] = {"format": format, "files": {s: {k: v for k, v in f.items() if k != "path"} | {
            "file": Path(f["path"]).name} for s, f in files.items()}, "exported_at": utcnow().isoformat()}
        manifest["members"] = [[s, eid, member_hash(ex)] for s in SPLIT_ORDER for eid, ex in
                               ((ex.example_id, ex) for ex in dataset.split_examples(s))]
        manifest_path = out_dir / "manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        try:
            # An export hands out training data (contract §7.4): no export without its audit row.
            async with self.db.session() as session:
                await audit(session, "dataset.export", "dataset", dataset.dataset_id, details={
                    "name": dataset.name, "version": dataset.version, "format": format, "path": str(out_dir),
                    "rows": {s: f["rows"] for s, f in files.items()}, "checksum_sha256": dataset.checksum_sha256})
        except Exception:
            for written in [*(Path(f["path"]) for f in files.values()), manifest_path]:
                written.unlink(missing_ok=True)
            raise
        return {"dataset_id": dataset.dataset_id, "name": dataset.name, "version": dataset.version, "format": format,
                "files": files, "manifest": str(manifest_path), "checksum_sha256": dataset.checksum_sha256}

    # --- internals -------------------------------------------------------------------------------------------------

    @staticmethod
    def _ratios(split_ratios: dict[str, float] | None) -> dict[str, float]:
        try:
            return validate_split_ratios(dict(split_ratios) if split_ratios is not None else dict(DEFAULT_SPLIT_RATIOS))
        except (ValueError, TypeError) as exc:
            raise L07Error(L07ErrorCode.SPLIT_RATIOS_INVALID, str(exc), split_ratios=split_ratios) from exc

    @staticmethod
    def _check_examples(examples: list[Any], name: str) -> list[TrainingExample]:
        out = []
        for i, ex in enumerate(examples or []):
            if isinstance(ex, TrainingExample):
                out.append(ex)
                continue
            try:
                out.append(TrainingExample.model_validate(ex))
            except ValueError as exc:
                raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                               f"example #{i} for dataset {name!r} is invalid: {exc}", index=i) from exc
        return out

    @staticmethod
    def _unique(examples: list[TrainingExample]) -> list[TrainingExample]:
        seen: set[str] = set()
        out = []
        for ex in examples:
            if ex.example_id not in seen:
                seen.add(ex.example_id)
                out.append(ex)
        return out

    @staticmethod
    def _downsample(examples: list[TrainingExample], seed: int) -> list[TrainingExample]:
        if len(examples) <= MAX_DATASET_SIZE:
            return examples
        code = L07ErrorCode.DATASET_SIZE_EXPLOSION.value
        labels = strata(examples)
        by_stratum: dict[str, list[int]] = defaultdict(list)
        for i, label in enumerate(labels):
            by_stratum[label].append(i)
        keep: list[int] = []
        rng = random.Random(f"{seed}:downsample")
        for label in sorted(by_stratum):
            idxs = by_stratum[label]
            k = max(1, round(len(idxs) * MAX_DATASET_SIZE / len(examples)))
            keep += rng.sample(idxs, min(k, len(idxs)))
        keep = sorted(keep)[:MAX_DATASET_SIZE]
        log.warning("%s %d examples above the maximum %d: stratified downsampling to %d", code, len(examples),
                    MAX_DATASET_SIZE, len(keep), extra={"error_code": code})
        return [examples[i] for i in keep]

    def _lineage(self, examples: list[TrainingExample], parent_id: str | None, parent_version: str | None) -> DatasetLineage:
        event_ids = sorted({eid for ex in examples for eid in ex.source_event_ids})
        digest = hashlib.sha256("\n".join(event_ids).encode()).hexdigest() if event_ids else None
        return DatasetLineage(
            source_event_ids=event_ids if len(event_ids) <= 1000 else [],
            source_event_digest=digest,
            filter_config_hash=self.filter_config.config_hash(),
            min_quality_score=self.filter_config.min_quality_score,
            min_confidence=self.filter_config.min_confidence,
            extraction_version=sorted({ex.extraction_version for ex in examples})[-1],
            code_version=code_version(),
            parent_dataset_id=parent_id,
            parent_version=parent_version,
        )

    async def _store(
        self, dataset_id: str, name: str, version: str, parent: str | None, change: ChangeType,
        examples: list[TrainingExample], split_of: dict[str, str], ratios: dict[str, float], seed: int,
        min_examples: int, added: list[str], removed: list[str], reason: str, created_by: str, new_dataset: bool,
        started: float,
    ) -> Dataset:

        # Members in a stable order: split, then the order the examples were given in.
        ordered = [ex for s in SPLIT_ORDER for ex in examples if split_of[ex.example_id] == s]
        splits = {s: [ex.example_id for ex in ordered if split_of[ex.example_id] == s] for s in SPLIT_ORDER}
        hashes = {ex.example_id: member_hash(ex) for ex in ordered}
        checksum = version_checksum([(split_of[ex.example_id], ex.example_id, hashes[ex.example_id]) for ex in ordered])
        stats = compute_statistics(examples, splits, min_examples)
        notes = self._notes(stats, min_examples)
        stats.notes = notes
        lineage = self._lineage(examples, dataset_id if parent else None, parent)
        split_counts = {s: len(ids) for s, ids in splits.items()}
        storage_location = f"l07-db://datasets/{dataset_id}/{version}"
        created_at = utcnow()
        manifest = {
            "format": MANIFEST_FORMAT, "dataset_id": dataset_id, "name": name, "version": version,
            "parent_version": parent, "change_type": change.value, "checksum_sha256": checksum,
            "checksum_scheme": "sha256 over '<split>\\t<example_id>\\t<content_hash>\\n' in split order",
            "split_seed": seed, "split_ratios": ratios, "split_counts": split_counts,
            "filter_config": self.filter_config.model_dump(), "filter_config_hash": lineage.filter_config_hash,
            "source_events": {"count": len({e for ex in examples for e in ex.source_event_ids}),
                              "digest": lineage.source_event_digest},
            "code_version": lineage.code_version, "feature_version": lineage.feature_version,
            "extraction_version": lineage.extraction_version, "created_at": created_at.isoformat(),
        }
        duration = time.perf_counter() - started
        event_data = {"dataset_id": dataset_id, "name": name, "version": version, "counts": split_counts,
                      "checksum_sha256": checksum, "storage_location": storage_location}
        try:
            async with self.db.session() as session:
                repo = DatasetRepository(session)
                # Examples given directly (not from the filter's pool) are stored so the version can be loaded; an
                # id already stored must hold the same content (e.g. the filter's redacted text, not the original).
                examples_repo = ExampleRepository(session)
                await examples_repo.add_many(examples)
                stored_hashes = {e.example_id: member_hash(e) for e in await examples_repo.get_many(list(hashes))}
                missing = sorted(set(hashes) - set(stored_hashes))
                if missing:
                    raise L07Error(L07ErrorCode.DATASET_TABLE_WRITE_ERROR,
                                   f"{len(missing)} example(s) could not be stored or were removed while the "
                                   "version was written; retry", example_ids=missing[:20])
                differing = sorted(eid for eid, h in stored_hashes.items() if h != hashes[eid])
                if differing:
                    raise L07Error(L07ErrorCode.DATA_VALIDATION_SCHEMA_MISMATCH,
                                   f"{len(differing)} example(s) differ from the stored example with the same id; "
                                   "use the stored (filtered) examples", example_ids=differing[:20])
                if new_dataset:
                    repo.add_dataset(dataset_id, name, version, created_at)
                else:
                    await repo.set_latest(dataset_id, version)
                repo.add_version({
                    "dataset_id": dataset_id, "version": version, "parent_version": parent, "change_type": change.value,
                    "checksum_sha256": checksum, "split_seed": seed, "statistics": stats.model_dump(mode="json"),
                    "lineage": lineage.model_dump(mode="json"), "manifest": manifest,
                    "data": {"added_example_ids": added, "removed_example_ids": removed, "split_counts": split_counts,
                             "split_ratios": ratios, "storage_location": storage_location, "created_by": created_by,
                             "processing_duration_seconds": round(duration, 4)},
                    "reason": reason, "created_at": created_at,
                })
                await repo.add_members(dataset_id, version, [
                    (ex.example_id, split_of[ex.example_id], pos, hashes[ex.example_id]) for pos, ex in enumerate(ordered)
                ])
                await audit(session, "dataset.version_created", "dataset", dataset_id, actor=created_by,
                            details={"name": name, "version": version, "change_type": change.value,
                                     "checksum_sha256": checksum, "counts": split_counts})
                await EventPublisher().publish(session, "learning.dataset_ready", event_data, subject=dataset_id)
        except IntegrityError as exc:
            raise L07Error(L07ErrorCode.ARTIFACT_VERSIONING_ERROR,
                           f"dataset {name!r} version {version} was written concurrently; retry", name=name,
                           version=version) from exc
        stored = await self.get_dataset(dataset_id, version)
        DATASETS_CREATED.labels(change.value).inc()
        for domain, count in stats.examples_by_domain.items():
            DATASET_SIZE.labels(domain).set(count)
            domain_q = [ex.quality_score for ex in examples if ex.domain == domain]
            mean = sum(domain_q) / len(domain_q)
            DATASET_QUALITY_MEAN.labels(domain).set(mean)
            DATASET_QUALITY_STDDEV.labels(domain).set((sum((q - mean) ** 2 for q in domain_q) / len(domain_q)) ** 0.5)
        log.info("dataset %s %s created (%s): %s", name, version, change.value, split_counts,
                 extra={"dataset_id": dataset_id, "checksum": checksum})
        return stored

    @staticmethod
    def _notes(stats: DatasetStatistics, min_examples: int) -> list[str]:
        notes: list[str] = []
        n = stats.total_examples
        if n < 3:
            notes.append(f"{n} example(s): all in train; val and test are empty (stratified splits need at least 3)")
        if stats.below_minimum:
            code = L07ErrorCode.INSUFFICIENT_EXAMPLES.value
            notes.append(f"{code}: {n} examples below the minimum of {min_examples}")
            log.warning("%s dataset below the minimum: %d < %d", code, n, min_examples, extra={"error_code": code})
        if stats.max_class_share > 0.9:
            code = L07ErrorCode.CLASS_IMBALANCE_SEVERE.value
            notes.append(f"{code}: one task type holds {stats.max_class_share:.0%} of the examples")
            log.warning("%s class imbalance %.2f", code, stats.max_class_share, extra={"error_code": code})
        return notes
