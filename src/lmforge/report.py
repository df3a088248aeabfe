"""What a run leaves to read: metrics.json, loss.png, report.html and the model card.

    lmforge report runs/sentiment-minilm              # rebuild report.html (and loss.png)
    lmforge report runs/a runs/b -o compare.html      # one page comparing several runs

The HTML report is one self-contained file (inline CSS, PNG plots as base64 data URIs): it
opens from disk in any browser, with no server and no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional, Sequence, Union

import yaml

from .errors import LmforgeError
from .runfolder import LogWriter, read_json, write_json

log = logging.getLogger("lmforge")

PIPELINE_TAGS = {"classification": "text-classification", "causal-lm": "text-generation",
                 "masked-lm": "fill-mask"}
# Built-in aliases -> (the Hub id the weights came from, its license), for the model card.
BASE_MODELS = {"minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
               "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}
MAX_MISCLASSIFIED_ROWS = 256  # rows re-classified to show misclassified examples


# ----------------------------------------------------------------------------------- plots
def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_losses(run_dir: Path, out: Optional[Path] = None) -> Optional[Path]:
    """Train and eval loss against step, with the learning rate on a second axis (loss.png)."""
    rows = LogWriter(Path(run_dir) / "log.jsonl").read()
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
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
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
    ax.set_xlabel("optimizer step")
    ax.set_title("evaluation metrics during training")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    return fig


def _perf_figure(rows: list[dict]):
    steps = [r for r in rows if r.get("tokens_per_s") is not None]
    if not steps:
        return None
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=110)
    x = [r["step"] for r in steps]
    a1.plot(x, [r["tokens_per_s"] for r in steps], color="tab:green", label="tokens/s (real, non-pad)")
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
        a2.plot(*zip(*mem), color="tab:red")
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


# ----------------------------------------------------------------------------------- html bits
CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px 0;font-size:26px} h2{font-size:19px;margin:0 0 12px 0;border-bottom:1px solid #e2e5ea;padding-bottom:6px}
.sub{color:#5a6572;margin-bottom:18px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:16px 20px;margin:16px 0}
table{border-collapse:collapse;font-size:14px;margin:6px 0} th,td{border-bottom:1px solid #eceef1;padding:4px 10px;text-align:left}
th{background:#f2f4f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f2f4f7;padding:10px;border-radius:6px;overflow:auto;font-size:13px;max-height:420px}
img{max-width:100%;height:auto} .row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.good{color:#1a7f37} .bad{color:#c62828} .muted{color:#6b7480;font-size:13px}
.sample{white-space:pre-wrap} .badge{display:inline-block;padding:2px 8px;border-radius:10px;font-size:12px;background:#e7ecf3}
.badge.finished{background:#d5f5dc} .badge.failed,.badge.crashed{background:#fbd9d9} .badge.running{background:#fff1c2}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _num(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        return f"{v:.4g}" if abs(v) >= 1000 or abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if any(header) else ""
    body = "".join("<tr>" + "".join(
        f"<td class='num'>{_e(_num(c))}</td>" if isinstance(c, (int, float)) and not isinstance(c, bool)
        else f"<td>{c if isinstance(c, _Raw) else _e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


class _Raw(str):
    """Already-escaped HTML inside a table cell."""


def _img(fig, alt: str) -> str:
    if fig is None:
        return ""
    return f"<img alt='{_e(alt)}' src='{_png(fig)}'>"


def _section(sid: str, title: str, body: str) -> str:
    return f"<section id='{sid}'><h2>{_e(title)}</h2>\n{body}\n</section>\n"


def _page(title: str, subtitle: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{_e(title)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>{_e(title)}</h1><div class='sub'>{subtitle}</div>" + "".join(sections) + "</main></body></html>\n")


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ----------------------------------------------------------------------------------- run facts
def run_status(run_dir: Path, manifest: Optional[dict] = None) -> str:
    """finished / running / crashed / failed / interrupted / unknown. A 'running' run whose
    process is gone (same host) crashed without writing its end state (killed, OOM, power loss)."""
    import os
    import platform
    m = manifest if manifest is not None else read_json(Path(run_dir) / "manifest.json", {}) or {}
    status = m.get("status") or "unknown"
    if status != "running":
        return status
    pid = m.get("pid")
    if not isinstance(pid, int) or m.get("host") not in (None, platform.node()):
        return "running"  # another machine: cannot tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "crashed"
    except PermissionError:
        return "running"
    if pid == os.getpid():
        return "running"
    try:  # a reused pid that is not lmforge is not our run
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        started = m.get("started_unix")
        if started and Path(f"/proc/{pid}").stat().st_mtime > started + 60 and "python" not in cmd \
                and "lmforge" not in cmd:
            return "crashed"
    except OSError:
        pass
    return "running"


def best_metric_name(cfg: dict) -> str:
    name = ((cfg.get("train") or {}).get("metric_for_best_model") or
            ("accuracy" if cfg.get("task") == "classification" else "loss"))
    return name.removeprefix("eval_").removeprefix("eval.")


def _load_run(run_dir: Path) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmforgeError(f"run folder not found: {run_dir}", "give a folder under runs/ (see `lmforge runs`)")
    if not (run_dir / "manifest.json").exists() and not (run_dir / "log.jsonl").exists():
        raise LmforgeError(f"{run_dir} is not a run folder (no manifest.json or log.jsonl)",
                           "give a folder that `lmforge train` wrote (see `lmforge runs`)")
    cfg_text = (run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else ""
    return {"dir": run_dir, "name": run_dir.name, "cfg_text": cfg_text,
            "cfg": (yaml.safe_load(cfg_text) or {}) if cfg_text else {},
            "manifest": read_json(run_dir / "manifest.json", {}) or {},
            "metrics": read_json(run_dir / "metrics.json", {}) or {},
            "log": LogWriter(run_dir / "log.jsonl").read()}


# ----------------------------------------------------------------------------------- sections
def _sec_overview(run: dict) -> str:
    m, met = run["manifest"], run["metrics"]
    status = run_status(run["dir"], m)
    tr = met.get("train") or {}
    rows = [("task", m.get("task") or run["cfg"].get("task", "?")), ("model", m.get("model", "?")),
            ("status", _Raw(f"<span class='badge {status}'>{_e(status)}</span>")),
            ("started", m.get("started", "?")), ("duration", format_duration(m.get("duration_s"))),
            ("optimizer steps", tr.get("steps", m.get("total_steps", "-"))), ("epochs", tr.get("epochs", "-")),
            ("parameters", f"{m['parameters']:,}" if isinstance(m.get("parameters"), int) else "-"),
            ("effective batch size", m.get("effective_batch_size", "-"))]
    if tr.get("best_step") is not None:
        rows.append((f"best {best_metric_name(run['cfg'])}", f"{_num(tr.get('best_metric'))} at step {tr['best_step']}"))
    if m.get("error"):
        rows.append(("error", f"{m.get('error_type', '')}: {m['error']}"))
    return _section("overview", "Overview", _table(["", ""], rows))


def _sec_config(run: dict) -> str:
    return _section("config", "Config", f"<p class='muted'>config.yaml, every default filled in:</p>"
                                        f"<pre>{_e(run['cfg_text'] or '(no config.yaml)')}</pre>")


def _sec_data(run: dict) -> str:
    s = (run["manifest"].get("data_summary") or {})
    data = run["manifest"].get("data") or (run["cfg"].get("data") or {})
    rows = [(f"{k} data", v) for k, v in data.items() if v]
    for key, label in (("train_rows", "train rows"), ("eval_rows", "eval rows"), ("test_rows", "test rows"),
                       ("max_length", "max_length (tokens)"), ("mean_tokens", "mean tokens per example"),
                       ("truncated_train", "train rows truncated")):
        if key in s:
            rows.append((label, s[key]))
    if "truncated_train_share" in s:
        rows.append(("share truncated", f"{100 * s['truncated_train_share']:.1f}%"))
    hist = s.get("length_histogram") or {}
    if hist.get("n"):
        rows.append(("length p50 / p95 / max", f"{hist['p50']} / {hist['p95']} / {hist['max']}"))
    for k, v in s.items():
        if k not in {"train_rows", "eval_rows", "test_rows", "max_length", "mean_tokens", "truncated_train",
                     "truncated_train_share", "length_histogram", "label_counts", "labels", "lengths"} \
                and isinstance(v, (int, float, str, bool)):
            rows.append((k.replace("_", " "), v))
    body = _table(["", ""], rows) if rows else "<p class='muted'>no data summary in manifest.json</p>"
    figs = _img(_balance_figure(s.get("label_counts") or {}), "label balance") + \
        _img(_hist_figure(hist, s.get("max_length")), "length histogram")
    if s.get("label_counts"):
        total = sum(s["label_counts"].values()) or 1
        body += _table(["label", "train examples", "share"],
                       [(k, v, f"{100 * v / total:.1f}%") for k, v in
                        sorted(s["label_counts"].items(), key=lambda kv: -kv[1])[:50]])
    return _section("data", "Data", f"<div class='row'><div>{body}</div><div>{figs}</div></div>")


def _sec_metrics(run: dict) -> str:
    met = run["metrics"]
    splits = [s for s in ("before", "eval", "test") if met.get(s)]
    if not splits:
        return _section("metrics", "Metrics", "<p class='muted'>no metrics yet (metrics.json missing)</p>")
    keys = []
    for s in splits:
        keys += [k for k, v in met[s].items() if _scalar(v) and k not in keys]
    header = ["metric"] + [{"before": "before training", "eval": "eval (after)", "test": "test"}[s] for s in splits]
    has_delta = "before" in splits and "eval" in splits
    if has_delta:
        header.append("change (eval - before)")
    rows = []
    for k in keys:
        row = [k] + [met[s].get(k, "-") for s in splits]
        if has_delta and _scalar(met["before"].get(k)) and _scalar(met["eval"].get(k)) and not k.startswith("n_"):
            d = met["eval"][k] - met["before"][k]
            better = (d < 0) if k in ("loss", "perplexity", "perplexity_per_word", "bits_per_byte") else (d > 0)
            row.append(_Raw(f"<span class='{'good' if better else 'bad' if d else ''}'>{d:+.4f}</span>"))
        elif has_delta:
            row.append("")
        rows.append(row)
    body = _table(header, rows)
    tr = met.get("train") or {}
    if tr:
        body += "<h3>training</h3>" + _table(["", ""], [(k, v) for k, v in tr.items() if v is not None])
    return _section("metrics", "Metrics before and after training", body)


def _sec_curves(run: dict) -> str:
    rows = run["log"]
    body = _img(_loss_figure(rows, run["name"]), "loss curves")
    names = [best_metric_name(run["cfg"])]
    for extra in ("accuracy", "f1_macro", "mcc", "perplexity"):
        if extra not in names and any(f"eval_{extra}" in r for r in rows):
            names.append(extra)
    if names != ["loss"]:
        body += _img(_eval_metrics_figure(rows, [n for n in names if n != "loss"]), "eval metrics")
    return _section("curves", "Loss, evaluation and learning rate",
                    body or "<p class='muted'>nothing logged yet (log.jsonl is empty)</p>")


def _sec_perf(run: dict) -> str:
    rows = [r for r in run["log"] if r.get("tokens_per_s") is not None]
    body = _img(_perf_figure(rows), "throughput and memory")
    if rows:
        tps = sorted(r["tokens_per_s"] for r in rows)
        mem = max((r.get("peak_mem_mb") or 0) for r in rows)
        mfus = [r["mfu"] for r in rows if r.get("mfu") is not None]
        body += _table(["", ""], [("median tokens/s", tps[len(tps) // 2]), ("peak memory (MB)", mem),
                                  ("median MFU", f"{100 * sorted(mfus)[len(mfus) // 2]:.2f}%" if mfus else "-")])
    return _section("throughput", "Throughput and memory", body or "<p class='muted'>no throughput logged</p>")


def _sec_confusion(run: dict) -> str:
    met = run["metrics"]
    split = "test" if (met.get("test") or {}).get("confusion_matrix") else "eval"
    cm = (met.get(split) or {}).get("confusion_matrix")
    if not cm:
        return _section("confusion", "Confusion matrix", "<p class='muted'>no confusion matrix in metrics.json</p>")
    labels = (run["manifest"].get("data_summary") or {}).get("labels") or []
    names = [str(x) for x in labels] if len(labels) == len(cm) else [str(i) for i in range(len(cm))]
    table = _table(["true \\ predicted"] + names, [[names[i]] + list(r) for i, r in enumerate(cm)]) \
        if len(cm) <= 12 else ""
    return _section("confusion", f"Confusion matrix ({split} split)",
                    f"<div class='row'><div>{_img(_confusion_figure(cm, names), 'confusion matrix')}</div>"
                    f"<div>{table}</div></div>")


def _cell(v) -> str:
    """A sample value for a table cell: text as is, [token, score] lists as 'token 12.3%'."""
    if isinstance(v, str):
        return v
    if isinstance(v, list) and all(isinstance(x, (list, tuple)) and len(x) == 2 and _scalar(x[1]) for x in v):
        return ", ".join(f"{x[0]} {100 * x[1]:.1f}%" for x in v)
    return json.dumps(v, ensure_ascii=False)


def _samples_table(samples: list) -> str:
    dicts = [x for x in samples if isinstance(x, dict)]
    out = "".join(f"<pre>{_e(x)}</pre>" for x in samples if not isinstance(x, dict))
    if dicts:
        keys: list[str] = []
        for d in dicts:
            keys += [k for k in d if k not in keys]
        out += _table(keys, [[_Raw(f"<span class='sample'>{_e(_cell(d.get(k, '')))}</span>") for k in keys]
                             for d in dicts])
    return out


def _sec_samples(run: dict) -> str:
    logged = [r for r in run["log"] if r.get("samples")]
    parts = []
    if logged:
        shown = [logged[0], logged[-1]] if len(logged) > 1 else logged
        for rec in shown:
            parts.append(f"<h3>at step {rec['step']}</h3>" + _samples_table(rec["samples"][:8]))
    task = run["manifest"].get("task") or run["cfg"].get("task")
    if task == "classification":
        parts.append(_misclassified_html(run))
    title = {"classification": "Misclassified examples", "causal-lm": "Sample generations",
             "masked-lm": "Fill-mask completions"}.get(task, "Samples")
    if logged and task == "classification":
        title = "Samples and misclassified examples"
    return _section("samples", title, "".join(parts) or "<p class='muted'>no samples logged</p>")


def _heldout_frame(cfg, seed: int):
    """The held-out eval rows, split exactly as tasks/classification.setup splits them."""
    from sklearn.model_selection import train_test_split

    from .tasks.classification import read_labelled
    d = cfg.data
    train_df = read_labelled(d.train, cfg, "train")
    if d.max_train_samples:
        train_df = train_df.sample(frac=1.0, random_state=seed).head(d.max_train_samples)
    counts = train_df["label"].value_counts()
    stratify = train_df["label"] if counts.min() >= 2 else None
    _, eval_df = train_test_split(train_df, test_size=d.validation_split, random_state=seed, stratify=stratify)
    eval_df = eval_df.reset_index(drop=True)
    return eval_df.head(d.max_eval_samples) if d.max_eval_samples else eval_df


def misclassified(run_dir: Path, limit_rows: int = MAX_MISCLASSIFIED_ROWS, show: int = 12) -> dict:
    """Re-classify the first `limit_rows` rows of the test (else eval, else held-out) split with the
    final model; return the ones it gets wrong, most confident mistakes first."""
    from .config import build_config
    from .infer import classify
    from .tasks.classification import read_labelled
    run_dir = Path(run_dir)
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
    if cfg.data.test:
        split, df = "test", read_labelled(cfg.data.test, cfg, "test")
    elif cfg.data.eval:
        split, df = "eval", read_labelled(cfg.data.eval, cfg, "eval")
    else:
        split, df = "held-out eval", _heldout_frame(cfg, cfg.train.seed)
    df = df.head(limit_rows)
    texts = df["text"].tolist()
    pairs = df["text_pair"].tolist() if "text_pair" in df else None
    preds = classify(run_dir / "model", texts=texts, pairs=pairs, progress=False, batch_size=32)
    wrong = [{"text": p["text"], **({"text_pair": p["text_pair"]} if pairs else {}), "true": t, "predicted": p["label"],
              "score": p["score"]} for p, t in zip(preds, df["label"].tolist()) if str(p["label"]) != str(t)]
    wrong.sort(key=lambda w: -w["score"])
    return {"split": split, "checked": len(preds), "wrong": len(wrong), "examples": wrong[:show]}


def _misclassified_html(run: dict) -> str:
    if not (run["dir"] / "model" / "config.json").exists():
        return "<p class='muted'>no final model yet: misclassified examples appear when training has finished</p>"
    try:
        res = misclassified(run["dir"])
    except Exception as e:  # the data may have moved since training; the report still renders
        return f"<p class='muted'>misclassified examples unavailable: {_e(e)}</p>"
    head = (f"<p>{res['wrong']} of the first {res['checked']} {res['split']} rows are misclassified"
            f"{' (most confident mistakes first)' if res['wrong'] else ''}.</p>")
    if not res["examples"]:
        return head
    return head + _table(["text", "true", "predicted", "confidence"],
                         [((e["text"] if len(e["text"]) < 300 else e["text"][:300] + "…") +
                           (f"  ||  {e['text_pair'][:150]}" if "text_pair" in e else ""),
                           e["true"], e["predicted"], f"{100 * e['score']:.1f}%") for e in res["examples"]])


def _sec_environment(run: dict) -> str:
    m = run["manifest"]
    rows = [(k, v) for k, v in (m.get("versions") or {}).items()]
    for key in ("device", "num_processes", "host", "git_sha", "command", "cwd", "seed", "pid"):
        if m.get(key) is not None:
            rows.append((key, m[key]))
    fps = m.get("data_fingerprints") or {}
    rows += [(f"data fingerprint ({k})", v) for k, v in fps.items()]
    return _section("environment", "Environment", _table(["", ""], rows) if rows else
                    "<p class='muted'>no manifest.json</p>")


def write_html_report(run_dir: Path, out: Optional[Path] = None) -> Path:
    """Write runs/<name>/report.html: one page with everything about the run, no external files."""
    run = _load_run(Path(run_dir))
    sections = []
    builders = [_sec_overview, _sec_config, _sec_data, _sec_metrics, _sec_curves, _sec_perf]
    task = run["manifest"].get("task") or run["cfg"].get("task")
    if task == "classification":
        builders.append(_sec_confusion)
    builders += [_sec_samples, _sec_environment]
    for build in builders:
        try:
            sections.append(build(run))
        except Exception as e:  # one broken section must not cost the whole report (or the run)
            log.warning("report: section %s failed: %s", build.__name__, e)
            sections.append(_section(build.__name__.removeprefix("_sec_"), build.__name__.removeprefix("_sec_"),
                                     f"<p class='bad'>could not build this section: {_e(e)}</p>"))
    m = run["manifest"]
    sub = (f"{_e(task or '?')} · {_e(m.get('model', '?'))} · {_e(run_status(run['dir'], m))} · "
           f"report written {time.strftime('%Y-%m-%d %H:%M:%S')}")
    out = Path(out) if out else run["dir"] / "report.html"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(_page(f"lmforge run: {run['name']}", sub, sections), encoding="utf-8")
    tmp.replace(out)
    return out


# ----------------------------------------------------------------------------------- comparison
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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(_page(f"lmforge: {len(runs)} runs compared", _e(", ".join(names)), sections), encoding="utf-8")
    tmp.replace(out)
    return out


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


# ----------------------------------------------------------------------------------- runs overview
def _short_source(src) -> str:
    if not src:
        return "-"
    p = Path(str(src))
    return p.name if p.is_absolute() or len(str(src)) > 40 else str(src)


def list_runs(root: Union[str, Path] = "runs") -> list[dict]:
    """One row per run folder under `root` (searched two levels deep), newest first (`lmforge runs`)."""
    root = Path(root)
    if not root.exists():
        raise LmforgeError(f"folder not found: {root}", "give the folder that holds your runs (default: runs)")
    found = [p.parent for p in sorted(set(root.glob("manifest.json")) | set(root.glob("*/manifest.json"))
                                      | set(root.glob("*/*/manifest.json")))]
    rows = []
    for d in found:
        m = read_json(d / "manifest.json", {}) or {}
        if not isinstance(m, dict) or "status" not in m:
            continue
        cfg = {}
        if (d / "config.yaml").exists():
            try:
                cfg = yaml.safe_load((d / "config.yaml").read_text()) or {}
            except yaml.YAMLError:
                cfg = {}
        status = run_status(d, m)
        metrics = read_json(d / "metrics.json", {}) or {}
        name = best_metric_name(cfg or {"task": m.get("task")})
        best = (metrics.get("train") or {}).get("best_metric")
        if best is None:  # not finished: the best evaluation logged so far
            evals = [r.get(f"eval_{name}") for r in LogWriter(d / "log.jsonl").read() if _scalar(r.get(f"eval_{name}"))]
            if evals:
                best = max(evals) if name not in ("loss", "perplexity", "perplexity_per_word") else min(evals)
        duration = m.get("duration_s")
        if duration is None and m.get("started_unix"):
            end = time.time() if status == "running" else max(
                (f.stat().st_mtime for f in (d / "log.jsonl", d / "manifest.json") if f.exists()), default=None)
            duration = round(end - m["started_unix"], 1) if end else None
        data = m.get("data") or (cfg.get("data") or {})
        rows.append({"run": str(d), "task": m.get("task", "?"), "model": _short_source(m.get("model")),
                     "data": _short_source(data.get("train")), "status": status,
                     "best_metric": name, "best": best, "duration_s": duration, "started": m.get("started", ""),
                     "error": m.get("error")})
    rows.sort(key=lambda r: r["started"] or "", reverse=True)
    return rows


def format_duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    mnt, sec = divmod(rem, 60)
    return f"{h}h{mnt:02d}m" if h else f"{mnt}m{sec:02d}s" if mnt else f"{sec}s"


# ----------------------------------------------------------------------------------- model card
def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _base_model_facts(cfg) -> tuple[Optional[str], Optional[str]]:
    """(Hub id or name of the base model, its license if its own model card says)."""
    name = cfg.model.name
    if not name:
        return None, None
    if name in BASE_MODELS:  # known: no need to locate (which may convert weights)
        return BASE_MODELS[name]
    hub, license_ = None, None
    try:
        from .zoo import MODELS, looks_like_path
        folder = Path(MODELS[name].locate()) if name in MODELS else Path(name).expanduser()
        card = folder / "README.md"
        if card.exists():
            text = card.read_text(encoding="utf-8", errors="replace")
            if text.startswith("---"):
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
                license_ = front.get("license") or license_
        if hub is None and not looks_like_path(name) and not folder.exists():
            hub = name  # a Hub id
    except Exception:
        pass
    return hub or name, license_ if isinstance(license_, str) else None


def _dataset_names(cfg) -> list[str]:
    """Dataset names for the front matter: built-in names and Hub ids as given, files by file name
    (a card may be published; a local path would leak the author's directory layout)."""
    out = []
    for src in (cfg.data.train, cfg.data.eval, cfg.data.test):
        if not src:
            continue
        p = Path(src).expanduser()
        name = p.name if p.exists() or "/" in src and Path(src).suffix else src.split(":")[0]
        if name not in out:
            out.append(name)
    return out


def model_card(cfg, metrics: dict, summary: dict, notes: list[str]) -> str:
    """A Hugging Face model card: YAML front matter (license, base_model, datasets, metrics,
    model-index), then intended use, how to use, training data, hyper-parameters, results and limitations."""
    task = cfg.task
    name = Path(cfg.output.output_dir or "model").name
    base, base_license = _base_model_facts(cfg)
    license_ = getattr(cfg.output, "license", None) or base_license or "other"
    final_split = "test" if metrics.get("test") else "eval"
    final = metrics.get(final_split) or {}
    scalars = {k: v for k, v in final.items() if _scalar(v) and k != "n_examples"}
    datasets = _dataset_names(cfg)
    front = {
        "license": license_,
        "base_model": base or "none (trained from scratch)",
        "library_name": "transformers",
        "pipeline_tag": PIPELINE_TAGS[task],
        "datasets": datasets,
        "metrics": list(scalars),
        "tags": ["lmforge", task],
    }
    front["model-index"] = [{"name": name, "results": [{
        "task": {"type": PIPELINE_TAGS[task], "name": task},
        "dataset": {"name": datasets[-1] if datasets else "unknown", "type": datasets[-1] if datasets else "unknown",
                    "split": final_split},
        "metrics": [{"type": k, "value": round(v, 6), "name": f"{final_split} {k}"} for k, v in scalars.items()]}]}]
    tr = metrics.get("train") or {}
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {name}", "",
             f"A `{task}` model fine-tuned with [lmforge](https://pypi.org/project/lmforge/) from "
             f"`{base or 'a model built from a config'}`"
             + (f" for {tr['steps']} optimizer steps ({tr.get('epochs', '?')} epochs)." if tr.get("steps") else "."), "",
             "## Intended use", "",
             {"classification": "Classify texts into the labels seen in training: "
                                + ", ".join(f"`{x}`" for x in summary.get("labels", [])) + ".",
              "causal-lm": "Generate text in the style of the training corpus.",
              "masked-lm": "Fill masked words, or serve as an encoder adapted to the training domain."}[task],
             "", "## How to use", "", "```python", "from transformers import pipeline",
             f"pipe = pipeline(\"{PIPELINE_TAGS[task]}\", model=\"{cfg.output.output_dir or '.'}/model\")",
             {"classification": "print(pipe(\"a text to classify\"))",
              "causal-lm": "print(pipe(\"Once upon a time\", max_new_tokens=40))",
              "masked-lm": "print(pipe(f\"Paris is the {pipe.tokenizer.mask_token} of France.\"))"}[task],
             "```", "", "or try it in a browser: `lmforge serve " + str(cfg.output.output_dir or "RUN") + "`.",
             "", "## Training data", ""]
    for key in ("train", "eval", "test"):
        src = getattr(cfg.data, key)
        if src:
            lines.append(f"- {key}: `{src}` ({summary.get(f'{key}_rows', '?')} rows)")
    if not cfg.data.eval and summary.get("eval_rows"):
        lines.append(f"- eval: {summary['eval_rows']} rows held out from the training data "
                     f"({100 * cfg.data.validation_split:.0f}%, seed {cfg.train.seed})")
    if "label_counts" in summary:
        lines.append(f"- label counts (train): " + ", ".join(f"`{k}` {v}" for k, v in summary["label_counts"].items()))
    if "mean_tokens" in summary:
        lines.append(f"- mean length {summary['mean_tokens']:.1f} tokens; max_length {summary.get('max_length', '?')}"
                     + (f"; {100 * summary['truncated_train_share']:.1f}% of train rows truncated"
                        if "truncated_train_share" in summary else ""))
    hp = {"model": {k: v for k, v in cfg.model.model_dump().items() if v not in (None, False)},
          "data": {k: v for k, v in cfg.data.model_dump(exclude_defaults=True).items() if k not in ("train", "eval", "test")},
          "train": cfg.train.model_dump()}
    lines += ["", "## Hyper-parameters", "", "```yaml", yaml.safe_dump(hp, sort_keys=False).strip(), "```", ""]
    if tr:
        lines += ["Training took " + f"{tr.get('runtime_s', '?')} s at {tr.get('tokens_per_s', '?')} tokens/s "
                  f"(peak memory {tr.get('peak_mem_mb', '?')} MB).", ""]
    splits = [s for s in ("before", "eval", "test") if metrics.get(s)]
    lines += ["## Results", ""]
    if splits:
        keys: list[str] = []
        for s in splits:
            keys += [k for k, v in metrics[s].items() if _scalar(v) and k != "n_examples" and k not in keys]
        lines += ["| metric | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        lines += [f"| {k} | " + " | ".join(_fmt(metrics[s].get(k, "-")) for s in splits) + " |" for k in keys]
        sizes = ", ".join(f"{s} {metrics[s]['n_examples']}" for s in splits if "n_examples" in metrics[s])
        lines += ["", "`before` is the model before fine-tuning, measured on the eval data."
                  + (f" Examples per split: {sizes}." if sizes else "")]
    else:
        lines.append("No evaluation data was given, so there are no held-out metrics.")
    lines += ["", "## Limitations", "",
              "Trained on a small dataset for a short time; check it on your own data before relying on it. "
              "Metrics are measured on the evaluation data named above only, and inherit its biases."]
    counts = summary.get("label_counts") or {}
    if counts and max(counts.values()) > 2 * max(1, min(counts.values())):
        lines.append(f"The training labels are imbalanced ({min(counts.values())} to {max(counts.values())} "
                     "examples per label): rare labels are likely recognised less well.")
    if summary.get("truncated_train_share", 0) > 0.05:
        lines.append(f"{100 * summary['truncated_train_share']:.0f}% of the training texts were cut at "
                     f"{summary.get('max_length')} tokens; longer inputs are truncated the same way.")
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_metrics(run_dir: Path, metrics: dict) -> None:
    write_json(Path(run_dir) / "metrics.json", metrics)
