"""``l07 models promote ID STAGE --override --reason TEXT``: an admin key's override goes through and is audited; a
deployer key's is refused (E7904), and so is an override without a reason (E7110)."""

from __future__ import annotations

import json

from L07_learning.tests.cli.test_cli import _l07
from L07_learning.tests.services.registry.test_registry import make_model_dir


def test_the_cli_override_needs_an_admin_key_and_a_reason(tmp_path):
    env = {"L07_HOME": str(tmp_path / "home")}
    model = json.loads(_l07("models", "register-base", str(make_model_dir(tmp_path / "m")), "--name", "tiny",
                            "--json", env=env).stdout)
    keys = {role: json.loads(_l07("keys", "create", "--role", role, "--json", env=env).stdout)
            for role in ("admin", "deployer")}
    promote = ("models", "promote", model["model_id"], "staging", "--override", "--json")

    refused = _l07(*promote, "--reason", "hotfix", "--admin-key", keys["deployer"]["api_key"], env=env)
    assert refused.returncode != 0 and json.loads(refused.stdout)["error"]["code"] == "E7904", refused.stdout
    no_reason = _l07(*promote, "--admin-key", keys["admin"]["api_key"], env=env)
    assert json.loads(no_reason.stdout)["error"]["code"] == "E7110", no_reason.stdout

    done = _l07(*promote, "--reason", "hotfix", env={**env, "L07_ADMIN_KEY": keys["admin"]["api_key"]})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["stage"] == "STAGING"
    audit = json.loads(_l07("audit", "list", "--action", "model.gates_overridden", "--json", env=env).stdout)
    assert [(r["details"]["reason"], r["actor"]["identifier"]) for r in audit["data"]] == [
        ("hotfix", keys["admin"]["key_id"])]
