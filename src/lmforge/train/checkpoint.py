"""Crash-safe checkpoints: written to a temporary folder, fsynced, then renamed.

A checkpoint folder ``checkpoints/step-N/`` holds:
    model.safetensors (+ config.json)   the weights, via save_pretrained
    optimizer.pt, scheduler.pt          state dicts (loaded back with weights_only=True)
    rng.pt                              Python, NumPy, torch CPU and CUDA RNG states
    trainer_state.json                  step, data position, best metric, ...
    COMPLETE                            written last: a folder without it was cut off
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

COMPLETE = "COMPLETE"


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": repr(random.getstate()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import ast
    random.setstate(ast.literal_eval(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_dir(final: Path, write, mark_complete: bool = True) -> Path:
    """Call ``write(tmp_dir)``, fsync, mark COMPLETE (optional), then rename to ``final``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        write(tmp)
        if mark_complete:
            (tmp / COMPLETE).write_text("ok\n")
        _fsync_tree(tmp)
        if final.exists():
            old = final.parent / f".old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict, tokenizer=None) -> Path:
    def write(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    return atomic_dir(folder, write)


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE).exists() and (folder / "trainer_state.json").exists()


def list_checkpoints(root: Path) -> list[Path]:
    """Complete step-N folders under root, oldest first."""
    if not root.exists():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and p.is_dir() and is_complete(p):
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def incomplete_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return [p for p in root.iterdir() if p.is_dir() and (p.name.startswith(".tmp-") or
            (re.fullmatch(r"step-\d+", p.name) and not is_complete(p)))]


def rotate(root: Path, limit: Optional[int], keep: set[Path] = frozenset()) -> None:
    """Delete the oldest complete checkpoints beyond ``limit`` (never one in ``keep``)."""
    if not limit or limit <= 0:
        return
    ckpts = list_checkpoints(root)
    removable = [p for p in ckpts if p not in keep]
    excess = len(ckpts) - limit
    for p in removable[:max(0, excess)]:
        shutil.rmtree(p, ignore_errors=True)


def load_training_state(folder: Path, model, optimizer, scheduler) -> dict:
    from safetensors.torch import load_file

    weights = folder / "model.safetensors"
    if weights.exists():
        sd = load_file(str(weights))
    else:  # sharded
        sd = {}
        for f in sorted(folder.glob("model-*.safetensors")):
            sd.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # Tied weights are saved once; anything else missing is a real mismatch.
    missing = [k for k in missing if not any(t in k for t in ("lm_head", "decoder", "embed"))]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return json.loads((folder / "trainer_state.json").read_text())
