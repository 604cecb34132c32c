"""Plots and a markdown summary of a run folder (metrics.jsonl, probes.jsonl, config.yaml).

Written here because mlx-lm has no run reports. Plotting is matplotlib's
object API (``Figure`` + ``savefig``: the Agg canvas, no pyplot state, no
display needed). matplotlib is the optional ``plot`` extra, not a dependency:
the package's dependencies are what the main job needs, and a report without
matplotlib still writes summary.md, whose "Plots" section then says how to get
them (:data:`PLOT_HINT`; the CLI and the demo print it too). The probe tables
are :func:`supercal_mlx.runs.tables.markdown_table`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from ..errors import SupercalError
from ..io import read_jsonl
from ..outputs import check_output_dir, new_output_dir

# (metrics.jsonl key, title) of the one-line-per-step plots; a plot is drawn when any record has the key.
LINE_PLOTS = {
    "loss.png": (("loss",), "training loss"),
    "nll.png": (("forget_nll", "retain_nll"), "NLL of forget and retain data"),
    "grad_norm.png": (("grad_norm",), "gradient norm before clipping"),
    "learning_rate.png": (("learning_rate",), "learning rate"),
}
HEATMAPS = {
    "proj_cosine.png": ("proj_cosine", "cosine of the forget gradient with the retain subspace"),
    "proj_removed_pct.png": ("proj_removed_pct", "% of the forget gradient's norm removed by projection"),
}
TABLE_KEYS = ("loss", "forget_nll", "retain_nll", "grad_norm", "learning_rate", "tokens", "step_seconds", "peak_memory_gb")
PROBE_KEYS = ("step", "prompt", "temperature", "sample", "response")
PROBE_TYPES = {"step": int, "temperature": (int, float), "sample": int, "prompt": str, "response": str}
PLOT_HINT = "pip install 'supercal-mlx[plot]'"
NO_PLOTS = f"No plots: matplotlib is not installed ({PLOT_HINT} draws them)."


def make_report(run_dir: str | os.PathLike, *, out: str | os.PathLike | None = None, force: bool = False) -> list[Path]:
    """Write PNG plots and summary.md for ``run_dir`` into ``out`` (default ``run_dir/report``); return their paths.

    Without matplotlib (:func:`plots_available`) only summary.md is written, with :data:`NO_PLOTS` for its plots."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise SupercalError(f"{run_dir} has no metrics.jsonl; give a run folder written by supercal unlearn")
    metrics = read_jsonl(run_dir / "metrics.jsonl", required=("step",), types={"step": int}, torn_tail_ok=True)
    probes_path = run_dir / "probes.jsonl"
    probes = []
    if probes_path.is_file() and probes_path.stat().st_size:
        probes = read_jsonl(probes_path, required=PROBE_KEYS, types=PROBE_TYPES, torn_tail_ok=True)
    Figure = _figure_class()
    out = check_output_dir(Path(out) if out is not None else run_dir / "report", kind="report", force=force)

    with new_output_dir(out, kind="report", force=force) as tmp:
        names = []
        for name, (keys, title) in LINE_PLOTS.items() if Figure else ():
            if any(k in r for r in metrics for k in keys):
                _line_plot(Figure, metrics, keys, title, tmp / name)
                names.append(name)
        for name, (key, title) in HEATMAPS.items() if Figure else ():
            if any(key in r for r in metrics):
                _heatmap(Figure, metrics, key, title, tmp / name)
                names.append(name)
        text = summary_markdown(run_dir, metrics, probes, plots=names if Figure else None)
        (tmp / "summary.md").write_text(text, encoding="utf-8")
        names.append("summary.md")
    return [out / n for n in names]


