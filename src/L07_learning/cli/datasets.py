"""``l07 datasets``: create, list, show, diff and export versioned datasets.

Thin wrappers over ``DatasetCurator``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ..models import L07Error, L07ErrorCode
from ._common import JsonOpt, emit_json, run, services, table
from .examples import read_examples

app = typer.Typer(help="Versioned, leak-free datasets built from accepted examples.", no_args_is_help=True)


def parse_ratios(text: str | None) -> dict[str, float] | None:
    """``train=0.8,val=0.1,test=0.1`` as a dict (E7029 when unreadable)."""
    if not text:
        return None
    try:
        return {k.strip(): float(v) for k, v in (part.split("=", 1) for part in text.split(",") if part.strip())}
    except ValueError:
        raise L07Error(L07ErrorCode.SPLIT_RATIOS_INVALID, f"--ratios {text!r}: expected train=0.8,val=0.1,test=0.1") from None


@app.command("create")
@run
async def create(
    name: str = typer.Argument(..., help="Dataset name (an existing name gets its next MAJOR version)."),
    input_file: Path = typer.Option(None, "--input", help="JSONL of examples; default: the stored ACCEPTED pool."),
    ratios: str = typer.Option(None, "--ratios", help="Split ratios, e.g. train=0.8,val=0.1,test=0.1."),
    seed: int = typer.Option(42, "--seed", help="Split seed (same seed, same split)."),
    min_examples: int = typer.Option(1000, "--min-examples", help="Below this the dataset is flagged below_minimum."),
    limit: int = typer.Option(100_000, "--limit", help="Most pool examples to draw."),
    json_out: bool = JsonOpt,
) -> None:
    """Create a dataset version from a file of examples or from the accepted pool."""
    async with services() as service:
        if input_file:
            examples = read_examples(input_file)
        else:
            examples = await service.queries.examples(status="ACCEPTED", limit=limit)
        ds = await service.curator.create_dataset(name, examples, split_ratios=parse_ratios(ratios), seed=seed,
                                                  min_examples=min_examples)
    if json_out:
        emit_json(ds.model_dump(mode="json", exclude={"examples"}))
        return
    typer.echo(f"{ds.name} {ds.version} ({ds.dataset_id}) checksum {ds.checksum_sha256}")
    table("Splits", ["split", "examples"], [(s, len(ids)) for s, ids in ds.splits.items()])
    for note in ds.statistics.notes:
        typer.echo(f"note: {note}")


@app.command("list")
@run
async def list_datasets(json_out: bool = JsonOpt) -> None:
    """List datasets with their latest version."""
    async with services() as service:
        rows = await service.curator.list_datasets()
    if json_out:
        emit_json({"data": rows, "count": len(rows)})
        return
    table("Datasets", ["name", "version", "versions", "train/val/test", "dataset_id"],
          [(r["name"], r["version"], r["versions"],
            "/".join(str(r["split_counts"].get(s, 0)) for s in ("train", "val", "test")), r["dataset_id"]) for r in rows])


@app.command("show")
@run
async def show(
    dataset: str = typer.Argument(..., help="Dataset id or name."),
    version: str = typer.Option(None, "--version", help="Version (default: latest)."),
    json_out: bool = JsonOpt,
) -> None:
    """Show one dataset version: splits, statistics, lineage, manifest and version history."""
    async with services() as service:
        ds = await service.curator.get_dataset(dataset, version)
        versions = await service.curator.list_versions(ds.dataset_id)
    if json_out:
        emit_json({**ds.model_dump(mode="json", exclude={"examples"}), "versions": versions})
        return
    st = ds.statistics
    typer.echo(f"{ds.name} {ds.version} ({ds.dataset_id})\nchecksum {ds.checksum_sha256}\nseed {ds.split_seed} "
               f"ratios {ds.split_ratios}")
    table("Splits by task type", ["split", "examples", "task types"],
          [(s, len(ids), st.task_type_by_split.get(s, {})) for s, ids in ds.splits.items()])
    table("Statistics", ["statistic", "value"], [
        ("total", st.total_examples), ("by domain", st.examples_by_domain), ("by difficulty", st.examples_by_difficulty),
        ("quality min/avg/std", f"{st.min_quality_score} / {st.avg_quality_score} / {st.quality_score_stddev}"),
        ("quality histogram", st.quality_histogram), ("lengths (chars)", st.length_chars),
        ("max class share", st.max_class_share), ("below minimum", st.below_minimum),
    ])
    table("Versions", ["version", "change", "parent", "train/val/test", "reason"],
          [(v.version, v.change_type.value, v.parent_version,
            "/".join(str(v.split_counts.get(s, 0)) for s in ("train", "val", "test")), v.reason) for v in versions])
    for note in st.notes:
        typer.echo(f"note: {note}")


@app.command("diff")
@run
async def diff(
    dataset: str = typer.Argument(..., help="Dataset id or name."),
    v1: str = typer.Argument(..., help="From version."),
    v2: str = typer.Argument(..., help="To version."),
    json_out: bool = JsonOpt,
) -> None:
    """Show what changed between two versions."""
    async with services() as service:
        result = await service.curator.diff(dataset, v1, v2)
    if json_out:
        emit_json(result)
        return
    typer.echo(f"{result['name']} {v1} -> {v2}: +{len(result['added'])} -{len(result['removed'])} "
               f"moved {len(result['moved'])}")
    table("Split counts", ["split", v1, v2],
          [(s, result["split_counts"][v1].get(s, 0), result["split_counts"][v2].get(s, 0)) for s in ("train", "val", "test")])
    table("Statistics delta", ["statistic", "delta"], sorted(result["statistics_delta"].items()))


@app.command("export")
@run
async def export(
    dataset: str = typer.Argument(..., help="Dataset id or name."),
    out: Path = typer.Option(..., "--out", help="Folder for <split>.<ext> files and manifest.json."),
    version: str = typer.Option(None, "--version", help="Version (default: latest)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or parquet."),
    json_out: bool = JsonOpt,
) -> None:
    """Export a version for ``datasets.load_dataset`` (one file per split, chat ``messages`` column)."""
    async with services() as service:
        result = await service.curator.export(dataset, version, out, fmt)
    if json_out:
        emit_json(result)
        return
    table(f"{result['name']} {result['version']} ({fmt})", ["split", "rows", "file", "sha256"],
          [(s, f["rows"], f["path"], f["sha256"][:16]) for s, f in result["files"].items()])
    typer.echo(f"manifest: {result['manifest']}")
