"""The web console in a real browser: headless Chromium (Debian's ``chromium``, driven by Playwright) against
``l07 serve`` on a free port, over a home seeded through the real services (tests/factories/console.py).

Each test signs in with a key through the form, as a person would, and checks what the REST API says afterwards.
Screenshots of every page land in ``$L07_CONSOLE_SCREENSHOTS`` (default: a temporary folder, printed).
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from L07_learning.tests.factories.console import PLANTED_SECRETS, TINY_JOB, Served, seed, start_worker

CHROMIUM = "/usr/bin/chromium"
playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A seeded home served by ``l07 serve``, the candidate validated and in STAGING (through REST), a job waiting."""
    root = tmp_path_factory.mktemp("console")
    home = root / "home"
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        seeded = pool.submit(asyncio.run, seed(home)).result()
    served = Served(home)
    shots = Path(os.environ.get("L07_CONSOLE_SCREENSHOTS") or root / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    keys = seeded["keys"]
    try:
        with httpx.Client(base_url=served.url, timeout=60) as rest:
            # The candidate's validation runs in the server while the job trains (two cores: overlap, not queue).
            r = rest.post(f"/api/v1/models/{seeded['candidate_id']}/validate", json={},
                          headers=bearer(keys["reviewer"]))
            assert r.status_code == 202, r.text
            validation_url = r.json()["status_url"]
            r = rest.post("/api/v1/training/jobs", headers=bearer(keys["trainer"]), json={
                "dataset_id": seeded["dataset_id"], "base_model_id": seeded["base_id"], "config": TINY_JOB})
            assert r.status_code == 202, r.text
        yield {**seeded, "home": home, "url": served.url, "shots": shots, "job_id": r.json()["job_id"],
               "validation_url": validation_url}
    finally:
        served.close()
    print(f"console screenshots in {shots}")


@pytest.fixture(scope="module")
def staged(world: dict[str, Any]) -> str:
    """The candidate, validated (DEPLOY) and promoted to STAGING through REST; its id."""
    keys, model = world["keys"], world["candidate_id"]
    with httpx.Client(base_url=world["url"], timeout=60) as rest:
        wait_until(lambda: rest.get(world["validation_url"], headers=bearer(keys["auditor"])).json()["status"]
                   != "RUNNING", 120, "validation")
        polled = rest.get(world["validation_url"], headers=bearer(keys["auditor"])).json()
        assert polled["result"]["recommendation"] == "DEPLOY", polled
        r = rest.post(f"/api/v1/models/{model}/promote", json={"stage": "staging"}, headers=bearer(keys["deployer"]))
        assert r.status_code == 200 and r.json()["stage"] == "STAGING", r.text
    return model


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_until(check: Any, timeout_s: float, what: str) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} did not happen within {timeout_s} s")


def sign_in(browser: Any, world: dict[str, Any], who: str, **context: Any) -> Any:
    """A fresh browser context signed in with ``who``'s key, typed into the form and sent with the keyboard."""
    page = browser.new_context(**context).new_page()
    page.goto(world["url"] + "/ui/")
    assert "/ui/login" in page.url
    assert page.evaluate("document.activeElement.id") == "api_key"  # focus starts in the key field
    page.keyboard.type(world["keys"][who])
    page.keyboard.press("Enter")
    page.wait_for_url(lambda url: "/ui/login" not in url)
    assert page.url.endswith("/ui/")
    return page


def shot(page: Any, world: dict[str, Any], name: str) -> None:
    page.screenshot(path=str(world["shots"] / f"{name}.png"), full_page=True)


def test_a_job_loss_curve_appears_while_it_trains(browser: Any, world: dict[str, Any]) -> None:
    page = sign_in(browser, world, "trainer")
    page.goto(f"{world['url']}/ui/jobs/{world['job_id']}")
    assert page.locator("#no-curve").is_visible() and page.locator("#job-status").inner_text() == "PENDING"
    assert page.get_by_role("button", name="Cancel job").is_visible()  # the trainer's own job
    shot(page, world, "job-pending")
    worker = start_worker(world["home"])
    try:
        # htmx polls the live part every 2 s; uPlot draws the points the worker's child stored.
        page.wait_for_selector("#loss-table tbody tr, #job-status:has-text('FAILED')", state="attached",
                               timeout=120_000)
        assert page.locator("#job-status").inner_text() != "FAILED", page.locator("#job-live .error").all_inner_texts()
        shot(page, world, "job-loss-curve")
        page.wait_for_selector("#job-status:has-text('COMPLETED')", timeout=120_000)
    finally:
        worker.wait(timeout=120)
    steps = page.locator("#loss-table tbody tr").count()
    assert steps >= 4 and not page.get_by_role("button", name="Cancel job").is_visible()
    # With JavaScript, uPlot's chart replaces the server-drawn SVG (which a browser without it shows).
    assert page.locator("#loss-chart .uplot canvas").count() >= 1 and page.locator("#loss-chart svg").is_hidden()
    shot(page, world, "job-completed")
    with httpx.Client(base_url=world["url"]) as rest:
        job = rest.get(f"/api/v1/training/jobs/{world['job_id']}", headers=bearer(world["keys"]["auditor"])).json()
    assert job["status"] == "COMPLETED" and job["metrics"]["global_step"] == steps


