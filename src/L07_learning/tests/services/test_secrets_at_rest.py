"""Secrets and PII at rest (issue 22, finding HIGH 2): nothing a producer sent is stored in clear.

The main test plants realistic credentials and personal data in traces, scores, planning records, invalid events
and traces still waiting for their score, sends them through every transport (HTTP POST, ``l07 ingest`` on a file, a
watched folder, the Redis Streams consumer, the in-process call), then reads every table, the outbox, the Redis
dead-letter stream and every file under the L07 home as raw bytes: no planted value may appear. The producers' own
input (the Redis input stream, the dropped file) is theirs, not L07's storage, and is not read.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from L07_learning.api import create_app
from L07_learning.api.auth import AuthService
from L07_learning.services.access import AccessService
from L07_learning.services.filtering.redaction import redact_for_storage, redact_raw
from L07_learning.services.learning_service import LearningService
from L07_learning.services.loop.watch import FolderWatcher
from L07_learning.services.registry.signing import keyring_for
from L07_learning.settings import Settings
from L07_learning.store.db import Database
from L07_learning.store.repositories.examples import ExampleRepository
from L07_learning.store.repositories.joins import JoinRepository
from L07_learning.store.repositories.rewards import RewardRepository
from L07_learning.tests.conftest import REDIS_URL

L02 = "https://agentic.local/layers/l02"
L05 = "https://agentic.local/layers/l05"
L06 = "https://agentic.local/layers/l06"

PRIVATE_KEY_BODY = "MIIEowIBAAKCAQEAyZ3kP9qW2vX8tL5nR7mB4cF1hJ6dS0aEq8Xk"
PLANTED = {
    "aws_access_key_id": "AKIAQ7XWTZ3KD5N2P4MR",
    "github_token": "ghp_R8s7T6u5V4w3X2y1Z0a9B8c7D6e5F4g3H2i1",
    "private_key": PRIVATE_KEY_BODY,
    "password": "Tr0ub4dor-3xQz9",
    "jwt": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1c2VyLTQyIiwicm9sZSI6ImFkbWluIn0."
           "Xk9pQ2vB7nR4tY1uW8eZ3aS6dF0gH5jK2lM9oP4qR7s",
    "credit_card": "4539 1488 0343 6467",
    "email": "jane.doe@corp-mail.example.com",
    "phone": "+1 415-555-0134",
}
PEM = f"-----BEGIN RSA PRIVATE KEY-----\n{PRIVATE_KEY_BODY}\nq2Lr0Tz8Wm4Nv6Hc1Yb\n-----END RSA PRIVATE KEY-----"
PROSE = (f"Contact {PLANTED['email']} or {PLANTED['phone']}; card {PLANTED['credit_card']}; "
         f"aws {PLANTED['aws_access_key_id']}; password={PLANTED['password']}")


def trace(exec_id: str, goal: str | None = None, answer: str | None = None, **data: Any) -> dict[str, Any]:
    body = {
        "execution_id": exec_id, "agent_id": "agent-travel-03", "task_id": "task-1", "task_type": "flight_booking",
        "task_definition": {"goal": goal or f"Book a flight from Berlin to Paris for {PLANTED['email']}",
                            "context": {"phone": PLANTED["phone"], "password": PLANTED["password"],
                                        "aws_key": PLANTED["aws_access_key_id"]}},
        "execution_trace": [
            {"step": 1, "action": "search_flights", "parameters": {"from": "Berlin", "token": PLANTED["github_token"]},
             "output": f"3 flights, session {PLANTED['jwt']}"},
            {"step": 2, "action": "book_flight", "parameters": {"card": PLANTED["credit_card"]}, "output": PEM},
        ],
        "final_answer": answer or f"Booked BERPAR-1. {PROSE}", "outcome": "success",
        "metadata": {"tool_calls": 2, "tokens_used": 400},
    }
    body.update(data)
    return {"specversion": "1.0", "type": "com.agentic.execution.trace_generated", "source": L02,
            "id": str(uuid.uuid4()), "time": "2026-02-10T09:15:02Z", "data": body}


def score(exec_id: str, q: float = 88.5, **data: Any) -> dict[str, Any]:
    body = {"execution_id": exec_id, "quality_score": q, "confidence_level": 0.91, "task_type": "flight_booking",
            "evaluation_method": "automated", "failure_classification": "success",
            "metrics": {f"helpfulness_for_{PLANTED['email']}": 0.8}}
    body.update(data)
    return {"specversion": "1.0", "type": "com.agentic.evaluation.quality_score_computed", "source": L06,
            "id": str(uuid.uuid4()), "time": "2026-02-10T09:15:03Z", "data": body}


def plan(exec_id: str) -> dict[str, Any]:
    return {"specversion": "1.0", "type": "planning.decision_recorded", "source": L05, "id": str(uuid.uuid4()),
            "data": {"plan_id": f"plan-{exec_id}", "execution_id": exec_id,
                     "goal": f"Schedule a call with {PLANTED['email']} at {PLANTED['phone']}",
                     "plan_steps": [f"Log in with password={PLANTED['password']}", f"Use token {PLANTED['github_token']}"],
                     "constraints": [{"type": "deadline", "priority": 1}],
                     "planning_trace": {"search_depth": 2, "nodes_explored": 9}}}


def planted_events(tag: str) -> list[Any]:
    """One transport's events: joined and waiting traces, scores, plans, a reviewer's correction, invalid ones."""
    invalid_trace = trace(f"{tag}-bad")
    del invalid_trace["data"]["agent_id"]  # rejected (E70xx), with every planted value in its payload
    broken = f'{{"specversion": "1.0", "id": "{tag}-broken", "note": "{PROSE}", "jwt": "{PLANTED["jwt"]}"'
    return [
        trace(f"{tag}-joined"), score(f"{tag}-joined"),                         # joined: example, quarantined
        trace(f"{tag}-waiting"),                                                # pending join: trace, no score yet
        score(f"{tag}-orphan", evaluation_method="human_review",               # pending join: score, no trace yet
              reference_output=f"Answer: {PROSE}; {PLANTED['jwt']}; {PEM}"),
        plan(f"{tag}-joined"), plan(f"{tag}-plan-waiting"),                     # planning: joined and waiting
        trace(f"{tag}-reviewed"),
        score(f"{tag}-reviewed", q=40, evaluation_method="human_review",
              reference_output=f"Answer: rebooked, mail {PLANTED['email']}, key {PLANTED['github_token']}"),
        invalid_trace, broken,                                                  # rejected / dead-lettered
    ]


CLEAN_STEPS = [{"step": 1, "action": "search_flights", "parameters": {"from": "Berlin"}, "output": "3 flights"}]


def as_line(event: Any) -> str:
    return event if isinstance(event, str) else json.dumps(event)


async def _http(settings: Settings) -> None:
    db = Database(settings.database_url or "", auto_migrate=True)
    try:
        producer = (await AuthService(AccessService(db)).create_key(
            "producer", sources=["L02", "L05", "L06"], kinds=["trace", "score", "plan", "human_review"]))[1]
        app = create_app(settings=settings, db=db)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.test") as client:
            events = planted_events("http")
            r = await client.post("/api/v1/events", json=[e for e in events if isinstance(e, dict)],
                                  headers={"Authorization": f"Bearer {producer}",
                                           "Content-Type": "application/cloudevents-batch+json"})
            assert r.status_code == 202, r.text
            assert r.json()["rejected_by_code"], r.json()
            r = await client.post("/api/v1/events", content=events[-1].encode(),
                                  headers={"Authorization": f"Bearer {producer}"})
            assert r.status_code == 400
    finally:
        await db.dispose()


async def _watched(settings: Settings, folder: Path) -> None:
    service = LearningService.build(settings=settings)
    try:
        await service.initialize(start_relay=False)
        watcher = FolderWatcher(folder, db=service.db, settings=settings, quality_filter=service.filter, settle_s=0)
        (folder / "drop.jsonl").write_text("\n".join(as_line(e) for e in planted_events("watch")) + "\n")
        assert watcher.ready_files() == []  # first sight: not settled yet
        [report] = await watcher.poll()
        assert report["rejected"] >= 2
    finally:
        await service.cleanup()


async def _redis(settings: Settings, stream: str) -> list[Any]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    for event in planted_events("redis"):
        await client.xadd(stream, {"event": as_line(event)})
    service = LearningService.build(settings=settings)
    try:
        source = service.stream_source(REDIS_URL, stream, "l07-at-rest", "c1", block_ms=50, idle_exit_s=0.2)
        await service.consume(source)
        assert source.dead_lettered >= 2
        # Every stream L07 wrote under this name: the input stream is the producer's, the rest is L07's storage.
        written = {k.decode() for k in await client.keys(f"{stream}*")} - {stream}
        assert written == {f"{stream}.dlq"}
        dead = await client.xrange(f"{stream}.dlq")
    finally:
        await service.cleanup()
        await client.delete(stream, f"{stream}.dlq")
        await client.aclose()
    return dead


async def _inprocess(settings: Settings) -> dict[str, Any]:
    service = LearningService.build(settings=settings)
    try:
        out = await service.process_events(planted_events("inproc"))
        # The traces that waited (one per transport) still join: their stored, redacted rows kept their ids.
        late = await service.process_events([score(f"{t}-waiting") for t in ("http", "file", "watch", "redis", "inproc")])
        async with service.db.session() as s:
            stored = await ExampleRepository(s).list()
            joins = await JoinRepository(s).count_by_status()
        return {"first": out, "late": late, "examples": stored, "joins": joins}
    finally:
        await service.cleanup()


def _cli_ingest(path: Path) -> None:
    from L07_learning.cli.main import app as cli

    result = CliRunner().invoke(cli, ["ingest", str(path), "--json"])
    assert result.exit_code == 0, result.output


async def _stored_rows(settings: Settings) -> dict[str, str]:
    db = Database(settings.database_url or "", auto_migrate=True)
    try:
        async with db.session() as s:
            tables = [r[0] for r in (await s.execute(text(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))).all()]
            return {t: json.dumps([[str(v) for v in row] for row in (await s.execute(text(f'SELECT * FROM "{t}"'))).all()])
                    for t in tables}
    finally:
        await db.dispose()


def _clear_values(blob: str | bytes) -> list[str]:
    """The planted values found in ``blob`` (also JSON- and \\u-escaped forms)."""
    data = blob.decode("utf-8", "replace") if isinstance(blob, bytes) else blob
    found = []
    for kind, value in PLANTED.items():
        forms = {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=True)[1:-1]}
        if any(f in data for f in forms):
            found.append(kind)
    return found


@pytest.mark.redis
def test_planted_secrets_and_pii_are_stored_nowhere_in_clear(settings: Settings, tmp_path: Path) -> None:
    home = Path(settings.home)
    inbox = tmp_path / "inbox"
    stream = f"l07test.atrest.{uuid.uuid4().hex[:8]}"

    asyncio.run(_http(settings))
    file = tmp_path / "events.jsonl"
    file.write_text("\n".join(as_line(e) for e in planted_events("file")) + "\n")
    _cli_ingest(file)
    asyncio.run(_watched(settings, inbox))
    dead = asyncio.run(_redis(settings, stream))
    result = asyncio.run(_inprocess(settings))

    rows = asyncio.run(_stored_rows(settings))
    leaks = {table: _clear_values(blob) for table, blob in rows.items()}
    leaking = {t: k for t, k in leaks.items() if k}
    assert leaking == {}, f"planted values stored in clear in tables {sorted(leaking)}"
    dead_blob = json.dumps([[str(eid), {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}]
                            for eid, fields in dead])
    assert _clear_values(dead_blob) == [], "planted values in clear in the Redis dead-letter stream"

    file_leaks = {}
    for path in sorted(p for p in home.rglob("*") if p.is_file()):
        found = _clear_values(path.read_bytes())
        if found:
            file_leaks[str(path.relative_to(home))] = found
    for path in sorted((inbox / "done").glob("*.report.json")):
        if _clear_values(path.read_bytes()):
            file_leaks[str(path)] = _clear_values(path.read_bytes())
    assert file_leaks == {}, "planted values in clear in files L07 wrote"

    # The data was stored (redacted), not dropped: waiting joins still join, rejections and dead letters kept.
    assert result["late"]["examples_extracted"] == 5, "waiting traces must still join on their (kept) ids"
    assert result["joins"].get("orphan_score", 0) + result["joins"].get("waiting", 0) >= 5
    assert "<SECRET_MASKED kind=aws_access_key_id" in rows["l07_pending_joins"]
    assert "<EMAIL_" in rows["l07_pending_joins"] and "<PHONE_" in rows["l07_pending_joins"]
    assert "<SECRET_MASKED kind=" in rows["l07_rejected_events"] and "<SECRET_MASKED kind=" in dead_blob
    assert len(dead) >= 2
    assert "QUARANTINED" in {e.status.value for e in result["examples"]}


def test_home_database_and_keys_are_owner_only(settings: Settings) -> None:
    home = Path(settings.home)
    assert not home.exists()
    service = LearningService.build(settings=settings)

    async def touch() -> None:
        try:
            await service.initialize(start_relay=False)
            await service.process_events([trace("perm-1"), score("perm-1")])
        finally:
            await service.cleanup()

    asyncio.run(touch())
    keyring_for(settings).sign(b"probe")  # makes the first signing key

    def mode(p: Path) -> int:
        return stat.S_IMODE(os.stat(p).st_mode)

    assert mode(home) == 0o700
    db_files = [p for p in home.iterdir() if p.name.startswith("l07.db")]
    assert {p.name for p in db_files} >= {"l07.db"}
    assert {p.name: oct(mode(p)) for p in db_files} == {p.name: oct(0o600) for p in db_files}
    keys = Path(settings.signing_key_path or home / "keys")
    assert mode(keys) == 0o700
    private = [p for p in keys.glob("*.pem") if not p.name.endswith(".pub.pem")]
    assert private and all(mode(p) == 0o600 for p in private)


def test_existing_database_file_is_tightened(settings: Settings) -> None:
    home = Path(settings.home)
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    db_path = home / "l07.db"
    db_path.touch()
    os.chmod(db_path, 0o644)
    Database(settings.database_url or "")
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700


async def test_preference_pairs_and_signal_answers_come_only_from_accepted_examples(settings: Settings) -> None:
    service = LearningService.build(settings=settings)
    goal = "Book a flight from Berlin to Paris on Monday."
    good = "Booked flight BERPAR-1 leaving Berlin Monday 09:10, arriving Paris 10:55, seat 14C, luggage included."
    leaky = f"Use my login, aws {PLANTED['aws_access_key_id']} and password={PLANTED['password']}."
    fair = ("Found three options; the cheapest is the evening train-and-flight combination via Brussels, "
            "total travel time about six hours, which I have reserved provisionally.")

    def t(exec_id: str, answer: str) -> dict[str, Any]:
        ev = trace(exec_id, goal=goal, answer=answer)
        ev["data"]["task_definition"]["context"] = {}
        ev["data"]["execution_trace"] = CLEAN_STEPS
        return ev

    def s(exec_id: str, q: float) -> dict[str, Any]:
        ev = score(exec_id, q=q)
        ev["data"]["metrics"] = {}
        return ev

    try:
        await service.process_events([t("pair-good", good), s("pair-good", 92)])
        await service.process_events([t("pair-leaky", leaky), s("pair-leaky", 75)])   # QUARANTINED: secret
        await service.process_events([t("pair-fair", fair), s("pair-fair", 78)])
        async with service.db.session() as session:
            by_exec = {e.execution_id: e for e in await ExampleRepository(session).list()}
            pairs = await RewardRepository(session).list_pairs()
            signals = (await session.execute(text("SELECT execution_id, data FROM l07_reward_signals"))).all()
    finally:
        await service.cleanup()
    assert by_exec["pair-good"].status.value == "ACCEPTED" and by_exec["pair-fair"].status.value == "ACCEPTED"
    assert by_exec["pair-leaky"].status.value == "QUARANTINED"
    leaky_id = by_exec["pair-leaky"].example_id
    assert all(leaky_id not in (p.chosen_example_id, p.rejected_example_id) for p in pairs), \
        "a quarantined answer became a preference pair"
    assert [(p.chosen_example_id, p.rejected_example_id) for p in pairs] == [
        (by_exec["pair-good"].example_id, by_exec["pair-fair"].example_id)]
    answers = {ex: (json.loads(d) if isinstance(d, str) else d).get("answer") for ex, d in signals}
    assert answers["pair-leaky"] is None and answers["pair-good"] and answers["pair-fair"]
    assert _clear_values(json.dumps([p.model_dump(mode="json") for p in pairs])) == []


async def test_correction_pair_is_made_when_the_feedback_example_is_accepted(settings: Settings) -> None:
    service = LearningService.build(settings=settings)
    reference = ("Step 1: search_flights({}) -> 2 flights\nAnswer: Booked flight OSLROM-5 leaving Oslo Friday 07:40; "
                 f"confirmation sent to {PLANTED['email']}.")
    ev = trace("corr-1", goal="Book a flight from Oslo to Rome on Friday.", answer="No flights.", outcome="failure")
    ev["data"]["task_definition"]["context"] = {}
    ev["data"]["execution_trace"] = CLEAN_STEPS
    sc = score("corr-1", q=30, evaluation_method="human_review", reference_output=reference)
    sc["data"]["metrics"] = {}
    try:
        await service.process_events([ev, sc])
        async with service.db.session() as session:
            statuses = {e.source_type.value: e.status.value for e in await ExampleRepository(session).list()}
            pairs = await RewardRepository(session).list_pairs()
    finally:
        await service.cleanup()
    assert statuses == {"EXECUTION_TRACE": "REJECTED", "QUALITY_FEEDBACK": "ACCEPTED"}
    [pair] = pairs
    assert pair.source == "correction" and pair.rejected.endswith("\nNo flights.")
    assert pair.chosen.startswith("<tool_call>") and "<EMAIL_1>" in pair.chosen and PLANTED["email"] not in pair.chosen


# --- the redaction module -----------------------------------------------------------------------------------------


def test_redaction_masks_every_planted_kind_keeps_ids_and_is_idempotent() -> None:
    record = {"execution_id": "exec-1", "evaluation_id": "ev-9", "_event_id": "e-1", "quality_score": 88.5,
              "goal": PROSE, "context": {"password": PLANTED["password"], PLANTED["email"]: "owner"},
              "steps": [{"parameters": {"token": PLANTED["github_token"]}, "output": f"{PLANTED['jwt']} {PEM}"}]}
    stored = redact_for_storage(record)
    assert _clear_values(json.dumps(stored)) == []
    assert stored["execution_id"] == "exec-1" and stored["evaluation_id"] == "ev-9" and stored["quality_score"] == 88.5
    assert stored["context"]["password"].startswith("<SECRET_MASKED kind=credential_assignment sha256=")
    assert "<EMAIL_1>" in stored["goal"] and "<EMAIL_1>" in stored["context"], "one address, one placeholder"
    assert redact_for_storage(stored) == stored
    assert record["goal"] == PROSE, "the input is not modified"


def test_redacted_raw_payload_stays_valid_json_and_clean_payloads_keep_their_bytes() -> None:
    clean = '{"a": 1,   "b": "Berlin to Paris"}'
    assert redact_raw(clean) == clean
    stored = redact_raw(json.dumps({"id": "x", "note": PROSE}).encode())
    assert json.loads(stored)["id"] == "x" and _clear_values(stored) == []
    broken = '{"note": "' + PROSE
    assert _clear_values(redact_raw(broken)) == []
