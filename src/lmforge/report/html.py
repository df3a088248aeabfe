"""report.html: the HTML helpers, one builder per section, and write_html_report."""

from __future__ import annotations

import html
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import yaml

from ..config import build_config
from ..fs import write_text
from ..metrics import higher_is_better, notes_for
from ..tasks import TASKS, get_task
from ..use.classify import classify
from .plots import (
    _balance_figure,
    _confusion_figure,
    _eval_metrics_figure,
    _hist_figure,
    _loss_figure,
    _perf_figure,
    _reward_figure,
    _png,
)
from .runs import _load_run, _scalar, best_metric_name, format_duration, run_status

log = logging.getLogger("lmforge")

MAX_MISCLASSIFIED_ROWS = 256  # rows re-classified to show misclassified examples


CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px 0;font-size:26px} h2{font-size:19px;margin:0 0 12px 0;border-bottom:1px solid #e2e5ea;padding-bottom:6px}
.sub{color:#5a6572;margin-bottom:18px}
section{background:#fff;border:1px solid #e2e5ea;border-radius:8px;padding:16px 20px;margin:16px 0}
table{border-collapse:collapse;font-size:14px;margin:6px 0;max-width:100%;table-layout:auto} th,td{border-bottom:1px solid #eceef1;padding:4px 10px;text-align:left;overflow-wrap:break-word}
th{background:#f2f4f7} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f2f4f7;padding:10px;border-radius:6px;overflow:auto;font-size:13px;max-height:420px}
img{max-width:100%;height:auto} .row{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
.good{color:#1a7f37} .bad{color:#c62828} .muted{color:#6b7480;font-size:13px}
.sample{white-space:pre-wrap} .badge{display:inline-block;padding:2px 8px;border-radius:10px;font-size:12px;background:#e7ecf3}
.badge.finished{background:#d5f5dc} .badge.failed,.badge.crashed{background:#fbd9d9} .badge.running{background:#fff1c2}
.mask-preview{white-space:pre-wrap} .mask-preview .trained{background:#c9f0d3;color:#0b4d1f} .mask-preview .context{color:#6b7480}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _num(v) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        a = abs(v)
        if a >= 1e6 or 0 < a < 1e-3:
            return f"{v:.3g}"
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.1f}"
        return f"{v:.4f}".rstrip("0").rstrip(".") if a >= 1 else f"{v:.4f}"
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
    """Collapsed: the resolved config is for looking something up, not for the first screen."""
    return _section("config", "Config", "<details><summary class='muted'>config.yaml, every default filled in "
                                        "(click to show)</summary>"
                                        f"<pre>{_e(run['cfg_text'] or '(no config.yaml)')}</pre></details>")


def _sec_data(run: dict) -> str:
    s = (run["manifest"].get("data_summary") or {})
    data = run["manifest"].get("data") or (run["cfg"].get("data") or {})
    rows = [(f"{k} data", v if isinstance(v, str) else " + ".join(f"{x['path']} ({x['weight']:g})" for x in v))
            for k, v in data.items() if v]
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
    if s.get("mix"):  # a mix of sources: what each one gave
        body += _table(["source", "weight", "rows read", "train rows", "share"],
                       [(m["source"], f"{m['weight']:g}", f"{m['rows_read']:,}", f"{m['train_rows']:,}",
                         f"{100 * m['share']:.1f}%") for m in s["mix"]])
    if s.get("label_counts"):
        total = sum(s["label_counts"].values()) or 1
        body += _table(["label", "train examples", "share"],
                       [(k, v, f"{100 * v / total:.1f}%") for k, v in
                        sorted(s["label_counts"].items(), key=lambda kv: -kv[1])[:50]])
    preview = _mask_preview(s.get("mask_preview"))
    return _section("data", "Data", f"<div class='row'><div>{body}</div><div>{figs}</div></div>{preview}")


def _mask_preview(pieces) -> str:
    """The first training example with the tokens that carry a loss highlighted ([text, trained] pieces)."""
    if not pieces:
        return ""
    spans = "".join(f"<mark class='trained'>{_e(t)}</mark>" if on else f"<span class='context'>{_e(t)}</span>"
                    for t, on in pieces)
    return ("<h3>first training example: highlighted tokens carry the loss</h3>"
            f"<pre class='mask-preview'>{spans}</pre>")


def _sec_metrics(run: dict) -> str:
    met = run["metrics"]
    splits = [s for s in ("before", "eval", "test") if met.get(s)]
    if not splits:
        return _section("metrics", "Metrics", "<p class='muted'>no metrics yet (metrics.json missing)</p>")
    keys = []
    for s in splits:
        keys += [k for k, v in met[s].items() if _scalar(v) and k not in keys]
    bs = met.get("before_sample") or {}
    of = bs.get("of")
    header = ["metric"] + [{"before": f"before training (sample: {bs.get('items', 0):,} of {of:,})" if of
                            else "before training",
                            "eval": "eval (after)", "test": "test"}[s] for s in splits]
    has_delta = "before" in splits and "eval" in splits
    # a capped before-training evaluation is compared with the final model on the same sample
    after = met["after_on_sample"] if of and met.get("after_on_sample") else met.get("eval", {})
    if has_delta:
        header.append("change (after - before, on the same sample)" if after is not met.get("eval") else
                      "change (eval - before)")
    rows = []
    for k in keys:
        row = [k] + [met[s].get(k, "-") for s in splits]
        counts = isinstance(met["before"].get(k), int) and isinstance(after.get(k), int)  # pairs, n_examples, ...
        if has_delta and _scalar(met["before"].get(k)) and _scalar(after.get(k)) and not k.startswith("n_") \
                and not counts:
            d = after[k] - met["before"][k]
            up = higher_is_better(k)  # green = better, red = worse; no colour where neither way is better
            cls = "" if up is None or not d else "good" if (d > 0) == up else "bad"
            row.append(_Raw(f"<span class='{cls}'>{d:+.4f}</span>"))
        elif has_delta:
            row.append("")
        rows.append(row)
    body = _table(header, rows)
    notes = notes_for(keys)
    if notes:
        body += "<ul class='muted notes'>" + "".join(f"<li><b>{_e(k)}</b>: {_e(n)}</li>" for k, n in notes) + "</ul>"
    if has_delta:
        body += "<p class='muted'>change: green is better, red is worse (by each metric's own direction).</p>"
    tr = met.get("train") or {}
    if tr:
        body += "<h3>training</h3>" + _table(["", ""], [(k, v) for k, v in tr.items() if v is not None])
    return _section("metrics", "Metrics before and after training", body)


def _sec_curves(run: dict) -> str:
    rows = run["log"]
    body = _img(_loss_figure(rows, run["name"]), "loss curves")
    names = [best_metric_name(run["cfg"])]
    for extra in ("accuracy", "f1_macro", "mcc", "perplexity", "reward_accuracy", "reward_margin", "accuracy_strict",
                  "accuracy_lenient"):
        if extra not in names and any(f"eval_{extra}" in r for r in rows):
            names.append(extra)
    if names != ["loss"]:
        body += _img(_eval_metrics_figure(rows, [n for n in names if n != "loss"]), "eval metrics")
    if any("generation_s" in r for r in rows):
        body += _img(_reward_figure(rows), "training rewards")
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
    if isinstance(v, list) and v and all(isinstance(x, dict) and "completion" in x for x in v):  # a sampled group
        return "\n".join(f"[reward {x.get('reward')}] {x['completion']}" for x in v)
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


def _run_task(run: dict):
    """The run's Task (None when its folder names none lmforge knows)."""
    name = run["manifest"].get("task") or run["cfg"].get("task")
    return TASKS.get(name) if name else None


def _sec_samples(run: dict) -> str:
    logged = [r for r in run["log"] if r.get("samples")]
    parts = []
    if logged:
        shown = [logged[0], logged[-1]] if len(logged) > 1 else logged
        for rec in shown:
            parts.append(f"<h3>at step {rec['step']}</h3>" + _samples_table(rec["samples"][:8]))
    task = _run_task(run)
    sections = task.report_sections if task is not None else ()
    if "misclassified" in sections:
        parts.append(_misclassified_html(run))
    title = task.samples_title if task is not None else "Samples"
    if "misclassified" in sections and not logged:
        title = "Misclassified examples"
    return _section("samples", title, "".join(parts) or "<p class='muted'>no samples logged</p>")


def misclassified(run_dir: Path, limit_rows: int = MAX_MISCLASSIFIED_ROWS, show: int = 12) -> dict:
    """Re-classify the first `limit_rows` rows of the test (else eval, else held-out) split with the
    final model; return the ones it gets wrong, most confident mistakes first."""
    run_dir = Path(run_dir)
    cfg = build_config(yaml.safe_load((run_dir / "config.yaml").read_text()), str(run_dir / "config.yaml"))
    split, df = get_task(cfg.task).labelled_rows(cfg)
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
    # what a reader comes for first (how it went) before what it was run on (data, config, environment)
    builders = [_sec_overview, _sec_metrics, _sec_curves]
    task = _run_task(run)
    if task is not None and "confusion" in task.report_sections:
        builders.append(_sec_confusion)
    builders += [_sec_samples, _sec_data, _sec_perf, _sec_config, _sec_environment]
    for build in builders:
        try:
            sections.append(build(run))
        except Exception as e:  # one broken section must not cost the whole report (or the run)
            log.warning("report: section %s failed: %s", build.__name__, e)
            sections.append(_section(build.__name__.removeprefix("_sec_"), build.__name__.removeprefix("_sec_"),
                                     f"<p class='bad'>could not build this section: {_e(e)}</p>"))
    m = run["manifest"]
    sub = (f"{_e(task.name if task else '?')} · {_e(m.get('model', '?'))} · {_e(run_status(run['dir'], m))} · "
           f"report written {time.strftime('%Y-%m-%d %H:%M:%S')}")
    out = Path(out) if out else run["dir"] / "report.html"
    return write_text(out, _page(f"lmforge run: {run['name']}", sub, sections))
