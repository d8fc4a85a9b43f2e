"""``l07 audit`` and ``l07 retention``: the chain check exits non-zero naming the first broken row, CLI actions are
audited under the OS user and host, and the retention purge is reachable with ``--dry-run``."""

from __future__ import annotations

import getpass
import json
import socket
import sqlite3

from typer.testing import CliRunner

from L07_learning.cli.main import app as cli


def _json(*args: str) -> dict:
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_audit_verify_and_cli_origin(settings) -> None:  # type: ignore[no-untyped-def]
    CliRunner().invoke(cli, ["keys", "create", "--role", "auditor", "--json"])
    assert _json("examples", "list", "--status", "accepted")["count"] == 0  # reading training data is audited too
    dry = _json("retention", "purge", "--dry-run")
    assert dry["dry_run"] is True and set(dry["counts"].values()) == {0}
    purged = _json("retention", "purge")
    assert purged["verified"] is True and purged["audit_id"]

    rows = {r["action"]: r for r in _json("audit", "list")["data"]}
    me = f"{getpass.getuser()}@{socket.gethostname()}"
    assert rows["retention.purge"]["actor"]["type"] == "user" and rows["retention.purge"]["actor"]["identifier"] == me
    assert rows["api_key.create"]["actor"]["user_agent"].startswith("l07-cli/") and me in rows["api_key.create"][
        "actor"]["user_agent"]

    assert rows["training_data.read"]["details"] == {"status": "ACCEPTED", "limit": 50, "returned": 0}

    ok = CliRunner().invoke(cli, ["audit", "verify"])
    assert ok.exit_code == 0 and "intact: 3 rows" in ok.output

    path = settings.database_url.split("///", 1)[1]
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE l07_audit_log SET details = '{\"role\": \"admin\"}' WHERE seq = 1")
    broken = CliRunner().invoke(cli, ["audit", "verify"])
    assert broken.exit_code == 1
    assert "BROKEN at seq 1" in broken.output and "content changed" in broken.output
    report = json.loads(CliRunner().invoke(cli, ["audit", "verify", "--json"]).stdout)
    assert report["ok"] is False and report["first_broken"]["seq"] == 1
