"""``l07 loop status|resume``: what the autonomous loop (``l07 run``) is doing, and closing a tripped breaker.

Both read and write the database every ``l07 run`` process shares, so they work from any process, running loop or
not.
"""

from __future__ import annotations

import getpass
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import typer

from ..services.loop import LearningLoop
from ._common import JsonOpt, emit_json, run, table

app = typer.Typer(help="The autonomous loop of `l07 run`: status per policy and breaker, resume a policy, reset a breaker.",
                  no_args_is_help=True)

PolicyOpt = typer.Option(None, "--policy", help="The policy file `l07 run` uses (default: the built-in policy).")


@asynccontextmanager
async def _loop(policy_file: Path | None) -> AsyncIterator[LearningLoop]:
    """A loop over the configured database that reads and writes state only: no relay, no worker, no lease."""
    loop = LearningLoop.build(policy_file=policy_file)
    await loop.service.initialize(start_relay=False)
    try:
        yield loop
    finally:
        await loop.service.cleanup()


def _ago(run: dict[str, Any] | None) -> str:
    if not run:
        return "never"
    when = (run.get("finished_at") or run.get("started_at") or "")[:19].replace("T", " ")
    return f"{run['status']} {when}"


def print_status(status: dict[str, Any]) -> None:
    """The rich tables of ``l07 loop status``."""
    table("loop policies", ["policy", "new / group", "next trigger", "last run", "verdict", "breaker"], [
        (p["policy"] + ("" if p.get("configured", True) else " (not configured)"),
         f"{p.get('new_examples', '')} / {p.get('group_size', '')}" if "new_examples" in p else "",
         p.get("next_trigger", ""), _ago(p.get("last_run")), p.get("last_verdict") or "",
         f"{p['breaker']['state']} ({p['breaker']['consecutive_failures']} failed)"
         + (" paused" if p.get("paused") else ""))
        for p in status["policies"]
    ])
    b, jobs = status["budget"], status["jobs"]
    leader = status["leader"]
    rows = [
        ("budget left today", f"cpu {b['cpu_seconds_left']:.0f} s, gpu {b['gpu_seconds_left']:.0f} s"),
        ("jobs running", f"{jobs['running']} of {jobs['max_concurrent']}"
         + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(jobs["active"].items())) + ")" if jobs["active"] else "")),
        ("models per stage", ", ".join(f"{k} {v}" for k, v in sorted(status["models_per_stage"].items())) or "none"),
        ("REVIEW queue", status["review_queue"]),
        ("open runs", len(status["open_runs"])),
        ("leader", f"{leader['holder']} (alive)" if leader.get("alive") else "none alive"),
    ]
    table("loop", ["", ""], rows)
    table("circuit breakers", ["component", "state", "failures", "trips", "reason"], [
        (b["component"], b["state"], f"{b['consecutive_failures']} / {b['failure_threshold']}", b["trips"],
         b["reason"] or "") for b in status.get("breakers", {}).values()
    ])
    if status.get("watches"):
        table("release watches", ["model_id", "status", "windows", "samples", "name", "against", "state"], [
            (w["model_id"], w["status"], w["windows_evaluated"], w["samples"], w["model_name"],
             w["baseline_model_id"] or "", w["state"] or "") for w in status["watches"]
        ])


@app.command("status")
@run
async def status(policy: Path = PolicyOpt, json_out: bool = JsonOpt) -> None:
    """Per policy: new examples, next trigger, last run and verdict, breaker; budget left, jobs running, models per
    stage, the REVIEW queue."""
    async with _loop(policy) as loop:
        out = await loop.status()
    emit_json(out) if json_out else print_status(out)


@app.command("reset-breaker")
@run
async def reset_breaker(
    component: str = typer.Argument(..., metavar="COMPONENT", help="training, validation or deployment."),
    actor: str = typer.Option(None, "--actor", help="Who closes it (audit log); default: the OS user."),
    json_out: bool = JsonOpt,
) -> None:
    """Close a component's circuit breaker by hand (the training breaker needs this after its cool-down, §4.4)."""
    async with _loop(None) as loop:
        state = await loop.reset_breaker(component, actor=actor or getpass.getuser())
    emit_json(state) if json_out else typer.echo(f"{component} breaker {state['state']}")


@app.command("resume")
@run
async def resume(
    policy_name: str = typer.Argument(..., metavar="POLICY", help="The policy whose breaker to close."),
    actor: str = typer.Option(None, "--actor", help="Who resumes it (audit log); default: the OS user."),
    json_out: bool = JsonOpt,
) -> None:
    """Close a policy's circuit breaker so the loop triggers it again."""
    async with _loop(None) as loop:
        state = await loop.resume(policy_name, actor=actor or getpass.getuser())
    if json_out:
        emit_json(state)
    else:
        typer.echo(f"policy {state['policy']}: breaker {state['breaker']['state']}")
