"""Property-based run of schemathesis against the app's own OpenAPI schema: no 500 and no schema violation.

Every operation gets a bounded number of generated requests, sent with an admin key (so requests reach the
services, not only the auth check) through httpx to the real app over a real SQLite database. The app, its database
and the client live on one event loop owned by the fixture, because the async database pool must stay on the loop
that opened it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from L07_learning.api import create_app
from L07_learning.api.config import ApiConfig
from L07_learning.api.auth import AuthService
from L07_learning.services.access import AccessService
from L07_learning.settings import Settings
from L07_learning.store.db import Database

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MAX_EXAMPLES = 25


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    headers: dict[str, str]

    def send(self, case: schemathesis.Case) -> httpx.Response:
        kwargs = case.as_transport_kwargs(base_url=str(self.client.base_url), headers=self.headers)
        kwargs.pop("base_url", None)
        return self.loop.run_until_complete(self.client.request(**kwargs))


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    home = tmp_path_factory.mktemp("l07schema")
    app_settings = Settings(home=home)
    loop = asyncio.new_event_loop()
    db = Database(f"sqlite+aiosqlite:///{Path(home) / 'schema.db'}", auto_migrate=True)
    _, token = loop.run_until_complete(AuthService(AccessService(db)).create_key("admin"))
    # Generous limits: this run is about schema conformance, not about throttling.
    app = create_app(settings=app_settings, db=db, config=ApiConfig(rate_limit_events_per_s=None))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l07.test")
    yield Harness(loop, client, {"Authorization": f"Bearer {token}"})
    loop.run_until_complete(client.aclose())
    loop.run_until_complete(db.dispose())
    loop.close()


@pytest.fixture(scope="module")
def api_schema(harness: Harness) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_dict(harness.client._transport.app.openapi())  # type: ignore[attr-defined]


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_error_and_no_schema_violation(case: schemathesis.Case, harness: Harness) -> None:
    response = harness.send(case)
    case.validate_response(response, checks=CHECKS)
