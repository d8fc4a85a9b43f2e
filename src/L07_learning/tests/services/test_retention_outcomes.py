"""Production outcomes in the retention purge: outcomes older than 90 days go (scored ones by completion, unscored
ones by arrival), newer ones stay, and an open release watch keeps what it reads however old: its model's outcomes
since the release and its predecessor's baseline and canary-side outcomes. The purge counts, verifies and audits it."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from typer.testing import CliRunner

from L07_learning.cli.main import app as cli
from L07_learning.models._base import utcnow
from L07_learning.services.retention import RetentionService
from L07_learning.store.repositories.audit import list_audit
from L07_learning.store.repositories.outcomes import OutcomeRepository
from L07_learning.store.tables import SqlModel, SqlModelOutcome, SqlModelWatch

DAY = timedelta(days=1)
BASELINE = 30  # the smallest ``watch_baseline_samples`` settings allow


def _outcome(execution_id: str, model_id: str | None, completed: datetime | None, created: datetime,
             served: datetime | None = None) -> SqlModelOutcome:
    scored = completed is not None
    return SqlModelOutcome(execution_id=execution_id, model_id=model_id, served_at=served or created,
                           quality_score=0.8 if scored else None, is_error=False, completed_at=completed,
                           created_at=created)


def _watch(model_id: str, baseline: str | None, status: str, started: datetime) -> SqlModelWatch:
    return SqlModelWatch(model_id=model_id, model_name="support", baseline_model_id=baseline, status=status,
                         started_at=started, windows_evaluated=0, last_result={}, canary={}, updated_at=started)


def _model(model_id: str, serving: str, data: dict) -> SqlModel:
    return SqlModel(model_id=model_id, name="helpdesk", version=model_id[-1] + ".0.0", model_type="LORA_ADAPTER",
                    stage="PRODUCTION", serving_state=serving, artifact_path=f"/nowhere/{model_id}", checksum="c",
                    signature="s", data=data)


async def _setup(db, now: datetime) -> set[str]:  # type: ignore[no-untyped-def]
    """Rows for every case; returns the execution ids the purge must delete."""
    release = now - 200 * DAY
    rows = [
        _outcome("other-old", "other", now - 100 * DAY, now - 101 * DAY),
        _outcome("other-new", "other", now - 10 * DAY, now - 11 * DAY),
        # Arrived 100 days ago, scored 5 days ago: its age is its completion.
        _outcome("other-late-score", "other", now - 5 * DAY, now - 100 * DAY),
        _outcome("unscored-old", "other", None, now - 100 * DAY),
        _outcome("unscored-new", "other", None, now - 10 * DAY),
        _outcome("score-only-old", None, None, now - 100 * DAY),
        # The watched candidate: everything since its release stays, the rest is ordinary.
        _outcome("cand-since-release", "cand", now - 150 * DAY, now - 150 * DAY),
        _outcome("cand-before-release", "cand", now - 250 * DAY, now - 250 * DAY),
        # The predecessor, served alongside the candidate during its canary.
        _outcome("pred-canary", "pred", now - 190 * DAY, now - 190 * DAY, served=release + timedelta(minutes=5)),
        # A closed watch holds nothing.
        _outcome("ended-since-release", "ended", now - 150 * DAY, now - 150 * DAY),
        # A NO_BASELINE watch holds its model's outcomes since its release.
        _outcome("solo-since-release", "solo", now - 120 * DAY, now - 120 * DAY),
        # Released 120 days ago, its watch not opened yet (no look since): held as that watch will read it.
        _outcome("fresh-since-release", "fresh-2", now - 100 * DAY, now - 100 * DAY),
        _outcome("fresh-prev-1", "fresh-1", now - 121 * DAY, now - 121 * DAY),
        _outcome("fresh-prev-2", "fresh-1", now - 122 * DAY, now - 122 * DAY),
    ]
    # The predecessor's 35 outcomes before the release: the newest 30 are the watch's baseline.
    rows += [_outcome(f"pred-{i:02d}", "pred", release - i * DAY, release - i * DAY) for i in range(1, 36)]
    async with db.session() as s:
        s.add_all(rows + [_watch("cand", "pred", "WATCHING", release), _watch("ended", "pred", "ENDED", release),
                          _watch("solo", None, "NO_BASELINE", now - 130 * DAY),
                          _model("fresh-1", "STANDBY", {"superseded_by": "fresh-2"}),
                          _model("fresh-2", "ACTIVE", {"deployed_at": (now - 120 * DAY).isoformat()})])
    return {"other-old", "unscored-old", "score-only-old", "cand-before-release", "ended-since-release",
            *(f"pred-{i:02d}" for i in range(31, 36))}


async def _watch_reads(db, release: datetime) -> tuple[int, list[float]]:  # type: ignore[no-untyped-def]
    async with db.session() as s:
        repo = OutcomeRepository(s)
        return (await repo.count_completed("cand", release),
                [x.quality for x in await repo.before("pred", release, BASELINE)])


async def test_purge_removes_old_outcomes_and_keeps_what_an_open_watch_reads(db, settings, caplog):  # type: ignore[no-untyped-def]
    now = utcnow()
    expired = await _setup(db, now)
    async with db.session() as s:
        everything = set((await s.scalars(select(SqlModelOutcome.execution_id))).all())
    reads_before = await _watch_reads(db, now - 200 * DAY)
    assert reads_before[0] == 1 and len(reads_before[1]) == BASELINE
    service = RetentionService(db, settings.model_copy(update={"watch_baseline_samples": BASELINE}))

    dry = await service.purge(dry_run=True, now=now)
    assert dry.counts["model_outcomes"] == len(expired) == 10
    async with db.session() as s:
        assert set((await s.scalars(select(SqlModelOutcome.execution_id))).all()) == everything

    with caplog.at_level(logging.INFO, logger="L07_learning.services.retention"):
        report = await service.purge(now=now)
    assert report.counts["model_outcomes"] == 10 and report.verified is True
    assert report.cutoffs["model_outcomes"] == (now - 90 * DAY).isoformat()
    assert any("'model_outcomes': 10" in r.getMessage() for r in caplog.records if "retention purge" in r.getMessage())
    async with db.session() as s:
        left = set((await s.scalars(select(SqlModelOutcome.execution_id))).all())
        rows, _ = await list_audit(s, action="retention.purge")
    assert left == everything - expired
    assert rows[0]["details"]["counts"]["model_outcomes"] == 10
    assert rows[0]["details"]["outcomes_held_for_watches"] == ["cand", "fresh-1", "fresh-2", "pred", "solo"]
    # The watch reads exactly what it read before the purge.
    assert await _watch_reads(db, now - 200 * DAY) == reads_before

    again = await service.purge(now=now)
    assert again.counts["model_outcomes"] == 0 and again.verified is True


async def test_once_the_watch_closes_its_outcomes_age_out(db, settings):  # type: ignore[no-untyped-def]
    now = utcnow()
    await _setup(db, now)
    service = RetentionService(db, settings.model_copy(update={"watch_baseline_samples": BASELINE}))
    await service.purge(now=now)
    async with db.session() as s:
        await s.execute(SqlModelWatch.__table__.update().values(status="ROLLED_BACK"))
    report = await service.purge(now=now)
    # cand-since-release, pred-canary, pred-01..30 and solo-since-release are all older than 90 days; the ACTIVE
    # model still holds its own and its predecessor's.
    assert report.counts["model_outcomes"] == 33 and report.verified is True
    async with db.session() as s:
        left = set((await s.scalars(select(SqlModelOutcome.execution_id))).all())
    assert left == {"other-new", "other-late-score", "unscored-new", "fresh-since-release", "fresh-prev-1",
                    "fresh-prev-2"}


def test_cli_lists_outcomes_with_their_cutoff(settings) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, ["retention", "purge", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "model_outcomes" in result.output
