"""Training curves: per-epoch files for DVC, and a self-contained HTML page for the KFP UI.

`write_curves` runs after every epoch with the whole history the checkpoint holds, so
history.json (`dvc plots`) and metrics.json (`dvc metrics`, `dvc exp show`) grow while training
runs, and a resumed run rewrites them from state.pt: the same rows as an uninterrupted run.
Each file goes through a temporary file and os.replace, so a reader in the middle of training
(`dvc plots show`, an editor's live plot) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import html
from pathlib import Path

from components.data.dataset import write_json

ACCURACY = ("val_top1", "val_top5", "val_context_acc")  # plotted on a shared 0..1 axis
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")


def write_curves(history_path: Path, metrics_path: Path, history: list[dict]) -> None:
    """history.json: every epoch so far; metrics.json: the last one ({} before the first)."""
    # Not durable: state.pt is what survives a crash; these are rebuilt from it on resume.
    write_json(Path(history_path), history, indent=2)
    write_json(Path(metrics_path), history[-1] if history else {}, indent=2)


def _chart(title: str, epochs: list[int], series: dict[str, list], top: float) -> str:
    """One inline SVG line chart: epochs along x, 0..top along y."""
    w, h, pad = 480, 220, 40
    last = max(max(epochs), 2)

    def xy(epoch: int, v: float) -> tuple[float, float]:
        x = pad + (epoch - 1) / (last - 1) * (w - 2 * pad)
        return x, h - pad - (v / top if top else 0) * (h - 2 * pad)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
        f'<text x="{w / 2}" y="16" text-anchor="middle">{html.escape(title)}</text>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#888"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#888"/>',
        f'<text x="{pad - 4}" y="{pad + 4}" text-anchor="end">{top:.3g}</text>',
        f'<text x="{pad - 4}" y="{h - pad + 4}" text-anchor="end">0</text>',
        f'<text x="{w / 2}" y="{h - 8}" text-anchor="middle">epoch (1..{max(epochs)})</text>',
    ]
    for i, (name, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [xy(e, v) for e, v in zip(epochs, values, strict=True) if v is not None]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{line}"/>')
        parts += [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}"/>' for x, y in points]
        parts.append(
            f'<text x="{w - pad + 4}" y="{pad + 14 * i}" fill="{colour}" '
            f'font-size="11">{html.escape(name)}</text>'
        )
    return "\n".join(parts + ["</svg>"])


def curves_html(history: list[dict]) -> str:
    """A page with the loss and validation curves and the per-epoch table; nothing external."""
    if not history:
        return "<!doctype html><meta charset='utf-8'><p>No epoch finished.</p>\n"
    epochs = [int(r["epoch"]) for r in history]
    columns = list(dict.fromkeys(k for r in history for k in r))
    loss = [r.get("loss") for r in history]
    acc = {k: [r.get(k) for r in history] for k in ACCURACY if any(k in r for r in history)}
    charts = [_chart("training loss", epochs, {"loss": loss}, max(v or 0 for v in loss))]
    if acc:
        charts.append(_chart("validation accuracy", epochs, acc, 1.0))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in history
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Training curves</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style></head><body>"
        f"<h1>Training: {len(history)} epochs</h1>{''.join(charts)}"
        f"<table><tr>{head}</tr>{rows}</table></body></html>\n"
    )


def _cell(v) -> str:
    if v is None:
        return "-"
    return f"{v:.5g}" if isinstance(v, float) else str(v)