@pytest.mark.parametrize(("role", "nav", "forbidden"), [
    ("trainer", {"Overview", "Datasets", "Jobs", "Models", "Outcomes"}, ["/ui/examples", "/ui/audit"]),
    ("reviewer", {"Overview", "Examples", "Datasets", "Jobs", "Models", "Outcomes"}, ["/ui/audit"]),
    ("deployer", {"Overview", "Datasets", "Jobs", "Models", "Outcomes"}, ["/ui/examples", "/ui/audit"]),
    ("auditor", {"Overview", "Datasets", "Jobs", "Models", "Outcomes", "Audit"}, ["/ui/examples"]),
    ("admin", {"Overview", "Examples", "Datasets", "Jobs", "Models", "Outcomes", "Audit"}, []),
])
def test_each_role_sees_and_may_press_what_rest_allows(browser: Any, world: dict[str, Any], staged: str, role: str,
                                                       nav: set[str], forbidden: list[str]) -> None:
    page = sign_in(browser, world, role)
    assert set(page.locator("header nav a").all_inner_texts()) == nav
    shot(page, world, f"overview-{role}")
    for path in forbidden:
        response = page.goto(world["url"] + path)
        assert response is not None and response.status == 403 and "E7904" in page.content()
    page.goto(f"{world['url']}/ui/models/{staged}")
    buttons = set(page.locator("#model-actions button").all_inner_texts())
    expected = {"trainer": set(), "auditor": set(),
                "reviewer": set(),  # STAGING -> PRODUCTION: deployer and ml_manager approve; a reviewer has neither
                "deployer": {"Approve PRODUCTION as deployer", "Promote to PRODUCTION"},
                "admin": {"Approve PRODUCTION as deployer", "Approve ARCHIVED as admin", "Promote to PRODUCTION",
                          "Archive"}}[role]
    assert buttons == expected
    shot(page, world, f"model-{role}")
    page.goto(f"{world['url']}/ui/jobs/{world['job_id']}")
    # Only the trainer that submitted the job and admins may cancel it (REST: 403 for anyone else).
    assert page.get_by_role("button", name="Cancel job").count() in ((0, 1) if role in ("trainer", "admin") else (0,))
    if role in ("reviewer", "admin"):
        page.goto(world["url"] + "/ui/examples?status=REVIEW")
        assert page.get_by_role("button", name="Accept", exact=True).count() >= 1
        shot(page, world, f"review-queue-{role}")


def test_a_reviewer_decides_an_example_and_rest_sees_it(browser: Any, world: dict[str, Any]) -> None:
    page = sign_in(browser, world, "reviewer")
    page.goto(world["url"] + "/ui/examples?status=REVIEW")
    first = page.locator("#examples tbody tr").first
    example_id = first.get_attribute("data-example-id")
    waiting = page.locator("#examples tbody tr").count()
    first.locator("input[name=note]").fill("checked the refund policy")
    first.get_by_role("button", name="Accept", exact=True).click()
    page.wait_for_selector(".flash")
    assert f"example {example_id} is now ACCEPTED" in page.locator(".flash").inner_text()
    assert page.locator("#examples tbody tr[data-example-id]").count() == waiting - 1
    shot(page, world, "review-accepted")
    keys = world["keys"]
    with httpx.Client(base_url=world["url"]) as rest:
        stored = rest.get(f"/api/v1/examples/{example_id}", headers=bearer(keys["reviewer"])).json()
        assert stored["status"] == "ACCEPTED"
        # Deciding it again is refused with 409: it left the queue.
        again = rest.post(f"/api/v1/examples/{example_id}/review", json={"decision": "reject"},
                          headers=bearer(keys["reviewer"]))
        assert again.status_code == 409 and again.json()["code"] == "E7110"
        rows = rest.get("/api/v1/audit", params={"resource_id": example_id},
                        headers=bearer(keys["auditor"])).json()["data"]
    actions = {r["action"]: r for r in rows}
    assert actions["example.review"]["details"]["note"] == "checked the refund policy"
    assert actions["api.console.examples.review"]["actor"]["type"] == "api_key"


