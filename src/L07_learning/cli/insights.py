"""``l07 patterns``, ``l07 strategies`` and ``l07 curriculum``: behaviour patterns, planning strategies, curricula.

Thin wrappers over ``PatternExtractor``, ``StrategyOptimizer`` and ``CurriculumPlanner``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from pydantic import ValidationError

from ..models import JobConfig, L07Error, L07ErrorCode
from ..services.curriculum_planner import CurriculumConfig, CurriculumPlanner
from ..services.pattern_extractor import PatternExtractor, PatternMiningConfig
from ..services.strategy_optimizer import StrategyOptimizer, StrategyOptimizerConfig
from ._common import JsonOpt, emit_json, read_json_records, run, services, table

patterns_app = typer.Typer(help="Behaviour patterns mined from execution traces.", no_args_is_help=True)
strategies_app = typer.Typer(help="Planning strategies: outcomes, Thompson sampling, recommendations.", no_args_is_help=True)
curriculum_app = typer.Typer(help="Curriculum plans (easy -> hard) for datasets.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the three sub-apps to the ``l07`` app."""
    app.add_typer(patterns_app, name="patterns")
    app.add_typer(strategies_app, name="strategies")
    app.add_typer(curriculum_app, name="curriculum")


def _read_jsonl(path: Path) -> list[Any]:
    """JSON lines (or one JSON array) from a file; a CloudEvent's ``data`` is taken when present."""
    items = read_json_records(path, L07ErrorCode.EXECUTION_TRACE_PARSE_ERROR)
    return [i["data"] if isinstance(i, dict) and "specversion" in i and isinstance(i.get("data"), dict) else i for i in items]


@patterns_app.command("mine")
@run
async def patterns_mine(
    input_file: Path = typer.Option(None, "--input", help="JSONL of traces (records, example dicts or trace events); default: stored examples."),
    agent_type: str = typer.Option(None, "--agent-type", help="With stored examples: only this agent."),
    task_type: str = typer.Option(None, "--task-type", help="With stored examples: only this task type."),
    min_support: int = typer.Option(10, "--min-support", help="Fewest supporting traces per pattern."),
    max_length: int = typer.Option(4, "--max-length", help="Longest tool sequence."),
    fdr: float = typer.Option(0.05, "--fdr", help="Benjamini-Hochberg false-discovery rate."),
    publish: bool = typer.Option(True, "--publish/--no-publish", help="Write the events to the outbox."),
    json_out: bool = JsonOpt,
) -> None:
    """Mine significant success and failure tool sequences, store them and publish the events."""
    traces = _read_jsonl(input_file) if input_file else None
    config = PatternMiningConfig(min_support=min_support, max_length=max_length, fdr_alpha=fdr)
    async with services() as service:
        extractor = PatternExtractor(db=service.db, settings=service.settings, config=config)
        result = await extractor.mine(traces, agent_type=agent_type, task_type=task_type, publish=publish)
    if json_out:
        emit_json(result)
        return
    typer.echo(f"{result.traces_used} traces in {len(result.groups)} groups, {result.patterns_tested} patterns tested, "
               f"{len(result.patterns)} significant, rejected {result.rejected or 'none'}, "
               f"{result.events_published} events")
    table("behaviour patterns", ["agent", "task", "sequence", "polarity", "support", "success", "base", "lift", "q"], [
        (p.agent_type, p.task_type, " -> ".join(p.tool_sequence), p.polarity, p.support_count, f"{p.success_rate:.2f}",
         f"{p.baseline_success_rate:.2f}", f"{p.lift:.2f}", f"{p.q_value:.2g}") for p in result.patterns
    ])


@patterns_app.command("list")
@run
async def patterns_list(agent_type: str = typer.Option(None, "--agent-type"), limit: int = typer.Option(100, "--limit"),
                        json_out: bool = JsonOpt) -> None:
    """List stored patterns, newest first."""
    async with services() as service:
        patterns = await service.patterns.list_patterns(agent_type, limit)
    if json_out:
        emit_json({"data": patterns, "count": len(patterns)})
        return
    table("behaviour patterns", ["pattern_id", "agent", "task", "sequence", "polarity", "support", "confidence"], [
        (p.pattern_id, p.agent_type, p.task_type, " -> ".join(p.tool_sequence), p.polarity, p.support_count,
         f"{p.confidence:.3f}") for p in patterns
    ])


