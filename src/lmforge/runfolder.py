"""The run folder: creation rules, the manifest, log.jsonl and atomic JSON writes."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from .errors import LmforgeError


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str, allow_nan=True))
    os.replace(tmp, path)


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def is_finished(path: Path) -> bool:
    m = read_json(Path(path) / "manifest.json", {})
    return m.get("status") == "finished"


def default_run_name(task: str, model: Optional[str]) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = (model or "scratch").rstrip("/").split("/")[-1]
    return f"runs/{task}-{base}-{stamp}"


def prepare_run_dir(path: Path, overwrite: bool, resume: bool, data_paths: list[str]) -> None:
    path = Path(path)
    for d in data_paths:
        if not d:
            continue
        dp = Path(d).expanduser()
        if dp.exists():
            src = dp.resolve() if dp.is_dir() else dp.resolve().parent
            try:
                path.resolve().relative_to(src)
                if dp.is_dir():
                    raise LmforgeError(f"output folder {path} is inside the input data folder {dp}",
                                       "choose an output_dir outside the data folder")
            except ValueError:
                pass
    if path.exists() and path.is_file():
        raise LmforgeError(f"output_dir {path} is a file", "choose a folder path for output.output_dir")
    if path.exists() and any(path.iterdir()):
        if resume:
            return
        if overwrite:
            shutil.rmtree(path)
        elif is_finished(path):
            raise LmforgeError(f"{path} already holds a finished run",
                               "pass --overwrite to replace it, or choose another output.output_dir")
        else:
            raise LmforgeError(f"{path} already holds an unfinished run",
                               "pass --resume to continue it, --overwrite to start again, or choose another output_dir")
    path.mkdir(parents=True, exist_ok=True)


def git_sha() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        sha = out.stdout.strip()
        return sha if out.returncode == 0 and len(sha) == 40 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    from importlib import metadata
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("lmforge", "torch", "transformers", "tokenizers", "datasets", "accelerate", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def new_manifest(cfg, device: str, seed: int) -> dict:
    return {
        "status": "running", "pid": os.getpid(), "host": platform.node(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "started_unix": time.time(),
        "command": " ".join(sys.argv), "cwd": os.getcwd(),
        "task": cfg.task, "model": cfg.model.name or "from_config", "data": {"train": cfg.data.train, "eval": cfg.data.eval,
                                                                         "test": cfg.data.test},
        "seed": seed, "device": device, "versions": versions(), "git_sha": git_sha(),
    }


class LogWriter:
    """Appends one JSON line per logging step; flushed at once so a crash loses nothing."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        # Called with every record written (experiment trackers, sweep pruning); main process only.
        self.listeners: list = []

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint's step (they will be logged again)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
        for listener in self.listeners:
            listener(record)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
