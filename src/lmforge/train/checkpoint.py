"""Crash-safe checkpoints: written to a temporary folder, fsynced, then renamed.

A checkpoint folder ``checkpoints/step-N/`` holds:
    model.safetensors (+ config.json)   the weights, via save_pretrained
    optimizer.pt, scheduler.pt          state dicts (loaded back with weights_only=True)
    scaler.pt                           the fp16 gradient scaler, when there is one
    rng.pt                              Python, NumPy, torch CPU and every CUDA device's RNG state
    trainer_state.json                  step, data position (epoch, batch), best metric, log window, ...
    COMPLETE                            written last: the size and SHA-256 of every file above, as JSON

A folder without COMPLETE, or whose files do not have the sizes COMPLETE lists, was cut off
(killed mid-write, disk full, a partial copy) and is skipped with a message. A file whose content no
longer has its SHA-256 (corrupted in place, same size) is found when a run resumes from the folder:
the resume falls back to the checkpoint before it, with a message.
"""

from __future__ import annotations

import errno
import hashlib
import json
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import LmforgeError
from ..fs import atomic_dir

COMPLETE = "COMPLETE"
BEST_STEP = "best_step.txt"


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
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:  # a different number of visible GPUs: restore what matches
            for i, s in enumerate(states[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_complete(tmp: Path) -> None:
    files = [p for p in sorted(tmp.rglob("*")) if p.is_file()]
    sizes = {str(p.relative_to(tmp)): p.stat().st_size for p in files}
    sums = {str(p.relative_to(tmp)): file_sha256(p) for p in files}
    (tmp / COMPLETE).write_text(json.dumps({"files": sizes, "sha256": sums}, indent=1))


def is_sharded(accelerator) -> bool:
    """True under FSDP: each process holds a shard of the weights and optimizer state."""
    from accelerate.utils import DistributedType
    return accelerator.distributed_type == DistributedType.FSDP


def full_state(model, optimizer=None) -> tuple[dict, Optional[dict]]:
    """The full (unsharded) model and optimizer state dicts, on the CPU, keyed by parameter name. Under FSDP
    this is a collective: every process must call it (the main process then writes)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    return msd, (get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None)


def load_full_state(model, optimizer, msd: dict, osd: Optional[dict]) -> None:
    """Put full state dicts back into a sharded model / optimizer (every process calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    set_model_state_dict(model, msd, options=StateDictOptions(full_state_dict=True, strict=False))
    if osd is not None:
        set_optimizer_state_dict(model, optimizer, osd, options=StateDictOptions(full_state_dict=True))


def save_checkpoint(folder: Path, model, optimizer, scheduler, state: dict, tokenizer=None, scaler=None,
                    full: Optional[tuple] = None) -> Path:
    """`full`: (model, optimizer) state dicts gathered by full_state (FSDP); the optimizer's is then keyed by
    parameter name, and the checkpoint resumes only under FSDP."""
    def write(tmp: Path):
        model.save_pretrained(tmp, safe_serialization=True, **({"state_dict": full[0]} if full else {}))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        torch.save(full[1] if full else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    try:
        return atomic_dir(folder, write, complete=_write_complete)
    except OSError as e:
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise LmforgeError(
            f"could not write checkpoint {folder}: {'the disk is full' if full else e.strerror or e}"
            f"{' (' + e.filename + ')' if getattr(e, 'filename', None) else ''}",
            ("free disk space or lower train.save_total_limit, then resume with --resume; "
             if full else "check the output folder is writable, then resume with --resume; ")
            + "earlier checkpoints are intact") from None


def checkpoint_problem(folder: Path, verify: bool = False) -> Optional[str]:
    """Why a checkpoint folder cannot be used, or None when it is complete; `verify` also compares every
    file's content with the SHA-256 written with it (reads the whole checkpoint)."""
    folder = Path(folder)
    marker = folder / COMPLETE
    if not marker.exists():
        return "it has no COMPLETE marker (it was cut off while being written)"
    try:
        meta = json.loads(marker.read_text())
        listed, sums = meta.get("files", {}), meta.get("sha256", {})
    except (ValueError, AttributeError):
        listed, sums = {}, {}  # an older marker without sizes
    if verify:
        for name, digest in sums.items():
            p = folder / name
            if p.exists() and p.stat().st_size == listed.get(name) and file_sha256(p) != digest:
                return f"{name} does not match the checksum written with it (corrupted on disk?)"
    for name, size in listed.items():
        p = folder / name
        if not p.exists():
            return f"{name} is missing"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, {size} were written (truncated copy?)"
    if not (folder / "trainer_state.json").exists():
        return "trainer_state.json is missing"
    return None


def is_complete(folder: Path) -> bool:
    return checkpoint_problem(folder) is None


def step_of(folder: Path) -> Optional[int]:
    m = re.fullmatch(r"step-(\d+)", Path(folder).name)
    return int(m.group(1)) if m else None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete step-N folders under root, oldest first."""
    if not root.exists():
        return []
    found = []
    for p in root.iterdir():
        n = step_of(p)
        if n is not None and p.is_dir() and is_complete(p):
            found.append((n, p))
    return [p for _, p in sorted(found)]


def incomplete_checkpoints(root: Path) -> list[tuple[Path, str]]:
    """(folder, reason) for every checkpoint folder under root that was cut off."""
    if not root.exists():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        if p.name.startswith((".tmp-", ".old-")):
            out.append((p, "a temporary folder left by a write that did not finish"))
        elif step_of(p) is not None:
            why = checkpoint_problem(p)
            if why:
                out.append((p, why))
    return out


def rotate(root: Path, limit: Optional[int], keep: set[Path] = frozenset()) -> None:
    """Delete the oldest complete checkpoints beyond ``limit`` (never one in ``keep``).

    Called only after the newest checkpoint is complete, so a crash here loses nothing.
    """
    if not limit or limit <= 0:
        return
    ckpts = list_checkpoints(root)
    # The newest is never removed (it is what --resume needs), nor one in keep (the best model's).
    removable = [p for p in ckpts[:-1] if p not in keep]
    excess = len(ckpts) - limit
    for p in removable[:max(0, excess)]:
        shutil.rmtree(p, ignore_errors=True)


def load_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    weights = Path(folder) / "model.safetensors"
    if weights.exists():
        return load_file(str(weights))
    sd = {}  # sharded
    for f in sorted(Path(folder).glob("model-*.safetensors")):
        sd.update(load_file(str(f)))
    return sd


def load_training_state(folder: Path, model, optimizer, scheduler, scaler=None, sharded: bool = False) -> dict:
    folder = Path(folder)
    why = checkpoint_problem(folder)
    if why:
        raise LmforgeError(f"checkpoint {folder} cannot be used: {why}",
                           "resume from an earlier checkpoint, or pass --resume with no path to pick the latest complete one")
    sd = load_weights(folder)
    osd = torch.load(folder / "optimizer.pt", weights_only=True, map_location="cpu")
    by_name = all(isinstance(k, str) for k in osd.get("state", {}))
    if sharded != by_name and osd.get("state"):
        raise LmforgeError(f"checkpoint {folder} was written {'with' if by_name else 'without'} FSDP and cannot "
                           f"resume {'without' if by_name else 'with'} it",
                           "resume with the accelerate config the run started with")
    if sharded:
        load_full_state(model, optimizer, sd, osd)
        sd, osd = None, None
    missing, unexpected = model.load_state_dict(sd, strict=False) if sd is not None else ([], [])
    # Tied weights are saved once; anything else missing is a real mismatch.
    missing = [k for k in missing if not any(t in k for t in ("lm_head", "decoder", "embed"))]
    if missing or unexpected:
        raise LmforgeError(f"checkpoint {folder} does not match the model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}",
                           "resume with the same model and config the checkpoint was written with")
    if osd is not None:
        optimizer.load_state_dict(osd)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    if scaler is not None and (folder / "scaler.pt").exists():
        scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
    set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return json.loads((folder / "trainer_state.json").read_text())
