"""The demo's report: one self-contained HTML file with the loss curve and base-versus-tuned scores per task type."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode()


def render_report(path: str | Path, *, title: str, loss_curve: list[dict[str, float]],
                  eval_curve: list[dict[str, float]], base_by_task: dict[str, float],
                  tuned_by_task: dict[str, float], summary: dict[str, Any],
                  rejected_by_reason: dict[str, int]) -> Path:
    """Write the report and return its path.

    Args:
        loss_curve: ``[{"step": n, "loss": x}, ...]`` training losses.
        eval_curve: ``[{"step": n, "eval_loss": x}, ...]`` evaluation losses.
        base_by_task, tuned_by_task: accuracy per task type (0-1) on the held-out split.
        summary: key figures shown as a table.
        rejected_by_reason: filter and ingestion rejections by reason.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    if loss_curve:
        ax.plot([p["step"] for p in loss_curve], [p["loss"] for p in loss_curve], label="train loss")
    if eval_curve:
        ax.plot([p["step"] for p in eval_curve], [p["eval_loss"] for p in eval_curve], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Fine-tuning loss")
    ax.legend()
    loss_png = _png(fig)
    plt.close(fig)

    tasks = sorted(set(base_by_task) | set(tuned_by_task))
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    xs = range(len(tasks))
    ax.bar([x - 0.2 for x in xs], [base_by_task.get(t, 0) * 100 for t in tasks], width=0.4, label="base")
    ax.bar([x + 0.2 for x in xs], [tuned_by_task.get(t, 0) * 100 for t in tasks], width=0.4, label="tuned")
    ax.set_xticks(list(xs), tasks, rotation=20, ha="right")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Base vs tuned, per task type")
    ax.legend()
    score_png = _png(fig)
    plt.close(fig)

    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in summary.items())
    rej = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in sorted(rejected_by_reason.items()))
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:900px;margin:2em auto}}table{{border-collapse:collapse}}
th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Summary</h2><table>{rows}</table>
<h2>Loss</h2><img alt="loss curve" src="data:image/png;base64,{loss_png}">
<h2>Held-out accuracy per task type</h2><img alt="scores" src="data:image/png;base64,{score_png}">
<h2>Rejected, by reason</h2><table>{rej or '<tr><td>none</td></tr>'}</table>
</body></html>"""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    return out
