"""The `l07` CLI: help is fast and torch-free; status and db commands work and print JSON on request."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _l07(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "L07_learning.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_help_and_import_do_not_load_torch():
    code = ("import sys, L07_learning, L07_learning.cli.main, L07_learning.api; "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert _l07("--help").returncode == 0


def test_version_status_and_db_upgrade_json(tmp_path):
    env = {"L07_HOME": str(tmp_path / "home")}
    assert json.loads(_l07("version", "--json", env=env).stdout)["version"]
    up = _l07("db", "upgrade", "--json", env=env)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["to"]
    st = _l07("status", "--json", env=env)
    body = json.loads(st.stdout)
    assert body["tables"]["l07_training_examples"] == 0 and body["revision"] == json.loads(up.stdout)["to"]


def test_unreachable_database_is_a_clean_error(tmp_path):
    res = _l07("status", "--json", env={"L07_HOME": str(tmp_path), "L07_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})
    assert res.returncode == 2
    assert json.loads(res.stdout)["error"]["code"] == "E7903"
    assert "Traceback" not in res.stderr
