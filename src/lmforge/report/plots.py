"""The report's matplotlib figures (loss.png and the plots embedded in report.html)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Optional, Sequence

from ..fs import JsonLog


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(run_dir: Path, out: Optional[Path] = None) -> Optional[Path]:
    """Train and eval loss against step, with the learning rate on a second axis (loss.png)."""
    rows = JsonLog(Path(run_dir) / "log.jsonl").read()
    fig = _loss_figure(rows, Path(run_dir).name)
    if fig is None:
        return None
    out = out or Path(run_dir) / "loss.png"
    fig.savefig(out)
    _plt().close(fig)
    return out


def _loss_figure(rows: list[dict], title: str):
    plt = _plt()
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    lrs = [(r["step"], r["lr"]) for r in rows if r.get("lr") is not None]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), "o-" if len(train) < 3 else "-", label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
        _label_lone_points(ax, evals)
    _span_run(ax, rows)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs), color="tab:gray", alpha=0.5, linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:gray")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def _span_run(ax, rows: list[dict]) -> None:
    """The x axis covers the whole run (step 0 to the last step logged), so a series of one or two points sits
    where it happened instead of filling an axis of its own (one evaluation at step 113 drawn on 108-118)."""
    last = max((r["step"] for r in rows if isinstance(r.get("step"), (int, float))), default=0)
    if last > 0:
        ax.set_xlim(-0.02 * last, 1.02 * last)


def _label_lone_points(ax, pts: list, fmt: str = "{:.4g}") -> None:
    """A series with a single point gets its value written beside it (a dot alone says little)."""
    if len(pts) == 1:
        x, y = pts[0]
        ax.annotate(fmt.format(y), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)


def _png(fig) -> str:
    """A figure as a base64 PNG data URI (and the figure closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _eval_metrics_figure(rows: list[dict], names: Sequence[str]):
    evals = [r for r in rows if any(f"eval_{n}" in r for n in names)]
    if not evals:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    for n in names:
        pts = [(r["step"], r[f"eval_{n}"]) for r in evals if isinstance(r.get(f"eval_{n}"), (int, float))]
        if pts:
            ax.plot(*zip(*pts), "o-", label=n)
            _label_lone_points(ax, pts)
    _span_run(ax, rows)
    ax.set_xlabel("optimizer step")
    ax.set_title("evaluation metrics during training")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def _reward_figure(rows: list[dict]):
    """Online RL: the training reward per logging window, each function's, and the share of flat groups."""
    steps = [r for r in rows if isinstance(r.get("reward"), (int, float)) and "loss" in r]
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.4), dpi=110)
    names = ["reward"] + sorted({k for r in steps for k in r if k.startswith("reward_")
                                 and not k.endswith(("_std", "_none"))})
    for n in names + ["frac_reward_zero_std"]:
        pts = [(r["step"], r[n]) for r in steps if isinstance(r.get(n), (int, float))]
        if pts:
            ax.plot(*zip(*pts), marker="o" if len(pts) == 1 else None, lw=2 if n == "reward" else 1,
                    ls=":" if n == "frac_reward_zero_std" else "-",
                    label="groups with equal rewards (share)" if n == "frac_reward_zero_std" else n)
    _span_run(ax, rows)
    ax.set_xlabel("optimizer step")
    ax.set_title("training rewards (sampled completions; the reward is the weighted sum)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def _perf_figure(rows: list[dict]):
    steps = [r for r in rows if r.get("tokens_per_s") is not None]
    if not steps:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=110)
    x = [r["step"] for r in steps]
    a1.plot(x, [r["tokens_per_s"] for r in steps], "o-" if len(steps) < 3 else "-", color="tab:green",
            label="tokens/s (real, non-pad)")
    a1.set_xlabel("optimizer step")
    a1.set_ylabel("tokens/s")
    a1.grid(alpha=0.3)
    handles, labels = a1.get_legend_handles_labels()
    mfu = [(r["step"], 100 * r["mfu"]) for r in steps if r.get("mfu") is not None]
    if mfu:
        a1b = a1.twinx()
        a1b.plot(*zip(*mfu), color="tab:purple", alpha=0.6, linestyle="--", label="MFU %")
        a1b.set_ylabel("MFU (%)", color="tab:purple")
        h, lab = a1b.get_legend_handles_labels()
        handles, labels = handles + h, labels + lab
    a1.legend(handles, labels, loc="lower right", fontsize=8)
    a1.set_title("throughput")
    mem = [(r["step"], r["peak_mem_mb"]) for r in steps if r.get("peak_mem_mb") is not None]
    if mem:
        a2.plot(*zip(*mem), "o-" if len(mem) < 3 else "-", color="tab:red")
    a2.set_xlabel("optimizer step")
    a2.set_ylabel("peak memory (MB)")
    a2.set_title("peak memory")
    a2.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def length_histogram(lengths: Sequence[int], bins: int = 20) -> dict:
    """A compact histogram of token lengths for the manifest (the raw lengths can be millions)."""
    import numpy as np
    arr = np.asarray(list(lengths), dtype=np.int64)
    if arr.size == 0:
        return {"edges": [], "counts": [], "n": 0}
    lo, hi = int(arr.min()), int(arr.max())
    counts, edges = np.histogram(arr, bins=min(bins, max(1, hi - lo + 1)), range=(lo, hi + 1))
    return {"edges": [round(float(e), 2) for e in edges], "counts": counts.astype(int).tolist(), "n": int(arr.size),
            "min": lo, "max": hi, "mean": round(float(arr.mean()), 2),
            "p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95))}


def _hist_figure(hist: dict, max_length: Optional[int]):
    if not hist.get("counts"):
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=110)
    edges, counts = hist["edges"], hist["counts"]
    widths = [edges[i + 1] - edges[i] for i in range(len(counts))]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="tab:blue", edgecolor="white")
    if max_length and max_length <= edges[-1] * 1.05:
        ax.axvline(max_length, color="tab:red", linestyle="--", label=f"max_length {max_length}")
        ax.legend()
    ax.set_xlabel("tokens per training example")
    ax.set_ylabel("examples")
    ax.set_title("length histogram (train)")
    fig.tight_layout()
    return fig


def _balance_figure(counts: dict):
    if not counts:
        return None
    plt = _plt()
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:40]
    fig, ax = plt.subplots(figsize=(5.5, max(2.0, 0.3 * len(items) + 1)), dpi=110)
    ax.barh([str(k) for k, _ in items][::-1], [v for _, v in items][::-1], color="tab:orange")
    ax.set_xlabel("training examples")
    ax.set_title("label balance (train)")
    fig.tight_layout()
    return fig


def _confusion_figure(cm: list[list[int]], labels: list[str]):
    plt = _plt()
    n = len(cm)
    size = min(9, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size * 0.85), dpi=110)
    ax.imshow(cm, cmap="Blues")
    names = [str(x) for x in labels] if len(labels) == n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=45, ha="right")
    ax.set_yticks(range(n), names)
    top = max((max(r) for r in cm), default=0)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i][j]), ha="center", va="center",
                        color="white" if cm[i][j] > top / 2 else "black", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    return fig