@strategies_app.command("recommend")
@run
async def strategies_recommend(
    task_type: str = typer.Option(None, "--task-type", help="Only this task type; default all with outcomes."),
    input_file: Path = typer.Option(None, "--input", help="JSONL of planning-decision events to record first."),
    confidence: float = typer.Option(0.9, "--confidence", help="Posterior probability of being best required."),
    holdout: float = typer.Option(0.1, "--holdout-share", help="Uniform exploration share."),
    publish: bool = typer.Option(True, "--publish/--no-publish"),
    json_out: bool = JsonOpt,
) -> None:
    """Analyse planning outcomes and publish the strategies that pass the recommendation gates."""
    config = StrategyOptimizerConfig(confidence=confidence, holdout_share=holdout)
    async with services() as service:
        opt = StrategyOptimizer(db=service.db, settings=service.settings, config=config)
        recorded = await opt.record_outcomes(_read_jsonl(input_file)) if input_file else None
        answers = await opt.recommend(task_type, publish=publish)
    if json_out:
        emit_json({"recorded": recorded, "data": answers, "count": len(answers)})
        return
    if recorded is not None:
        typer.echo(f"recorded {recorded.stored} outcomes ({recorded.duplicates} duplicates, rejected {recorded.rejected or 'none'})")
    table("strategy recommendations", ["task", "recommended", "depth", "pruning", "P(best)", "gain", "reason"], [
        (a.task_type, a.recommended, a.spec.search_depth if a.spec else "", ",".join(a.spec.pruning_rules) if a.spec else "",
         f"{a.probability_best:.3f}", f"{a.strategy.expected_improvement:.3f}" if a.strategy else "", a.reason)
        for a in answers
    ])


@curriculum_app.command("plan")
@run
async def curriculum_plan(
    dataset: str = typer.Argument(..., help="Dataset id."),
    version: str = typer.Option(None, "--version", help="Dataset version; default the newest."),
    split: str = typer.Option("train", "--split"),
    epochs: int = typer.Option(3, "--epochs", help="Training epochs (stages share them)."),
    pacing: str = typer.Option("staged", "--pacing", help="staged, ordered, linear or root."),
    banding: str = typer.Option("absolute", "--banding", help="absolute (contract thresholds) or quantile (30/50/20)."),
    model_id: str = typer.Option(None, "--model-id", help="Registered model whose loss joins the difficulty signals."),
    model_dir: Path = typer.Option(None, "--model-dir", help="Local model folder for the loss signal (instead of --model-id)."),
    json_out: bool = JsonOpt,
) -> None:
    """Plan the curriculum (difficulty stages) for one split of a dataset."""
    try:
        cfg = CurriculumConfig(pacing=pacing, banding=banding)  # type: ignore[arg-type]
        job = JobConfig(epochs=epochs)
    except ValidationError as exc:
        raise L07Error(L07ErrorCode.CURRICULUM_SCHEDULE_INVALID, str(exc.errors()[0]["msg"])) from None
    async with services() as service:
        if model_id:
            model_dir = Path(await service.registry.local_path(model_id))
        planner = CurriculumPlanner(curator=service.curator, config=cfg)
        path = await planner.plan(dataset, version, job, model_dir=model_dir, split=split)
    if json_out:
        emit_json(path)
        return
    typer.echo(f"learning path {path.path_id} for {path.dataset_id} {path.dataset_version}: {path.total_epochs} epochs, "
               f"pacing {path.pacing}, signals {', '.join(path.difficulty_signals)}")
    table("stages", ["stage", "levels", "epochs", "examples", "target difficulty"], [
        (s.stage_index, "+".join(level.value for level in s.levels), s.epochs, len(s.example_ids), s.target_mean_difficulty)
        for s in path.stages
    ])
