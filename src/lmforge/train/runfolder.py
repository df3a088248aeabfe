"""The run folder: its default name, the rules for creating or reusing it, and the manifest."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from ..data.pipeline import plain
from ..errors import LmforgeError
from ..fs import check_output_dir, read_json


def never_trained(path: Path) -> bool:
    """A run folder of a run that stopped before its first training step: a manifest saying failed or
    interrupted, and no log line, checkpoint or model (what an older lmforge left after an early error)."""
    m = read_json(Path(path) / "manifest.json", {}) or {}
    if m.get("status") not in ("failed", "interrupted"):
        return False
    return not any((Path(path) / name).exists() for name in ("log.jsonl", "checkpoints", "model", "adapter"))


def is_finished(path: Path) -> bool:
    m = read_json(Path(path) / "manifest.json", {})
    return m.get("status") == "finished"


def default_run_name(task: str, model: Optional[str]) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = (model or "scratch").rstrip("/").split("/")[-1]
    return f"runs/{task}-{base}-{stamp}"


def prepare_run_dir(path: Path, overwrite: bool, resume, data_paths: list[str]) -> None:
    """Check and create the run folder. `resume`: False, True (the latest checkpoint) or a checkpoint path;
    a plain resume of a finished run is refused (nothing is left to train; it used to start over)."""
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
    check_output_dir(path, "output_dir")  # a file, a path under a file, an unwritable parent: said before any work
    if path.exists() and any(path.iterdir()):
        if resume is True and is_finished(path):
            raise LmforgeError(f"{path} holds a finished run: there is nothing to resume",
                               f"to train it further, start a new run from its model: --model.name {path}/model "
                               "--output.output_dir NEW_FOLDER (with the steps or epochs to add); --overwrite "
                               "starts this one again, --resume CHECKPOINT replays from one of its checkpoints")
        if resume:
            return
        if overwrite or never_trained(path):  # a run that failed before its first step holds nothing to keep
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
        "task": cfg.task, "model": cfg.model.name or "from_config", "data": {"train": plain(cfg.data.train),
                                                                         "eval": plain(cfg.data.eval),
                                                                         "test": plain(cfg.data.test)},
        "seed": seed, "device": device, "versions": versions(), "git_sha": git_sha(),
    }
