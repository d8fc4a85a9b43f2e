"""The retention purge (contract §7.4 "Retention"): what the contract keeps for a limited time is deleted when its
time is up, the deletion is verified, and the purge is audited.

| What | Kept | Rule |
|---|---|---|
| Dataset versions | 90 days | never the latest version, one a model was trained on, or one a live job or loop run uses |
| Failed runs | 30 days | FAILED/CANCELLED training jobs (with their events and checkpoints), FAILED/REJECTED loop runs |
| Archived models | 365 days after archiving | rows, stage history, approvals, validations and artifact files; never a model a kept model descends from |
| Raw payloads of refused input | 30 days | rejected events (§1.9) and the filter's rejections; the contract names no period, so the failed-run period applies |
| Audit log | 7 years (§8 #28) | the oldest prefix of the chain only, anchored so the rest still verifies |
| Production outcomes | 90 days | by completion (arrival when no score came); never what an open release watch reads |

The contract names no period for production outcomes (§9); they are training-side evidence like datasets, so the
dataset period applies. An open watch (``feedback/watch.py``) reads its model's outcomes since the release (windows
are counted from the release, so none of them may go) and its predecessor's newest ``watch_baseline_samples`` before
the release plus those served since (the canary's incumbent side); those stay however old they are.

All database deletes and the ``retention.purge`` audit row commit in one transaction; files are removed after the
commit (a rolled-back purge must not lose files its rows still point at), then every deletion is checked.
``l07 retention purge [--dry-run]`` runs it by hand; the loop's ``retention_purge`` schedule runs it daily at 02:00 UTC.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec

from ..models._base import utcnow
from ..models.error_codes import L07Error, L07ErrorCode
from ..settings import Settings, get_settings
from ..store.db import Database
from ..store.repositories.audit import audit, drop_prefix, expired_prefix
from ..store.repositories.feedback import WatchRepository
from ..store.repositories.retention import RetentionRepository, as_pairs
from .feedback.watch import OPEN_STATES, release_time

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of record is kept (contract §7.4)."""

    datasets: timedelta = timedelta(days=90)
    failed_runs: timedelta = timedelta(days=30)
    archived_models: timedelta = timedelta(days=365)
    rejected_payloads: timedelta = timedelta(days=30)
    audit_log: timedelta = timedelta(days=7 * 365)
    model_outcomes: timedelta = timedelta(days=90)

    def cutoffs(self, now: datetime) -> dict[str, datetime]:
        return {"datasets": now - self.datasets, "failed_runs": now - self.failed_runs,
                "archived_models": now - self.archived_models, "rejected_payloads": now - self.rejected_payloads,
                "audit_log": now - self.audit_log, "model_outcomes": now - self.model_outcomes}


@dataclass
class PurgeReport:
    """What one purge deleted (or, dry, would delete)."""

    dry_run: bool
    cutoffs: dict[str, str]
    counts: dict[str, int]
    files_removed: list[str] = field(default_factory=list)
    files_kept: list[dict[str, str]] = field(default_factory=list)
    verified: bool | None = None
    audit_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "cutoffs": self.cutoffs, "counts": self.counts,
                "files_removed": len(self.files_removed), "files_kept": self.files_kept, "verified": self.verified,
                "audit_id": self.audit_id}


