"""After a crash: what happened to the previous run, and where to resume from.

    lmforge train CONFIG --resume          # the latest complete checkpoint of output_dir
    lmforge train CONFIG --resume PATH     # a given checkpoints/step-N folder
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

from ..errors import LmforgeError
from ..fs import JsonLog, read_json, recorded_process_alive, remove_stale_temporaries
from ..tasks import get_task
from . import checkpoint as ckpt

log = logging.getLogger("lmforge")

def oom_advice(task_name: Optional[str]) -> str:
    """What to change after a run that was probably killed for memory, naming the keys its task reads."""
    try:
        length_key = get_task(str(task_name)).length_key
    except LmforgeError:  # an unknown task in an old manifest
        length_key = "data.block_size (data.max_length for classification)"
    return ("if it ran out of memory: lower train.per_device_train_batch_size (raise "
            f"train.gradient_accumulation_steps to keep the effective batch), lower {length_key}, or set "
            "train.gradient_checkpointing: true; `lmforge doctor CONFIG` estimates the memory a config needs")


def previous_run(run_dir: Path) -> Optional[dict]:
    """Status of the run recorded in run_dir/manifest.json: None, or a dict with 'status' in
    running (a live process writes there now), crashed (ended without a clean exit), interrupted,
    failed, finished; plus 'message' for the first three."""
    m = read_json(Path(run_dir) / "manifest.json", None)
    if not isinstance(m, dict) or "status" not in m:
        return None
    out = {"status": m["status"], "pid": m.get("pid"), "started": m.get("started"), "manifest": m}
    if m["status"] == "running":
        if recorded_process_alive(m):
            out["status"] = "alive"
            out["message"] = (f"another process (pid {m['pid']}, started {m.get('started')}) is still training "
                              f"into {run_dir}")
            return out
        out["status"] = "crashed"
        logged = JsonLog(Path(run_dir) / "log.jsonl").read() if (Path(run_dir) / "log.jsonl").exists() else []
        steps = [r["step"] for r in logged if "loss" in r and isinstance(r.get("loss"), (int, float))]
        mems = [r["peak_mem_mb"] for r in logged if isinstance(r.get("peak_mem_mb"), (int, float))]
        last = f", last logged step {steps[-1]}" if steps else ", before its first logged step"
        mem = f", peak memory {mems[-1]:.0f} MB" if mems else ""
        out["message"] = (f"the previous run in {run_dir} (pid {m.get('pid')}, started {m.get('started')}{last}{mem}) "
                          "ended without a clean exit: it was killed (out of memory? see `dmesg | grep -i oom`), "
                          "or the machine stopped")
        out["advice"] = oom_advice(m.get("task"))
    elif m["status"] == "interrupted":
        out["message"] = f"the previous run in {run_dir} was interrupted ({m.get('error', '')[:200]})"
    elif m["status"] == "failed":
        out["message"] = f"the previous run in {run_dir} failed: {m.get('error', '')[:300]}"
    return out


def report_incomplete(root: Path, remove_temporary: bool = False) -> list[Path]:
    """Warn about cut-off checkpoint folders (and delete leftover temporary ones when asked)."""
    bad = ckpt.incomplete_checkpoints(root)
    for folder, why in bad:
        log.warning("skipping checkpoint %s: %s", folder, why)
        if remove_temporary and folder.name.startswith((".tmp-", ".old-")):
            shutil.rmtree(folder, ignore_errors=True)
    return [f for f, _ in bad]


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    report_incomplete(Path(run_dir) / "checkpoints")
    found = ckpt.list_checkpoints(Path(run_dir) / "checkpoints")
    return found[-1] if found else None


def resolve_resume(run_dir: Path, resume) -> Optional[Path]:
    """The checkpoint a resumed run starts from (None = from the beginning); says what it finds."""
    run_dir = Path(run_dir)
    prev = previous_run(run_dir)
    if prev and prev["status"] == "alive":
        raise LmforgeError(prev["message"], f"wait for it to finish or stop it (kill {prev['pid']}) before resuming")
    if prev and prev["status"] == "crashed":
        log.warning("%s; resuming. %s", prev["message"], prev["advice"][0].upper() + prev["advice"][1:])
    root = run_dir / "checkpoints"
    report_incomplete(root, remove_temporary=True)
    for what in remove_stale_temporaries(run_dir):  # e.g. a final model write that was killed
        log.info("left by the interrupted run: %s", what)
    if resume is True or resume is None:
        path = None
        for candidate in reversed(ckpt.list_checkpoints(root)):  # newest first, contents verified
            why = ckpt.checkpoint_problem(candidate, verify=True)
            if why is None:
                path = candidate
                break
            log.warning("skipping checkpoint %s: %s; trying the one before it", candidate, why)
    else:
        path = Path(resume).expanduser()
        if not path.exists():
            raise LmforgeError(f"checkpoint to resume from not found: {path}",
                               "pass --resume with no path to continue from the latest complete checkpoint of output_dir")
        if not (path / "trainer_state.json").exists() and (path / "checkpoints").is_dir():
            report_incomplete(path / "checkpoints")
            found = ckpt.list_checkpoints(path / "checkpoints")
            if not found:
                raise LmforgeError(f"{path} has no complete checkpoint", "resume without a path to start over")
            path = found[-1]
        why = ckpt.checkpoint_problem(path, verify=True)
        if why:
            raise LmforgeError(f"checkpoint {path} cannot be used: {why}",
                               "pass --resume with no path to continue from the latest complete checkpoint")
        # Later checkpoints belong to the trajectory being abandoned: a later plain --resume must not pick them.
        mine = ckpt.step_of(path)
        if mine is not None and path.parent.resolve() == root.resolve():
            for later in ckpt.list_checkpoints(root):
                if ckpt.step_of(later) > mine:
                    log.warning("removing %s: it comes after the checkpoint being resumed from", later)
                    shutil.rmtree(later, ignore_errors=True)
    if path is None:
        if root.exists() or (run_dir / "log.jsonl").exists():
            log.warning("no complete checkpoint in %s: starting from the beginning", run_dir)
        start_over(run_dir)
    else:
        log.info("resuming from %s", path)
    return path


def start_over(run_dir: Path) -> None:
    """A resume with nothing to resume from: drop what the cut-off run logged, so it is not logged twice."""
    for name in ("log.jsonl", "metrics.json"):
        (Path(run_dir) / name).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / "checkpoints" / "best", ignore_errors=True)
