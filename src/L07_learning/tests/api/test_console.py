"""The web console without a browser: its session cookie, CSRF checks, role checks and audit rows, the REST
example-review routes it shares services with, and its pages over ingested events (httpx over the real app).

The browser walks through the same pages in ``test_console_browser.py``.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from L07_learning.api import create_app
from L07_learning.api.auth import AuthService
from L07_learning.models.training_example import TrainingExample, compute_content_hash
from L07_learning.services.access import AccessService
from L07_learning.services.learning_service import LearningService
from L07_learning.services.loop.datasets import version_group
from L07_learning.services.loop.policies import GroupSelector
from L07_learning.store.db import Database
from L07_learning.store.repositories.audit import list_audit
from L07_learning.store.tables import SqlTrainingExample
from L07_learning.tests.factories.console import (PLANTED_SECRETS, REVIEW_EXECUTIONS, SECRET_EXECUTIONS,
                                                  review_and_secret_events)
from L07_learning.tests.factories import feedback as fb
from L07_learning.tests.factories.loop import tool_choice_lines

ACCEPTED = 8


@pytest.fixture
async def seeded(sqlite_db: Database, settings) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Real CloudEvents through ingestion and the filter, and one key per role."""
    service = LearningService.build(settings, sqlite_db)
    await service.process_events([json.loads(x) for x in tool_choice_lines(ACCEPTED, seed=5)]
                                 + review_and_secret_events())
    auth = AuthService(AccessService(sqlite_db))
    keys = {r: (await auth.create_key(r, name=f"t-{r}"))[1] for r in ("trainer", "reviewer", "auditor", "admin")}
    return {"keys": keys, "service": service}


