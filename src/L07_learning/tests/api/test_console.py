"""The web console without a browser: its session cookie, CSRF checks, role checks and audit rows, the REST
example-review routes it shares services with, and its pages over ingested events (httpx over the real app).

The browser walks through the same pages in ``test_console_browser.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from L07_learning.api import create_app
from L07_learning.api.auth import AuthService
from L07_learning.services.access import AccessService
from L07_learning.services.learning_service import LearningService
from L07_learning.store.db import Database
from L07_learning.store.repositories.audit import list_audit
from L07_learning.tests.factories.console import (PLANTED_SECRETS, REVIEW_EXECUTIONS, SECRET_EXECUTIONS,
                                                  review_and_secret_events)
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
    # A text search scans every text once: matches and a next page, no total.
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
