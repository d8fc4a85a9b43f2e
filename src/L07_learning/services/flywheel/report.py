"""The flywheel's table (one line per round, then one per release) and its plot: success over time with the release,
override and rollback markers (PNG with matplotlib when it is installed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .flywheel import Round

HEADER = (f"{'round':>5} {'t_s':>7} {'phase':<15} {'release':<9} {'share':>5} {'small':>11} {'fleet':>6} "
          f"{'lat_ms':>8}  events")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def round_line(r: Round) -> str:
    """One round: small model's success (n), its measured share, the fleet's success and mean latency."""
    small = f"{_pct(r.small_success)} ({r.small_n})" if r.small_n else "-"
    return (f"{r.round:>5} {r.t_s:>7.1f} {r.phase:<15} {(r.release or '-')[:8]:<9} {_pct(r.share):>5} {small:>11} "
            f"{_pct(r.fleet_success):>6} {r.latency_ms:>8.1f}  {'; '.join(r.events)}")


def release_lines(result: dict[str, Any]) -> list[str]:
    """Per release: probe and live success, mean share, mean latency; then the phases and the checks."""
    lines = [f"base model probe success: {_pct(result['base_probe_success'])}",
             f"{'release':<10} {'role':<15} {'probe':>6} {'live':>6} {'n':>5} {'share':>6} {'lat_ms':>8}"]
    for r in result["releases"]:
        lines.append(f"{r['model_id'][:8]:<10} {r['role']:<15} {_pct(r['probe_success']):>6} "
                     f"{_pct(r['live_success']):>6} {r['live_samples']:>5} {_pct(r['mean_share']):>6} "
                     f"{r['mean_latency_ms']:>8.1f}")
    for name, p in result["phases"].items():
        lines.append(f"phase {name:<15} rounds {p['rounds']:>3}  fleet {_pct(p['fleet_success']):>5}  "
                     f"small {_pct(p['small_success']):>5}")
    lines += [f"{k}: {v}" for k, v in result["checks"].items()]
    return lines


def plot(result: dict[str, Any], path: Path) -> Path | None:
    """Success over time (fleet, small model) with markers; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rounds = result["rounds"]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot([r["t_s"] for r in rounds], [100 * r["fleet_success"] for r in rounds], label="fleet success", color="C0")
    small = [r for r in rounds if r["small_n"]]
    ax.plot([r["t_s"] for r in small], [100 * r["small_success"] for r in small], "o-", label="small model success",
            color="C1", markersize=3)
    ax.plot([r["t_s"] for r in rounds], [100 * r["share"] for r in rounds], ":", label="small model share", color="C2")
    if result["base_probe_success"] is not None:
        ax.axhline(100 * result["base_probe_success"], color="grey", linestyle="--", linewidth=0.8,
                   label="base model (probe)")
    colours = {"deployed": "green", "override": "red", "rolled_back": "purple"}
    drawn: list[float] = []
    span = max((r["t_s"] for r in rounds), default=1.0) or 1.0
    for m in result["markers"]:
        if m["kind"] in colours:
            ax.axvline(m["t_s"], color=colours[m["kind"]], linestyle="--", linewidth=1)
            # A rollback and the redeploy it causes share a timestamp: later labels step right so both stay legible.
            near = sum(abs(m["t_s"] - t) < 0.01 * span for t in drawn)
            drawn.append(m["t_s"])
            label = f"{m['kind'].replace('_', ' ')} {m.get('model_id', '')[:8]}"
            ax.annotate(label, (m["t_s"], 102), xytext=(2 + 9 * near, 0), textcoords="offset points", rotation=90,
                        fontsize=7, va="bottom", color=colours[m["kind"]])
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("%")
    ax.set_ylim(-3, 140)  # the base model's probe line often sits at 0
    ax.legend(loc="center left", fontsize=8)
    ax.set_title("L07 flywheel: success over time")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