def test_two_keys_approve_and_promote_a_model_to_production(browser: Any, world: dict[str, Any], staged: str) -> None:
    model_url = f"{world['url']}/ui/models/{staged}"
    deployer = sign_in(browser, world, "deployer")
    deployer.goto(model_url)
    deployer.get_by_role("button", name="Promote to PRODUCTION").click()
    assert deployer.locator("h1").inner_text().startswith("E7252")  # no approvals yet: refused, nothing changes
    shot(deployer, world, "promote-refused")
    deployer.goto(model_url)
    deployer.get_by_role("button", name="Approve PRODUCTION as deployer").click()
    assert "approved PRODUCTION as deployer" in deployer.locator(".flash").inner_text()

    manager = sign_in(browser, world, "ml_manager")
    manager.goto(model_url)
    assert manager.locator("#model-actions button").all_inner_texts() == ["Approve PRODUCTION as ml_manager"]
    manager.get_by_role("button", name="Approve PRODUCTION as ml_manager").click()
    assert "approved PRODUCTION as ml_manager" in manager.locator(".flash").inner_text()

    deployer.goto(model_url)
    deployer.get_by_role("button", name="Promote to PRODUCTION").click()
    assert "model is now PRODUCTION (ACTIVE)" in deployer.locator(".flash").inner_text()
    assert deployer.locator("#model-stage").inner_text() == "PRODUCTION"
    assert deployer.get_by_role("button", name="Roll back").is_visible()
    shot(deployer, world, "model-production")
    with httpx.Client(base_url=world["url"]) as rest:
        model = rest.get(f"/api/v1/models/{world['candidate_id']}", headers=bearer(world["keys"]["auditor"])).json()
    assert (model["stage"], model["serving_state"]) == ("PRODUCTION", "ACTIVE")
    assert sorted(a["role"] for a in model["stage_history"][-1]["approvals"]) == ["deployer", "ml_manager"]


def test_a_trainer_gets_no_approve_button_and_forged_posts_get_403(browser: Any, world: dict[str, Any]) -> None:
    model = world["base_id"]
    trainer = sign_in(browser, world, "trainer")
    trainer.goto(f"{world['url']}/ui/models/{model}")
    assert trainer.locator("#model-actions button").count() == 0 and trainer.locator("#no-actions").is_visible()
    shot(trainer, world, "model-trainer")
    # The trainer's session posting the approval anyway, with its own CSRF token: refused by role, as REST does.
    token = trainer.locator("form[action='/ui/logout'] input[name=csrf_token]").get_attribute("value")
    r = trainer.request.post(f"{world['url']}/ui/models/{model}/approve",
                             form={"csrf_token": token, "stage": "ARCHIVED", "capacity": "admin"})
    assert r.status == 403 and "E7904" in r.text()
    # An admin session, but a post without the form's token, or with another one: refused before any role check.
    admin = sign_in(browser, world, "admin")
    for form in ({"stage": "ARCHIVED", "capacity": "admin"},
                 {"stage": "ARCHIVED", "capacity": "admin", "csrf_token": token}):
        r = admin.request.post(f"{world['url']}/ui/models/{model}/approve", form=form)
        assert r.status == 403 and "CSRF" in r.text()
    admin.set_content(r.text())
    shot(admin, world, "forged-post-403")
    with httpx.Client(base_url=world["url"]) as rest:
        stored = rest.get(f"/api/v1/models/{model}", headers=bearer(world["keys"]["auditor"])).json()
        denied = rest.get("/api/v1/audit", params={"action": "api.console.models.approve", "result": "denied"},
                          headers=bearer(world["keys"]["auditor"])).json()
    assert stored["stage"] == "DEVELOPMENT" and denied["count"] >= 3


def test_no_secret_in_clear_on_any_page(browser: Any, world: dict[str, Any]) -> None:
    page = sign_in(browser, world, "admin", viewport={"width": 390, "height": 844})  # a phone: the narrow layout
    shot(page, world, "overview-narrow")
    paths = ["/ui/", "/ui/overview/loop", "/ui/examples", "/ui/examples?status=QUARANTINED", "/ui/examples?reason=secret",
             "/ui/examples?agent_id=agent-ops-2", "/ui/examples?q=credential", "/ui/datasets",
             f"/ui/datasets/{world['dataset_id']}", "/ui/jobs", f"/ui/jobs/{world['job_id']}", "/ui/models",
             f"/ui/models/{world['candidate_id']}", f"/ui/models/{world['base_id']}", "/ui/audit",
             "/ui/audit?page=2"]
    masked = 0
    for path in paths:
        response = page.goto(world["url"] + path)
        assert response is not None and response.status == 200, path
        html = page.content()
        for name, secret in PLANTED_SECRETS.items():
            assert secret not in html, f"{name} secret in clear on {path}"
        masked += html.count("SECRET_MASKED")
        name = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "id", path).strip("/").replace("/", "-").replace("?", "-")
        shot(page, world, "admin-" + name.replace("=", "-"))
    assert masked >= 3  # the examples holding them are shown, with their masks
