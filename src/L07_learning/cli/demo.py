"""``l07 demo``: the main job, with progress bars, a summary table and a report file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..observability.logging import configure_logging
from ..services.demo.demo import DEMO_EXECUTIONS, run_demo
from ..services.demo.sample_stream import TASK_TYPES
from ..services.flywheel import Flywheel, FlywheelConfig
from ..services.flywheel.report import HEADER, plot, release_lines, round_line
from ..settings import get_settings
from ._common import JsonOpt, console, emit_json, run, table


def register(app: typer.Typer) -> None:
    """Add the top-level ``demo`` command."""
    app.command(name="demo")(demo)


@run
async def demo(
    home: Path = typer.Option(None, help="Folder for the demo's database and artifacts (default: <L07_HOME>/demo)."),
    executions: int = typer.Option(DEMO_EXECUTIONS, min=50, help="Sample executions to generate."),
    all_tasks: bool = typer.Option(False, help="Generate all six task types (needs more training than the demo's budget)."),
    seed: int = typer.Option(7, help="Seed for events, splits and training."),
    epochs: int | None = typer.Option(None, min=1, max=10, help="Training epochs (default: the recipe's)."),
    keep: bool = typer.Option(False, help="Keep the previous demo state instead of starting fresh."),
    continuous: bool = typer.Option(False, "--continuous", help="Run the flywheel instead (benchmarks/flywheel.py): "
                                    "an agent fleet, l07 run, a gateway serving each release, a bad release rolled "
                                    "back; prints the table as it goes (22 minutes measured on 2 quiet CPU cores)."),
    json_out: bool = JsonOpt,
) -> None:
    """Run the whole loop on the embedded default: events -> dataset -> LoRA fine-tune -> validate -> release."""
    if continuous:
        await _flywheel(home, seed, json_out)
        return
    # Library progress bars would fight with ours for the terminal.
    for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("TRANSFORMERS_VERBOSITY", "error"),
                       ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"), ("TQDM_DISABLE", "1")):
        os.environ.setdefault(var, value)
    settings = get_settings()
    home = home or settings.home / "demo"
    home.mkdir(parents=True, exist_ok=True)
    # The progress display owns the terminal; the structured log goes to a file beside the report.
    configure_logging(settings.log_level, "json", path=str(home.parent / f"{home.name}.log"))
    show = not json_out
    bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                    TimeElapsedColumn(), console=console, disable=not show)
    tasks: dict[str, Any] = {}

    def step(name: str, total: float | None = None) -> Any:
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total, info="")
        return tasks[name]

    def progress(stage: str, info: dict[str, Any]) -> None:
        if stage == "events":
            bars.update(step("generate events", 1), completed=1, info=f"{info['events']} events")
        elif stage == "ingest":
            bars.update(step("ingest + extract", info["total"]), completed=info["done"], total=info["total"])
        elif stage == "filter":
            bars.update(step("quality filter", 1), completed=1,
                        info=f"{info['accepted']} accepted, {sum(info['rejected'].values())} rejected/held")
        elif stage == "dataset":
            bars.update(step("dataset", 1), completed=1, info=f"v{info['version']} {info['splits']}")
        elif stage == "base_model":
            bars.update(step("base model", 1), completed=1, info=info["name"])
        elif stage == "training_step":
            payload = info.get("payload", {})
            total = payload.get("max_steps") or payload.get("total_steps")
            bars.update(step("fine-tune (LoRA)", total), completed=info.get("step") or 0, total=total,
                        info=f"loss {payload.get('loss', float('nan')):.3f}")
        elif stage == "training_done":
            bars.update(step("fine-tune (LoRA)", 1), completed=bars.tasks[step("fine-tune (LoRA)")].total or 1,
                        info="done")
        elif stage == "validated":
            bars.update(step("validate + release", 1), completed=1, info=f"{info['recommendation']} -> {info['stage']}")
        elif stage == "rejected":
            bars.update(step("validate + release", 1), completed=1, info=f"{info['code']}: {info['message'][:60]}")

    with bars:
        summary = await run_demo(home, executions=executions, seed=seed, reset=not keep,
                                 task_types=list(TASK_TYPES) if all_tasks else None,
                                 model_cache_dir=settings.model_cache_dir, progress=progress,
                                 training_overrides={"epochs": epochs} if epochs else None)
    if json_out:
        emit_json(summary)
        return
    rows = [(k, v) for k, v in summary.items() if k not in ("dataset_splits", "failing_stages")]
    rows.append(("dataset_splits", summary["dataset_splits"]))
    rows.append(("failing_stages", ", ".join(summary["failing_stages"]) or "none"))
    table("L07 demo", ["", "value"], rows)
    console.print(f"report: {summary['report']}")
    if summary.get("stage") in ("STAGING", "PRODUCTION"):
        console.print(serve_instructions(home, summary["model_id"]), highlight=False, soft_wrap=True)


async def _flywheel(home: Path | None, seed: int, json_out: bool) -> None:
    """``l07 demo --continuous``: the flywheel of ``services/flywheel`` in a fresh home, its table printed live."""
    settings = get_settings()
    home = home or settings.home / "flywheel"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)

    def echo(line: str) -> None:
        if not json_out:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

    echo(f"flywheel in {home}\n{HEADER}")
    wheel = Flywheel(FlywheelConfig(home=home, model_cache_dir=settings.model_cache_dir, seed=seed),
                     on_round=lambda r: echo(round_line(r)), on_note=lambda m: echo(f"  -- {m}"))
    result = await wheel.run()
    png = plot(result, home / "flywheel.png")
    if json_out:
        emit_json({**result, "plot": str(png) if png else None})
        return
    for line in release_lines(result):
        echo(line)
    echo(f"plot: {png}" if png else "plot: matplotlib is not installed")


def serve_instructions(home: Path, model_id: str) -> str:
    """The exact commands that serve the demo's released model and call it as an agent would.

    The demo keeps its own database under ``home``, so every command names it through ``L07_HOME``.
    """
    env = f"L07_HOME={home}"
    call = ("from openai import OpenAI; import os; "
            "c = OpenAI(base_url='http://127.0.0.1:8090/v1', api_key=os.environ['L07_KEY']); "
            f"r = c.chat.completions.create(model='{model_id}', messages=[{{'role': 'user', 'content': "
            "'Which tool should I use to look up the weather in Oslo?'}], max_tokens=64); "
            "print(r.choices[0].message)")
    return "\n".join([
        "",
        "[bold]Serve the released model to your agents[/] (OpenAI-compatible, tool calls included):",
        f"  export L07_KEY=$({env} l07 keys create --role inference --name my-agent)",
        f"  {env} l07 serve-model {model_id} --port 8090 &",
        "[bold]Call it with the openai client[/] (pip install openai):",
        f'  python -c "{call}"',
    ])
