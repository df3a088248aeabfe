"""The page comparing several runs, and `lmforge report` (build_reports)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from ..errors import LmforgeError
from ..fs import check_output_file, write_text
from .html import _e, _img, _page, _Raw, _section, _table, write_html_report
from .plots import _plt, plot_losses
from .runs import _load_run, _scalar, best_metric_name, run_status

log = logging.getLogger("lmforge")


def _final_metrics(run: dict) -> dict:
    met = run["metrics"]
    for split in ("test", "eval"):
        if met.get(split):
            return {"split": split, **{k: v for k, v in met[split].items() if _scalar(v)}}
    evals = [r for r in run["log"] if any(k.startswith("eval_") for k in r)]
    if evals:  # a run still going, or one that crashed: its latest evaluation
        return {"split": f"eval@{evals[-1]['step']}",
                **{k[5:]: v for k, v in evals[-1].items() if k.startswith("eval_") and _scalar(v)}}
    return {}


def write_comparison(run_dirs: Sequence[Path], out: Path) -> Path:
    """One page comparing runs: train/eval loss and the best metric overlaid, and a metrics table."""
    runs = [_load_run(Path(d)) for d in run_dirs]
    names = [r["name"] for r in runs]
    if len(set(names)) < len(names):  # runs/a/x and runs/b/x: tell them apart by parent
        names = [f"{r['dir'].parent.name}/{r['name']}" for r in runs]
    plt = _plt()
    figs = []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for name, r in zip(names, runs):
        tr = [(x["step"], x["loss"]) for x in r["log"] if x.get("loss") is not None]
        ev = [(x["step"], x["eval_loss"]) for x in r["log"] if x.get("eval_loss") is not None]
        line = a1.plot(*zip(*tr), label=name)[0] if tr else None
        if ev:
            a2.plot(*zip(*ev), "o-", label=name, color=line.get_color() if line else None)
    for ax, t in ((a1, "train loss"), (a2, "eval loss")):
        ax.set_title(t)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    figs.append(_img(fig, "loss curves overlaid"))
    metric = best_metric_name(runs[0]["cfg"])
    if metric != "loss" and any(f"eval_{metric}" in x for r in runs for x in r["log"]):
        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
        for name, r in zip(names, runs):
            pts = [(x["step"], x[f"eval_{metric}"]) for x in r["log"] if _scalar(x.get(f"eval_{metric}"))]
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
        ax.set_title(f"eval {metric}")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        figs.append(_img(fig, f"eval {metric} overlaid"))
    finals = [_final_metrics(r) for r in runs]
    keys: list[str] = []
    for f in finals:
        keys += [k for k in f if k not in keys and k != "split"]
    header = ["run", "status", "task", "model", "split"] + keys + ["steps", "tokens/s", "duration (s)"]
    rows = []
    for name, r, f in zip(names, runs, finals):
        tr = r["metrics"].get("train") or {}
        rows.append([_Raw(f"<a href='{_e((r['dir'] / 'report.html').resolve().as_uri())}'>{_e(name)}</a>"),
                     run_status(r["dir"], r["manifest"]), r["manifest"].get("task", "?"), r["manifest"].get("model", "?"),
                     f.get("split", "-")] + [f.get(k, "-") for k in keys] +
                    [tr.get("steps", "-"), tr.get("tokens_per_s", "-"), r["manifest"].get("duration_s", "-")])
    cfg_rows = _config_differences(runs, names)
    sections = [_section("comparison-metrics", "Metrics", _table(header, rows)),
                _section("comparison-curves", "Curves", "".join(figs)),
                _section("comparison-config", "Config differences", cfg_rows)]
    return write_text(Path(out), _page(f"lmforge: {len(runs)} runs compared", _e(", ".join(names)), sections))


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_differences(runs: list[dict], names: list[str]) -> str:
    flats = [_flat(r["cfg"]) for r in runs]
    keys = sorted({k for f in flats for k in f})
    diff = [k for k in keys if len({json.dumps(f.get(k), default=str) for f in flats}) > 1 and k != "output.output_dir"]
    if not diff:
        return "<p class='muted'>the configs are identical (apart from output_dir)</p>"
    return _table(["key"] + names, [[k] + [json.dumps(f.get(k), default=str) for f in flats] for k in diff])


def build_reports(runs: Sequence[str], out: Optional[str] = None) -> Path:
    """`lmforge report`: rebuild one run's report.html (and loss.png), or compare several runs."""
    if out:
        check_output_file(out, "--output")
    if not runs:
        raise LmforgeError("no run folder given", "lmforge report runs/NAME [runs/OTHER ...]")
    paths = [Path(r) for r in runs]
    for p in paths:
        _load_run(p)  # validates each folder with a clear error
    if len(paths) == 1:
        plot_losses(paths[0])
        return write_html_report(paths[0], Path(out) if out else None)
    if out is None:
        parents = {p.resolve().parent for p in paths}
        out = str((parents.pop() if len(parents) == 1 else Path.cwd()) / "compare.html")
    for p in paths:  # each run's own page is linked from the table: write the missing ones
        if not (p / "report.html").exists():
            try:
                write_html_report(p)
            except Exception as e:
                log.warning("could not write %s/report.html: %s", p, e)
    return write_comparison(paths, Path(out))