class RetentionService:
    """Runs the retention purge.

    Args:
        db: The database to purge.
        settings: Where artifacts live (only files under ``artifact_root`` are deleted).
        policy: Retention periods (default: the contract's).
    """

    def __init__(self, db: Database, settings: Settings | None = None, policy: RetentionPolicy | None = None) -> None:
        self.db = db
        self.settings = settings or get_settings()
        self.policy = policy or RetentionPolicy()
        self._jobs_dir = Path(self.settings.home) / "jobs"

    async def purge(self, *, dry_run: bool = False, now: datetime | None = None, actor: str | None = None) -> PurgeReport:
        """Delete what has expired (or only count it, ``dry_run``), verify the deletion and audit it.

        Raises:
            L07Error: E7014 when a deletion did not hold (rows or files still there afterwards).
        """
        now = now or utcnow()
        cutoffs = self.policy.cutoffs(now)
        async with self.db.session() as session:
            repo = RetentionRepository(session)
            jobs = await repo.failed_jobs(cutoffs["failed_runs"])
            runs = await repo.failed_loop_runs(cutoffs["failed_runs"])
            versions = await repo.expired_dataset_versions(cutoffs["datasets"])
            models = await repo.expired_archived_models(cutoffs["archived_models"])
            rejected_events = await repo.count_rejected_events(cutoffs["rejected_payloads"])
            rejections = await repo.count_filter_rejections(cutoffs["rejected_payloads"])
            audit_prefix = await expired_prefix(session, cutoffs["audit_log"])
            holds = await repo.outcome_holds(await _watched(session, now), self.settings.watch_baseline_samples)
            outcomes = await repo.count_model_outcomes(cutoffs["model_outcomes"], holds)
            counts = {"training_jobs": len(jobs), "loop_runs": len(runs), "dataset_versions": len(versions),
                      "archived_models": len(models), "rejected_events": rejected_events,
                      "filter_rejections": rejections, "audit_rows": audit_prefix[2] if audit_prefix else 0,
                      "model_outcomes": outcomes}
            report = PurgeReport(dry_run=dry_run, cutoffs={k: v.isoformat() for k, v in cutoffs.items()}, counts=counts)
            # A job's folder (spec, log, checkpoints) is <home>/jobs/<job_id> (``jobs/runner.py``).
            files = [(f"job {job_id}", str(self._jobs_dir / job_id)) for job_id, _ in jobs] + \
                    [(f"model {model_id}", path) for model_id, path in models if path]
            if dry_run:
                report.files_kept = [{"owner": o, "path": p, "why": "dry run"} for o, p in files]
                return report
            counts["training_jobs"] = await repo.delete_jobs([j for j, _ in jobs])
            counts["loop_runs"] = await repo.delete_loop_runs(runs)
            counts["dataset_versions"] = await repo.delete_dataset_versions(versions)
            counts["archived_models"] = await repo.delete_models([m for m, _ in models])
            counts["rejected_events"] = await repo.delete_rejected_events(cutoffs["rejected_payloads"])
            counts["filter_rejections"] = await repo.delete_filter_rejections(cutoffs["rejected_payloads"])
            counts["model_outcomes"] = await repo.delete_model_outcomes(cutoffs["model_outcomes"], holds)
            if audit_prefix:
                counts["audit_rows"] = await drop_prefix(session, audit_prefix[0], audit_prefix[1])
            report.audit_id = await audit(session, "retention.purge", "retention", None, actor=actor, details={
                "counts": counts, "cutoffs": report.cutoffs, "files": [p for _, p in files],
                "training_jobs": [j for j, _ in jobs][:200], "dataset_versions": as_pairs(versions)[:200],
                "archived_models": [m for m, _ in models][:200], "outcomes_held_for_watches": sorted(holds)[:200],
                "audit_anchor": {"seq": audit_prefix[0], "hash": audit_prefix[1]} if audit_prefix else None,
            })
        for owner, path in files:
            if not _exists(path):
                continue  # a job that failed before it wrote anything has no folder
            why = self._remove(path)
            if why is None:
                report.files_removed.append(path)
            else:
                report.files_kept.append({"owner": owner, "path": path, "why": why})
        await self._verify(report, {"training_jobs": [j for j, _ in jobs], "loop_runs": runs,
                                    "dataset_versions": versions, "archived_models": [m for m, _ in models]}, cutoffs,
                           holds)
        log.info("retention purge: %s", counts, extra={"counts": counts, "files_removed": len(report.files_removed)})
        return report

    async def _verify(self, report: PurgeReport, purged: dict[str, Any], cutoffs: dict[str, datetime],
                      outcome_holds: dict[str, datetime | None]) -> None:
        async with self.db.session() as session:
            left = await RetentionRepository(session).remaining(purged, cutoffs, outcome_holds)
        left = {k: v for k, v in left.items() if v}
        still_there = [p for p in report.files_removed if _exists(p)]
        report.verified = not left and not still_there
        if report.verified:
            return
        async with self.db.session() as session:
            await audit(session, "retention.verify", "retention", None, result="failure",
                        error_code=L07ErrorCode.STORAGE_WRITE_FAILURE.value,
                        details={"rows_left": left, "files_left": still_there, "purge_audit_id": report.audit_id})
        raise L07Error(L07ErrorCode.STORAGE_WRITE_FAILURE, "retention purge could not verify its deletion: "
                       f"rows left {left}, files left {len(still_there)}", rows_left=left, files_left=still_there[:20])

    def _remove(self, url: str) -> str | None:
        """Delete one artifact folder or job folder; the reason it was kept, or None when it is gone (or never was)."""
        try:
            fs, path = fsspec.core.url_to_fs(url)
            roots = [fsspec.core.url_to_fs(str(r)) for r in (self.settings.artifact_root, self._jobs_dir)]
        except (ValueError, ImportError) as exc:
            return f"cannot open {url}: {exc}"
        if not any(type(fs) is type(root_fs) and _under(path, root) for root_fs, root in roots):
            return "outside the artifact root and the jobs folder: not L07's to delete"
        if not fs.exists(path):
            return None
        try:
            if _is_local(fs):
                _rmtree_local(Path(path))
            else:
                fs.rm(path, recursive=True)
        except OSError as exc:
            return f"{exc.__class__.__name__}: {exc}"
        return None


async def _watched(session: Any, now: datetime) -> list[tuple[str, str | None, datetime]]:
    """``(model_id, baseline_model_id, started_at)`` of every release watch that reads outcomes: the open ones
    (NO_BASELINE included: its view summarises the outcomes since the release) and the ones the watch opens on its
    next look, for models that became ACTIVE since its last one."""
    repo = WatchRepository(session)
    watches = [(w["model_id"], w["baseline_model_id"], w["started_at"])
               for w in await repo.list(OPEN_STATES + ("NO_BASELINE",))]
    return watches + [(m["model_id"], m["baseline_model_id"], release_time(m, now))
                      for m in await repo.unwatched_active()]


def _under(path: str, root: str) -> bool:
    path, root = path.rstrip("/"), root.rstrip("/")
    return path != root and path.startswith(root + "/")


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _rmtree_local(path: Path) -> None:
    # Stored artifacts are made read-only (write-once); the purge is the one place allowed to remove them.
    if path.is_file():
        path.chmod(stat.S_IWUSR | stat.S_IRUSR)
        path.unlink()
        return
    for dirpath, dirnames, filenames in os.walk(path):
        os.chmod(dirpath, stat.S_IRWXU)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), stat.S_IWUSR | stat.S_IRUSR)
    shutil.rmtree(path)


def _exists(url: str) -> bool:
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ValueError, ImportError):
        return False
    return bool(fs.exists(path))
