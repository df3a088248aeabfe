"""Facts about run folders: status, loading, `lmforge runs`, durations, metrics.json."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Union

import yaml

from ..errors import LmforgeError
from ..fs import JsonLog, read_json, recorded_process_alive, write_json
from ..starters import BEST_METRICS


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def run_status(run_dir: Path, manifest: Optional[dict] = None) -> str:
    """finished / running / crashed / failed / interrupted / unknown. A 'running' run whose
    process is gone (same host) crashed without writing its end state (killed, OOM, power loss)."""
    m = manifest if manifest is not None else read_json(Path(run_dir) / "manifest.json", {}) or {}
    status = m.get("status") or "unknown"
    if status != "running":
        return status
    return "crashed" if recorded_process_alive(m) is False else "running"  # None: another host, cannot tell


def best_metric_name(cfg: dict) -> str:
    name = (cfg.get("train") or {}).get("metric_for_best_model")
    if not name:
        name = BEST_METRICS.get(cfg.get("task") or "classification", ("loss", False))[0]
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
            "log": JsonLog(run_dir / "log.jsonl").read()}


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
    if not root.is_dir():
        raise LmforgeError(f"{root} is a file, not a folder of runs", "give the folder that holds your runs (default: runs)")
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
            evals = [r.get(f"eval_{name}") for r in JsonLog(d / "log.jsonl").read() if _scalar(r.get(f"eval_{name}"))]
            if evals:
                best = max(evals) if name not in ("loss", "perplexity", "perplexity_per_word") else min(evals)
        if best is None and _scalar((metrics.get("eval") or {}).get(name)):  # no evaluation during training
            best = metrics["eval"][name]
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


def write_metrics(run_dir: Path, metrics: dict) -> None:
    write_json(Path(run_dir) / "metrics.json", metrics)