def summary_markdown(run_dir: Path, metrics: list[dict], probes: list[dict], *, plots: list[str] | None) -> str:
    """The summary: settings, per-metric first/last/min/max, per-layer projection, plots (None: not drawn,
    matplotlib missing), every step, probe tables."""
    from .degeneration import is_degenerate
    from .probes import ProbeRow
    from .tables import markdown_table

    last = metrics[-1]
    parts = [f"# Run report: {run_dir.name}", "",
             f"{len(metrics)} logged steps, last step {last['step']}" +
             (f", epoch {_fmt(last['epoch'])}" if "epoch" in last else "") + "."]
    if (run_dir / "config.yaml").is_file():
        parts += ["", "## Settings", "", "```yaml", (run_dir / "config.yaml").read_text(encoding="utf-8").strip(), "```"]

    keys = [k for k in TABLE_KEYS if any(k in r for r in metrics)]
    parts += ["", "## Metrics", "", "| metric | first | last | min (step) | max (step) |", "|---|---|---|---|---|"]
    for k in keys:
        pts = [(r["step"], r[k]) for r in metrics if isinstance(r.get(k), (int, float))]
        if not pts:
            continue
        finite = [p for p in pts if math.isfinite(p[1])] or pts
        lo, hi = min(finite, key=lambda p: p[1]), max(finite, key=lambda p: p[1])
        parts.append(f"| {k} | {_fmt(pts[0][1])} | {_fmt(pts[-1][1])} | {_fmt(lo[1])} ({lo[0]}) | {_fmt(hi[1])} ({hi[0]}) |")

    for key, title in HEATMAPS.values():
        layers, steps, grid = _layer_grid(metrics, key)
        if not layers:
            continue
        parts += ["", f"## Per layer: {key}", "", title + ": mean over logged steps, and the last step.", "",
                  "| layer | mean | last |", "|---|---|---|"]
        for layer, row in zip(layers, grid):
            vals = [v for v in row if math.isfinite(v)]
            parts.append(f"| {layer} | {_fmt(sum(vals) / len(vals)) if vals else '-'} | {_fmt(row[-1])} |")

    if plots is None:
        parts += ["", "## Plots", "", NO_PLOTS]
    elif plots:
        parts += ["", "## Plots", ""] + [f"![{p[:-4]}]({p})" for p in plots]

    parts += ["", "## Every step", "", "| step | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for r in metrics:
        parts.append(f"| {r['step']} | " + " | ".join(_fmt(r.get(k)) for k in keys) + " |")

    by_step: dict[int, list[dict]] = {}
    for p in probes:
        by_step.setdefault(p["step"], []).append(p)
    for step, recs in sorted(by_step.items()):
        rows = [ProbeRow(str(p["prompt"]), float(p["temperature"]), int(p["sample"]), str(p["response"])) for p in recs]
        bad = sum(is_degenerate(r.response) for r in rows)
        parts += ["", f"## Probes at step {step}", "", f"{bad} of {len(rows)} responses degenerate.", "",
                  markdown_table(rows)]
    return "\n".join(parts) + "\n"


def plots_available() -> bool:
    """Whether matplotlib (the ``plot`` extra) can be imported, so that reports have their PNGs."""
    return _figure_class() is not None


def _figure_class():
    """matplotlib's Figure, or None when matplotlib is not installed."""
    try:
        import matplotlib  # noqa: F401  (checked first: a stale matplotlib.figure in sys.modules would hide its absence)
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure


def _line_plot(Figure, metrics: list[dict], keys: tuple[str, ...], title: str, path: Path) -> None:
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    for k in keys:
        pts = [(r["step"], r[k]) for r in metrics if isinstance(r.get(k), (int, float))]
        if pts:
            ax.plot(*zip(*pts), marker="." if len(pts) < 50 else None, label=k)
    ax.set(title=title, xlabel="step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    values = [r[k] for r in metrics for k in keys if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
    if values and min(values) > 0 and max(values) / min(values) > 100:  # a collapse spans decades: log scale
        ax.set_yscale("log")
    if len(keys) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def _heatmap(Figure, metrics: list[dict], key: str, title: str, path: Path) -> None:
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    layers, steps, grid = _layer_grid(metrics, key)
    fig = Figure(figsize=(8, 1.5 + 0.25 * len(layers)), layout="constrained")
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(steps, np.arange(len(layers)), np.ma.masked_invalid(np.array(grid)), shading="nearest")
    ax.set_yticks(range(len(layers)), labels=layers)
    ax.set(title=title, xlabel="step", ylabel="layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(mesh, ax=ax)
    fig.savefig(path, dpi=100)


def _layer_grid(metrics: list[dict], key: str) -> tuple[list[str], list[int], list[list[float]]]:
    """(layer names sorted numerically, "all" last; steps that log ``key``; grid[layer][step], NaN where missing)."""
    recs = [r for r in metrics if isinstance(r.get(key), dict)]
    names = {layer for r in recs for layer in r[key]}
    layers = sorted(names, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    grid = [[float(r[key].get(layer, math.nan)) for r in recs] for layer in layers]
    return layers, [r["step"] for r in recs], grid


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
