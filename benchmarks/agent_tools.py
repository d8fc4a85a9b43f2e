"""Agent-ready models (issue 20): a model tuned by ``l07 train`` with no flags on a support-desk agent's traces,
called the way the agent calls it, makes the right tool call on held-out requests.

Family (``tests/factories/agent_family.py``): a support-desk agent with its own system prompt and three tools
(``track_parcel``, ``refund_order``, ``reset_password``) whose traces carry the system prompt and the OpenAI tool
schemas, as an agent runtime captures them. 300 executions, about 20% with a wrong argument that L06 scores low.

Path, in a fresh ``L07_HOME`` (SQLite + files): ``l07 ingest FILE``, ``l07 datasets create``, ``l07 train --dataset
ID`` (no flags); then ``l07 serve-model`` serves the base model and the tuned adapter in turn, and the official
``openai`` client sends each of 60 fresh requests (never ingested) twice: with the agent's system prompt, and with
no system prompt, the tools in the request both times, 8 requests in flight. A request is right when the response's
``tool_calls`` hold exactly the expected call: same name, same parsed JSON arguments (``models/tool_calls.same_calls``).

Acceptance: tuned >= 90% and base < 10% of held-out requests, in both variants.

Run: ``PYTHONPATH=src python benchmarks/agent_tools.py`` (SmolLM2-135M is really trained; about 15-25 minutes on
2 cores). Not part of CI. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

TUNED_MIN = 0.90
BASE_MAX = 0.10


def _l07(env: dict[str, str], *args: str, timeout: float = 4 * 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "L07_learning.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _last_json(text: str) -> Any:
    start = 0 if text.startswith("{") else text.find("\n{") + 1
    return json.loads(text[start:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _served_accuracy(env: dict[str, str], model_id: str, key: str, requests: list[tuple[str, str, dict[str, Any]]],
                     system_prompt: str | None) -> tuple[float, list[dict[str, Any]]]:
    """Share of requests whose response carries exactly the expected tool call, through ``l07 serve-model``."""
    import httpx
    import openai

    from L07_learning.models.tool_calls import same_calls, tool_call
    from L07_learning.tests.factories.agent_family import TOOLS

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "L07_learning.cli.main", "serve-model", model_id, "--port",
                             str(port), "--allow-stage", "DEVELOPMENT", "--max-tokens", "128"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError((proc.stderr.read() if proc.stderr else b"").decode()[-3000:])
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("serve-model did not start")
            time.sleep(1)
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, timeout=600)

        def ask(req: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
            goal, tool, args = req
            messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
                {"role": "user", "content": goal}]
            out = client.chat.completions.create(model=model_id, messages=messages, tools=TOOLS, max_tokens=96,
                                                 temperature=0)
            msg = out.choices[0].message
            got = [c.model_dump() for c in msg.tool_calls or []]
            return {"goal": goal, "expected": {"name": tool, "arguments": args}, "got": got, "content": msg.content,
                    "right": same_calls([tool_call(tool, args)], got)}

        with ThreadPoolExecutor(8) as pool:
            rows = list(pool.map(ask, requests))
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return sum(r["right"] for r in rows) / len(rows), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executions", type=int, default=300)
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--keep", action="store_true", help="keep the temporary L07 home")
    args = parser.parse_args()

    from L07_learning.tests.factories.agent_family import SYSTEM_PROMPT, held_out_requests, support_lines
    from L07_learning.tests.factories.loop import loop_env, write_events

    root = Path(tempfile.mkdtemp(prefix="l07-agent-tools-"))
    home = root / "home"
    env = loop_env(home, minimum_dataset_size=100, log_format="text")
    events = write_events(root / "support.jsonl", support_lines(args.executions, seed=1))
    ingest = _l07(env, "ingest", str(events), "--json")
    assert ingest.returncode == 0, ingest.stdout + ingest.stderr
    created = _l07(env, "datasets", "create", "support-desk", "--min-examples", "100", "--json")
    assert created.returncode == 0, created.stdout + created.stderr
    dataset = _last_json(created.stdout)
    t0 = time.monotonic()
    train = _l07(env, "train", "--dataset", dataset["dataset_id"], "--json")
    train_wall = time.monotonic() - t0
    job = _last_json(train.stdout)
    assert job.get("output_model_id"), train.stdout[-3000:] + train.stderr[-3000:]
    metrics = job.get("metrics") or {}
    key = _last_json(_l07(env, "keys", "create", "--role", "inference", "--name", "bench", "--json").stdout)["api_key"]

    requests = held_out_requests(args.held_out)
    result: dict[str, Any] = {
        "accepted_examples": _last_json(ingest.stdout).get("examples_accepted"), "recipe": (metrics.get("recipe") or {}).get("preset"),
        "train_examples": metrics.get("train_examples"), "steps": metrics.get("global_step"),
        "training_s": round(metrics.get("train_seconds") or 0, 1), "train_cli_wall_s": round(train_wall, 1),
        "job_test_split_base": metrics.get("base_accuracy"), "job_test_split_tuned": metrics.get("eval_accuracy"),
        "held_out_requests": len(requests), "accuracy": {}, "failures": {}}
    for label, model_id in (("base", job["base_model_id"]), ("tuned", job["output_model_id"])):
        for variant, prompt in (("agent_system_prompt", SYSTEM_PROMPT), ("no_system_prompt", None)):
            acc, rows = _served_accuracy(env, model_id, key, requests, prompt)
            result["accuracy"][f"{label}/{variant}"] = acc
            result["failures"][f"{label}/{variant}"] = [r for r in rows if not r["right"]][:3]
    acc = result["accuracy"]
    result["passed"] = all(acc[f"tuned/{v}"] >= TUNED_MIN and acc[f"base/{v}"] < BASE_MAX
                           for v in ("agent_system_prompt", "no_system_prompt"))
    print(f"{'model / variant':36} right tool call on {len(requests)} held-out requests")
    for name, value in acc.items():
        print(f"{name:36} {value:6.1%}")
    print(f"training: {result['steps']} steps, {result['training_s']} s ({result['recipe']}); "
          f"passed: {result['passed']}")
    print(json.dumps(result, default=str))
    if not args.keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