@pytest.fixture
async def client(sqlite_db: Database, settings, seeded) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    app = create_app(settings=settings, db=sqlite_db)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.test") as c:
        yield c


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/ui/login")
    return await client.post("/ui/login", data={"api_key": token, "csrf_token": csrf_of(form.text), "next": "/ui/"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_sign_in_sets_a_signed_httponly_strict_cookie_without_the_key(client, seeded) -> None:  # type: ignore[no-untyped-def]
    assert (await client.get("/ui/models")).headers["location"] == "/ui/login?next=/ui/models"
    r = await sign_in(client, seeded["keys"]["trainer"])
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert seeded["keys"]["trainer"] not in cookie
    assert (await client.get("/ui/models")).status_code == 200

    # An altered cookie is no session: back to the sign-in form.
    value = client.cookies["l07_console"]
    client.cookies.set("l07_console", value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"), path="/ui")
    assert (await client.get("/ui/models")).status_code == 303


async def test_a_revoked_key_loses_its_session_at_once(client, seeded, sqlite_db) -> None:  # type: ignore[no-untyped-def]
    auth = AuthService(AccessService(sqlite_db))
    record, token = await auth.create_key("auditor", name="leaver")
    await sign_in(client, token)
    assert (await client.get("/ui/audit")).status_code == 200
    await auth.revoke_key(record.key_id)
    assert (await client.get("/ui/audit")).headers["location"].startswith("/ui/login")


async def test_a_wrong_key_is_refused_and_audited_by_prefix_only(client, sqlite_db) -> None:  # type: ignore[no-untyped-def]
    wrong = "l07_" + "x" * 43
    r = await sign_in(client, wrong)
    assert r.status_code == 401 and "unknown API key" in r.text
    async with sqlite_db.session() as s:
        rows, _ = await list_audit(s, action="api.console.login")
    assert rows[0]["result"] == "denied" and rows[0]["details"]["key_prefix"] == "l07_xxxx..."
    assert wrong not in json.dumps(rows, default=str)


async def test_the_sign_in_form_sends_back_only_to_console_pages(client, seeded) -> None:  # type: ignore[no-untyped-def]
    form = await client.get("/ui/login")
    r = await client.post("/ui/login", data={"api_key": seeded["keys"]["admin"], "csrf_token": csrf_of(form.text),
                                             "next": "//evil.example/ui"})
    assert r.headers["location"] == "/ui/"


async def test_forged_posts_get_403_change_nothing_and_are_audited(client, seeded, sqlite_db) -> None:  # type: ignore[no-untyped-def]
    await sign_in(client, seeded["keys"]["reviewer"])
    page = (await client.get("/ui/examples?status=REVIEW")).text
    example_id = re.search(r'data-example-id="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    for form in ({"decision": "accept"}, {"decision": "accept", "csrf_token": "not-the-token"}):
        r = await client.post(f"/ui/examples/{example_id}/review", data=form)
        assert r.status_code == 403 and "CSRF" in r.text
    stored = (await client.get(f"/api/v1/examples/{example_id}", headers=bearer(seeded["keys"]["reviewer"]))).json()
    assert stored["status"] == "REVIEW"
    async with sqlite_db.session() as s:
        rows, _ = await list_audit(s, action="api.console.examples.review", result="denied")
    assert len(rows) == 2 and {r["error_code"] for r in rows} == {"E7904"}


async def test_roles_see_and_press_what_rest_allows(client, seeded) -> None:  # type: ignore[no-untyped-def]
    keys = seeded["keys"]
    await sign_in(client, keys["trainer"])
    assert (await client.get("/ui/examples")).status_code == 403
    assert (await client.get("/ui/audit")).status_code == 403
    assert (await client.get("/api/v1/examples", headers=bearer(keys["trainer"]))).status_code == 403
    page = (await client.get("/ui/models")).text
    assert 'href="/ui/audit"' not in page and 'href="/ui/examples"' not in page
    # The trainer's session, its own CSRF token, a reviewer's action: refused like REST refuses it.
    example_id = (await client.get("/api/v1/examples?status=REVIEW", headers=bearer(keys["admin"]))).json()[
        "data"][0]["example_id"]
    r = await client.post(f"/ui/examples/{example_id}/review", data={"decision": "accept", "csrf_token": csrf_of(page)})
    assert r.status_code == 403 and "E7904" in r.text
    r = await client.post(f"/api/v1/examples/{example_id}/review", json={"decision": "accept"},
                          headers=bearer(keys["trainer"]))
    assert r.status_code == 403

    client.cookies.clear()
    await sign_in(client, keys["auditor"])
    assert 'href="/ui/audit"' in (await client.get("/ui/audit")).text


async def test_a_reviewer_decision_moves_the_example_and_counts_a_reject(client, seeded) -> None:  # type: ignore[no-untyped-def]
    keys = seeded["keys"]
    await sign_in(client, keys["reviewer"])
    queue = (await client.get("/api/v1/examples?status=REVIEW", headers=bearer(keys["reviewer"]))).json()
    assert queue["count"] == REVIEW_EXECUTIONS
    accept, reject = (row["example_id"] for row in queue["data"][:2])
    page = (await client.get("/ui/examples?status=REVIEW")).text
    r = await client.post(f"/ui/examples/{accept}/review", data={"decision": "accept", "csrf_token": csrf_of(page)})
    assert r.status_code == 303 and r.headers["location"] == "/ui/examples?status=REVIEW"
    assert f"example {accept} is now ACCEPTED" in (await client.get(r.headers["location"])).text
    r = await client.post(f"/api/v1/examples/{reject}/review", json={"decision": "reject", "note": "wrong policy"},
                          headers=bearer(keys["reviewer"]))
    assert r.status_code == 200 and r.json()["status"] == "REJECTED"
    rejected = (await client.get("/api/v1/examples?reason=human_review", headers=bearer(keys["reviewer"]))).json()
    assert [e["example_id"] for e in rejected["data"]] == [reject]
    assert rejected["data"][0]["reasons"][-1]["detail"].endswith("wrong policy")
    assert (await client.get("/api/v1/examples?status=REVIEW", headers=bearer(keys["reviewer"]))).json()["count"] == (
        REVIEW_EXECUTIONS - 2)
    again = await client.post(f"/api/v1/examples/{accept}/review", json={"decision": "reject"},
                              headers=bearer(keys["reviewer"]))
    assert again.status_code == 409 and again.json()["code"] == "E7110"
    missing = await client.post("/api/v1/examples/nope/review", json={"decision": "reject"},
                                headers=bearer(keys["reviewer"]))
    assert missing.status_code == 404


async def test_examples_pages_filter_paginate_and_never_show_a_secret(client, seeded) -> None:  # type: ignore[no-untyped-def]
    await sign_in(client, seeded["keys"]["admin"])
    total = ACCEPTED + REVIEW_EXECUTIONS + SECRET_EXECUTIONS
    everything = (await client.get("/ui/examples")).text
    assert f"{total} in all" in everything
    quarantined = (await client.get("/ui/examples?status=QUARANTINED&agent_id=agent-ops-2")).text
    assert quarantined.count("data-example-id=") == SECRET_EXECUTIONS and "SECRET_MASKED" in quarantined
    by_reason = (await client.get("/ui/examples?reason=secret")).text
    assert by_reason.count("data-example-id=") == SECRET_EXECUTIONS
    for html in (everything, quarantined, by_reason, (await client.get("/ui/examples?q=credential")).text,
                 (await client.get("/ui/")).text, (await client.get("/ui/audit")).text):
        assert not any(secret in html for secret in PLANTED_SECRETS.values())
    assert (await client.get("/ui/examples?status=bogus")).status_code == 400
    # A text search is not counted: matches and a next page, no total.
    found = (await client.get("/api/v1/examples?q=credential&limit=2", headers=bearer(seeded["keys"]["admin"]))).json()
    assert found["count"] is None and found["more"] is True and len(found["data"]) == 2


async def test_overview_counts_the_funnel_and_the_rejections(client, seeded) -> None:  # type: ignore[no-untyped-def]
    await sign_in(client, seeded["keys"]["auditor"])
    html = (await client.get("/ui/")).text
    day = html[html.index('id="funnel-day"'):html.index('id="funnel-week"')]
    counts = dict(zip(re.findall(r'class="l">(\w+)<', day), map(int, re.findall(r'class="n">(\d+)<', day))))
    events = 2 * (ACCEPTED + REVIEW_EXECUTIONS + SECRET_EXECUTIONS)
    assert counts == {"events": events, "examples": ACCEPTED + REVIEW_EXECUTIONS + SECRET_EXECUTIONS,
                      "accepted": ACCEPTED, "datasets": 0, "jobs": 0, "models": 0}
    rejections = html[html.index('id="rejections"'):]
    assert f"QUARANTINE/secret</a></td>\n        <td class=\"num\">{SECRET_EXECUTIONS}</td>" in rejections


async def _edit_accept(client: httpx.AsyncClient, example_id: str, answer: str) -> httpx.Response:
    page = (await client.get("/ui/examples?status=REVIEW")).text
    return await client.post(f"/ui/examples/{example_id}/review",
                             data={"decision": "accept", "output_text": answer, "csrf_token": csrf_of(page)})


async def test_a_reviewer_edits_an_answer_which_is_stored_redacted_and_audited(client, seeded, sqlite_db) -> None:  # type: ignore[no-untyped-def]
    keys = seeded["keys"]
    queue = (await client.get("/api/v1/examples?status=REVIEW", headers=bearer(keys["reviewer"]))).json()["data"]
    first, second, third = (row["example_id"] for row in queue[:3])
    answer = f"Refunds are paid within 5 working days; the portal token is {PLANTED_SECRETS['github']}."

    await sign_in(client, keys["reviewer"])
    forged = await client.post(f"/ui/examples/{first}/review", data={"decision": "accept", "output_text": answer})
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert (await client.get(f"/api/v1/examples/{first}", headers=bearer(keys["reviewer"]))).json()[
        "status"] == "REVIEW"

    r = await _edit_accept(client, first, answer)
    assert r.status_code == 303
    assert f"example {first} is now ACCEPTED with the edited answer" in (await client.get(r.headers["location"])).text
    stored = (await client.get(f"/api/v1/examples/{first}", headers=bearer(keys["reviewer"]))).json()
    assert stored["status"] == "ACCEPTED" and "Refunds are paid within 5 working days" in stored["output_text"]
    assert PLANTED_SECRETS["github"] not in stored["output_text"]
    # What training reads (the stored example, its chat messages) carries the edit, masked as well.
    async with sqlite_db.session() as s:
        row = await s.get(SqlTrainingExample, first)
    example = TrainingExample.model_validate(row.data)
    assert example.output_text == stored["output_text"] == example.chat_messages()[-1]["content"]
    assert example.content_hash == row.content_hash == compute_content_hash(example.input_text, example.output_text)
    assert PLANTED_SECRETS["github"] not in json.dumps(row.data)

    # REST: the same option; an edit with a reject, or an empty edit, is refused and changes nothing.
    rest = await client.post(f"/api/v1/examples/{second}/review", headers=bearer(keys["reviewer"]),
                             json={"decision": "accept", "output_text": "Paid within 3 working days."})
    assert rest.status_code == 200 and rest.json()["edited"] is True
    assert (await client.get(f"/api/v1/examples/{second}", headers=bearer(keys["reviewer"]))).json()[
        "output_text"] == "Paid within 3 working days."
    bad = await client.post(f"/api/v1/examples/{third}/review", headers=bearer(keys["reviewer"]),
                            json={"decision": "reject", "output_text": "x"})
    assert bad.status_code == 400 and bad.json()["code"] == "E7110"
    trainer = await client.post(f"/api/v1/examples/{third}/review", headers=bearer(keys["trainer"]),
                                json={"decision": "accept", "output_text": "x"})
    assert trainer.status_code == 403
    assert (await client.get(f"/api/v1/examples/{third}", headers=bearer(keys["reviewer"]))).json()["status"] == "REVIEW"
    async with sqlite_db.session() as s:
        rows, _ = await list_audit(s, action="example.review", resource_id=first)
        calls, _ = await list_audit(s, action="api.console.examples.review", result="success")
    assert rows[0]["details"]["edited"] is True and calls[0]["details"]["edited"] is True
    assert PLANTED_SECRETS["github"] not in json.dumps(rows + calls, default=str)


async def test_dataset_versions_diff_and_download_with_training_data_permission(client, seeded, sqlite_db) -> None:  # type: ignore[no-untyped-def]
    keys, curator = seeded["keys"], seeded["service"].curator
    group = GroupSelector(task_type="support_reply")
    queue = (await client.get("/api/v1/examples?status=REVIEW", headers=bearer(keys["reviewer"]))).json()["data"]
    plain, edited = queue[0]["example_id"], queue[1]["example_id"]
    await sign_in(client, keys["reviewer"])
    page = (await client.get("/ui/examples?status=REVIEW")).text
    await client.post(f"/ui/examples/{plain}/review", data={"decision": "accept", "csrf_token": csrf_of(page)})
    v1 = await version_group(curator, sqlite_db, "support", group, min_examples=1, created_by="test")
    await _edit_accept(client, edited, f"Use the key {PLANTED_SECRETS['aws']} to refund within 2 days.")
    v2 = await version_group(curator, sqlite_db, "support", group, min_examples=1, created_by="test")

    html = (await client.get(f"/ui/datasets/{v1.dataset_id}")).text
    assert f'action="/ui/datasets/{v1.dataset_id}/diff"' in html and "Download (zip)" in html
    diff = await client.get(f"/ui/datasets/{v1.dataset_id}/diff", params={"from": v1.version, "to": v2.version})
    assert diff.status_code == 200 and "1 added, 0 removed" in diff.text
    added = re.findall(r'<tr class="added">.*?class="id">([^<]+)<', diff.text)
    assert added == [edited]
    splits = diff.text[diff.text.index('id="diff-splits"'):diff.text.index('id="diff-statistics"')]
    assert sum(int(n) for n in re.findall(r'<td class="num">\+(\d+)</td>', splits)) == 1
    assert "total_examples</th><td class=\"num\">+1</td>" in diff.text
    assert (await client.get(f"/ui/datasets/{v1.dataset_id}/diff", params={"from": v1.version, "to": "9.9.9"})
            ).status_code == 404

    got = await client.get(f"/ui/datasets/{v1.dataset_id}/download", params={"version": v2.version})
    assert got.status_code == 200 and got.headers["content-type"] == "application/zip"
    assert f'filename="support-{v2.version}-jsonl.zip"' in got.headers["content-disposition"]
    archive = zipfile.ZipFile(io.BytesIO(got.content))
    rows = [json.loads(line) for name in archive.namelist() if name.endswith(".jsonl")
            for line in archive.read(name).decode().splitlines()]
    assert sorted(r["example_id"] for r in rows) == sorted([plain, edited]) and "manifest.json" in archive.namelist()
    answer = next(r for r in rows if r["example_id"] == edited)["messages"][-1]["content"]
    assert "to refund within 2 days" in answer
    assert not any(secret in archive.read(n).decode() for n in archive.namelist() for secret in PLANTED_SECRETS.values())
    parquet = await client.get(f"/ui/datasets/{v1.dataset_id}/download", params={"format": "parquet"})
    names = zipfile.ZipFile(io.BytesIO(parquet.content)).namelist()
    assert parquet.status_code == 200 and any(n.endswith(".parquet") for n in names)
    assert (await client.get(f"/ui/datasets/{v1.dataset_id}/download", params={"format": "csv"})).status_code == 400

    # A trainer lists datasets and sees the diff, but may not take the data away: 403, audited as a read.
    client.cookies.clear()
    await sign_in(client, keys["trainer"])
    assert "Download (zip)" not in (await client.get(f"/ui/datasets/{v1.dataset_id}")).text
    assert (await client.get(f"/ui/datasets/{v1.dataset_id}/download")).status_code == 403
    async with sqlite_db.session() as s:
        reads, _ = await list_audit(s, action="api.console.dataset_download")
        exports, _ = await list_audit(s, action="dataset.export")
    assert [r["result"] for r in reads] == ["denied", "failure", "success", "success"]
    assert all(r["details"]["training_data_read"] for r in reads) and len(exports) == 2


async def test_outcomes_page_shows_quality_per_model_with_releases_and_rollbacks(  # type: ignore[no-untyped-def]
        client, seeded, sqlite_db, tmp_path) -> None:
    service = seeded["service"]
    v1 = await fb.register(service.registry, tmp_path, "1.0.0", seed=1)
    v2 = await fb.register(service.registry, tmp_path, "1.1.0", seed=2)

    async def served(prefix: str, scores: list[float]) -> None:
        # The gateway names the model; the name resolves to the version ACTIVE when the response is logged.
        events = [fb.response_event(f"{prefix}-{i}", fb.NAME) for i in range(len(scores))]
        await service.process_events(events + [fb.score_event(f"{prefix}-{i}", q) for i, q in enumerate(scores)])

    await fb.to_production(service.registry, v1)
    await served("v1", [80.0, 90.0])
    await fb.to_production(service.registry, v2)
    await served("v2", [60.0, 70.0, 65.0])
    await service.registry.rollback(fb.NAME, actor="ops", reason="quality_degradation")

    await sign_in(client, seeded["keys"]["auditor"])
    assert 'href="/ui/outcomes"' in (await client.get("/ui/models")).text
    html = (await client.get("/ui/outcomes")).text
    models = html[html.index('id="outcome-models"'):html.index('id="outcome-markers"')]
    quality = {m: re.search(rf'data-model-id="{m}">.*?"samples" class="num">(\d+)<.*?"quality" class="num">([\d.]+)<',
                            models, re.S).groups() for m in (v1, v2)}  # type: ignore[union-attr]
    assert quality == {v1: ("2", "85.00"), v2: ("3", "65.00")}
    markers = html[html.index('id="outcome-markers"'):html.index('id="outcome-series"')]
    kinds = re.findall(r'<tr class="(release|rollback)">.*?href="/ui/models/([^"]+)"', markers, re.S)
    assert kinds[:2] == [("release", v1), ("release", v2)] and set(kinds[2:]) == {("rollback", v1), ("rollback", v2)}
    chart = json.loads(re.search(r'id="outcomes-points">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert {m["id"]: [p[1] for p in m["points"]] for m in chart["models"]} == {v1: [85.0], v2: [65.0]}
    assert [k["kind"] for k in chart["markers"]].count("rollback") == 2

    client.cookies.clear()
    _, inference = await AuthService(AccessService(sqlite_db)).create_key("inference", name="gateway")
    await sign_in(client, inference)
    assert (await client.get("/ui/outcomes")).status_code == 403
