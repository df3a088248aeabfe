"""The training recipe: open the run folder, assemble (task setup, LoRA), train and evaluate, save.

    from lmforge.train.run import train
    result = train(resolve_config("examples/sentiment-minilm.yaml"))

Data flow: the config names a task; the task's `setup` reads and encodes the data and loads the
model (TaskParts); the Trainer runs the loop over them; the outputs (model/, metrics.json, loss.png,
report.html, README.md) are written at the end, each atomically. `open_run` records a failure or an
interruption in manifest.json, and removes a run folder that was made for a run that never started
training, so nothing left behind looks finished.
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from accelerate.utils import broadcast_object_list, set_seed

from ..config import Config, Permissions
from ..data.pipeline import sources_of
from ..errors import LmforgeError
from ..fs import atomic_dir, read_json, write_json, write_text
from ..metrics import LOG_METRICS, shown
from ..models import lora
from ..models.push import check_can_push, push_folder
from ..report import model_card, plot_losses, write_html_report, write_metrics
from ..report.plots import length_histogram
from ..tasks import get_task
from ..tasks.base import TaskParts, attach_metrics_function, load_metrics_function
from .checkpoint import full_state
from .evaluation import make_accelerator
from .loop import FitResult, Trainer
from .memory import preflight
from .progress import TrainProgress
from .recovery import latest_checkpoint, resolve_resume
from .runfolder import default_run_name, new_manifest, prepare_run_dir
from .trackers import check_installed, open_trackers

log = logging.getLogger("lmforge")



@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    config: Config


# ----------------------------------------------------------------------------------- the recipe
def train(cfg: Config, resume: Union[bool, str, Path] = False, progress: bool = True,
          callbacks: Optional[Sequence] = None, permissions: Permissions = Permissions()) -> TrainResult:
    """Train as the (resolved) config says; returns the run folder and its final metrics."""
    task = get_task(cfg.task)
    check_installed(cfg.train.report_to)
    if cfg.eval.metrics_function:
        load_metrics_function(cfg.eval.metrics_function)  # a wrong name fails here, before the run folder exists
    if cfg.output.push_to_hub:
        check_can_push(hub_repo_id(cfg))  # offline or not logged in: say so now, not after training
    accelerator = make_accelerator(cfg)
    cfg = _same_output_dir(cfg, accelerator)
    with open_run(cfg, accelerator, resume) as run:
        set_seed(cfg.train.seed)
        t_setup = time.perf_counter()
        parts, lora_state = assemble(cfg, task, run.manifest, permissions)
        run.manifest["setup_s"] = round(time.perf_counter() - t_setup, 2)  # load, encode (dpo: reference pass)
        if run.is_main:
            write_text(run.dir / "config.yaml", cfg.to_yaml())
            write_json(run.dir / "manifest.json", run.manifest)
        trainer = Trainer(cfg, parts, run.dir, accelerator)
        _describe_trainer(trainer, run.manifest)
        metrics: dict = {}
        if run.resume_from is not None:
            trainer.resume(run.resume_from)
            metrics = read_json(run.dir / "metrics.json", {}) or {}
        trackers = None
        if run.is_main:
            trackers = run.trackers = open_trackers(cfg.train.report_to, run.dir, cfg.model_dump(mode="json"),
                                                    trainer.step if run.resume_from is not None else None)
            trainer.logw.listeners.append(trackers)
            trainer.logw.listeners.extend(callbacks or [])
        # from the first step on, a failure leaves the run folder for --resume
        result = train_and_evaluate(trainer, parts, metrics, trackers, progress and run.is_main,
                                    on_first_step=lambda: setattr(run, "training", True))
        metrics["train"] = _train_metrics(result)
        weights = full_state(trainer.model)[0] if trainer.sharded else None  # FSDP: gathered by every process
        if run.is_main:
            save_outputs(cfg, run, trainer, parts, lora_state, metrics, weights)
        accelerator.wait_for_everyone()
        run.ok = True
    if cfg.output.push_to_hub and run.is_main:
        try:
            url = push_folder(run.dir, hub_repo_id(cfg), private=cfg.output.hub_private)
        except LmforgeError as e:  # the run is finished and saved: say how to push it later
            raise LmforgeError(f"the run finished in {run.dir}, but pushing it failed: {e.message}",
                               f"push it later with `lmforge push {run.dir} --repo-id {hub_repo_id(cfg)}`") from None
        log.info("pushed %s to %s", run.dir, url)
    return TrainResult(run.dir, metrics, cfg)


def hub_repo_id(cfg: Config) -> str:
    if not cfg.output.hub_model_id:
        raise LmforgeError("output.push_to_hub needs output.hub_model_id (the Hub repository, user/name)",
                           "set output.hub_model_id: your-name/model-name")
    return cfg.output.hub_model_id


def _same_output_dir(cfg: Config, accelerator) -> Config:
    """Every process writes to the main process's run folder (the default name has a timestamp)."""
    output_dir = cfg.output.output_dir or default_run_name(cfg.task, cfg.model.name)
    if accelerator.num_processes > 1:
        output_dir = broadcast_object_list([output_dir])[0]
        if not accelerator.is_main_process:  # one copy of each log line
            logging.getLogger("lmforge").setLevel(logging.WARNING)
    if output_dir == cfg.output.output_dir:
        return cfg
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"output_dir": output_dir})})


def assemble(cfg: Config, task, manifest: dict, permissions: Permissions):
    """The task's parts (data encoded, model loaded), with LoRA applied when the config asks; the
    manifest gets the data fingerprints and summary."""
    parts = attach_metrics_function(task.setup(cfg, log, permissions), cfg)
    if parts.metrics_function is not None:
        parts.notes.append(f"eval: your metrics from {cfg.eval.metrics_function} are merged into every evaluation")
    lora_state = None
    if cfg.peft is not None:
        lora_state = lora.apply(cfg, parts, log)
        manifest["peft"] = {"trainable_parameters": lora_state.trainable, "total_parameters": lora_state.total,
                            "target_modules": lora_state.target_modules, "modules_to_save": lora_state.modules_to_save}
    for note in parts.notes:
        log.info(note)
    manifest["data_fingerprints"] = parts.fingerprints
    manifest["data_summary"] = {k: v for k, v in parts.summary.items() if k != "lengths"}
    if parts.summary.get("lengths") is not None:  # the raw lengths can be millions: keep a histogram
        manifest["data_summary"]["length_histogram"] = length_histogram(parts.summary["lengths"])
    return parts, lora_state


def _describe_trainer(trainer: Trainer, manifest: dict) -> None:
    tc, accelerator = trainer.tc, trainer.accelerator
    manifest.update({"parameters": trainer.n_params, "total_steps": trainer.total_steps,
                     "effective_batch_size": trainer.plan.effective_batch, "num_processes": accelerator.num_processes,
                     "distributed_type": "FSDP2 (lmforge, CPU)" if trainer.cpu_fsdp else accelerator.distributed_type.value})
    log.info("effective batch size %d = %d per device x %d accumulation steps x %d processes",
             manifest["effective_batch_size"], tc.per_device_train_batch_size, tc.gradient_accumulation_steps,
             accelerator.num_processes)
    est = preflight(trainer, log)
    if est is not None:
        manifest["memory_estimate"] = est.as_dict()


def train_and_evaluate(trainer: Trainer, parts: TaskParts, metrics: dict, trackers, progress: bool,
                       on_first_step=None) -> FitResult:
    """Evaluate before training (unless a resumed run did), fit, then evaluate the final model on eval and test."""
    has_eval = parts.eval is not None and len(parts.eval) > 0
    # the before-training evaluation is capped (a seeded sample; the same one after a resume), and the final model
    # is scored on that sample too, so "before" and "after" are measured on the same items
    sample = parts.eval.sample(trainer.tc.before_eval_max_samples, trainer.tc.seed) if has_eval else None
    sampled = has_eval and len(sample) < len(parts.eval)
    with TrainProgress(enabled=progress) as bar:
        if has_eval and "before" not in metrics:
            if sampled:
                log.info("before training: evaluating a sample of %s of the %s eval items "
                         "(train.before_eval_max_samples; null evaluates them all)", f"{len(sample):,}",
                         f"{len(parts.eval):,}")
            metrics["before"] = trainer.evaluate(bar, sample, desc="eval (before training)")
            if sampled:
                metrics["before_sample"] = {"items": len(sample), "of": len(parts.eval)}
            log.info("before training: %s", short_metrics(metrics["before"]))
            if trainer.best_metric_name not in metrics["before"]:  # said before step 1, not at the first evaluation
                names = ", ".join(k for k, v in metrics["before"].items() if isinstance(v, (int, float)))
                raise LmforgeError(f"train.metric_for_best_model '{trainer.best_metric_name}' is not an eval metric "
                                   f"of this task", f"choose one of: {names}")
            if trackers:
                trackers.log_metrics(metrics["before"], 0, "eval")
            if trainer.is_main:
                write_metrics(trainer.run_dir, metrics)
        if on_first_step is not None:
            on_first_step()
        result = trainer.fit(bar)
        if has_eval:
            metrics["eval"] = trainer.evaluate(bar, desc="eval (final model)")
            if sampled and "before_sample" in metrics:
                metrics["after_on_sample"] = trainer.evaluate(bar, sample, desc="eval (final model, before's sample)")
        if parts.test is not None and len(parts.test):
            metrics["test"] = trainer.evaluate(bar, parts.test, desc="test")
    for split in ("eval", "test"):
        if metrics.get(split):
            log.info("final %s: %s", split, short_metrics(metrics[split]))
    if trackers:
        trackers.log_metrics(metrics.get("eval", {}), result.steps, "final_eval")
        trackers.log_metrics(metrics.get("test", {}), result.steps, "test")
    return result


def _train_metrics(result: FitResult) -> dict:
    return {"loss": result.train_loss, "steps": result.steps, "epochs": result.epochs,
            "runtime_s": round(result.runtime_s, 2), "eval_s": round(result.eval_s, 2),
            "tokens_per_s": round(result.tokens_per_s, 1),
            "mfu": result.mfu, "peak_mem_mb": round(result.peak_mem_mb, 1),
            "best_step": result.best_step, "best_metric": result.best_metric, "stopped_early": result.stopped_early}


def save_outputs(cfg: Config, run: "OpenRun", trainer: Trainer, parts: TaskParts, lora_state, metrics: dict,
                 weights: Optional[dict] = None) -> None:
    """model/ (or adapter/), metrics.json, loss.png, the model card, the finished manifest, report.html;
    `weights`: the full state dict gathered under FSDP."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    card = model_card(cfg, metrics, parts.summary, parts.notes)

    def write_model(d: Path):
        model.save_pretrained(d, safe_serialization=True, **({"state_dict": weights} if weights else {}))
        parts.tokenizer.save_pretrained(d)
        if parts.save_files is not None:
            parts.save_files(d)
        (d / "README.md").write_text(card)
    if lora_state is not None:
        lora.save(lora_state, run.dir, parts.tokenizer, card, merge=cfg.peft.merge)
        for d in (run.dir / "adapter", run.dir / "model"):  # the adapter too: `lmforge embed` reads its spec there
            if parts.save_files is not None and d.is_dir():
                parts.save_files(d)
    else:
        atomic_dir(run.dir / "model", write_model)
    write_metrics(run.dir, metrics)
    plot_losses(run.dir)
    write_text(run.dir / "README.md", card)
    run.manifest.update(status="finished", finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        duration_s=round(time.time() - run.manifest["started_unix"], 1))
    write_json(run.dir / "manifest.json", run.manifest)
    try:  # after the manifest: the report shows the run as finished
        write_html_report(run.dir)
    except Exception as e:  # the run itself succeeded; `lmforge report RUN` can retry
        log.warning("could not write %s/report.html: %s", run.dir, e)


def short_metrics(m: dict) -> str:
    return ", ".join(f"{k} {m[k]:.4f}" for k in shown(LOG_METRICS, m) if isinstance(m.get(k), float))


# ----------------------------------------------------------------------------------- the run folder
@dataclass
class OpenRun:
    dir: Path
    is_main: bool
    manifest: dict
    resume_from: Optional[Path] = None
    created: bool = False
    training: bool = False  # once True, a failure leaves the run folder for --resume
    ok: bool = False
    trackers: object = None


@contextmanager
def open_run(cfg: Config, accelerator, resume) -> Iterator[OpenRun]:
    """Create (or reuse, with --resume) the run folder and log to its train.log. On failure: a run that
    never started training leaves nothing behind (when the folder was made for it); one that did is
    marked failed or interrupted in manifest.json, so nothing looks finished."""
    run_dir = Path(cfg.output.output_dir)
    is_main = accelerator.is_main_process
    created = not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())) or \
        (bool(cfg.output.overwrite) and not resume)
    if is_main:
        prepare_run_dir(run_dir, cfg.output.overwrite, resume if resume else False,
                        [s.path for spec in (cfg.data.train, cfg.data.eval, cfg.data.test) for s in sources_of(spec)])
    accelerator.wait_for_everyone()
    resume_from = _resume_point(run_dir, resume, is_main, created, accelerator) if resume else None
    run = OpenRun(run_dir, is_main, new_manifest(cfg, str(accelerator.device), cfg.train.seed), resume_from, created)
    handler = _file_logging(run_dir) if is_main else None
    try:
        yield run
    except BaseException as e:
        if is_main and created and not run.training and isinstance(e, (Exception, KeyboardInterrupt)):
            _close_handler(handler)  # nothing was trained: leave no half-made run folder behind
            handler = None
            if run.trackers is not None:  # their writer threads hold files in the folder
                run.trackers.close(False)
                run.trackers = None
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        disk = disk_error(e, run_dir)
        if is_main and run_dir.exists():
            run.manifest.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                                error=str(disk or e)[:2000], error_type=type(e).__name__,
                                traceback=None if isinstance(e, LmforgeError) else traceback.format_exc()[-4000:])
            try:
                write_json(run_dir / "manifest.json", run.manifest)
            except OSError:  # the disk that is full: the manifest keeps its last good state
                pass
        if disk is not None:
            raise disk from None
        raise
    finally:
        if run.trackers is not None:
            run.trackers.close(run.ok)
        _close_handler(handler)


DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)


def disk_error(e: BaseException, run_dir: Path) -> Optional[LmforgeError]:
    """A full, read-only or unwritable disk met while writing the run (a checkpoint, best/, model/, a log): one
    line naming the folder and the last good checkpoint (every checkpoint is written under a temporary name and
    renamed, so it is intact), instead of a traceback."""
    text = str(e)
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        why = e.strerror or text
    elif type(e).__name__ == "SafetensorError" and ("No space left" in text or "Read-only" in text):
        why = "No space left on device" if "No space left" in text else "Read-only file system"
    else:
        return None
    last = latest_checkpoint(run_dir) if run_dir.exists() else None
    return LmforgeError(f"cannot write into {run_dir}: {why}",
                        "free some space (or choose a writable output.output_dir), then rerun with --resume" +
                        (f"; the last good checkpoint is {last}" if last else "; no checkpoint was saved yet"))


def _resume_point(run_dir: Path, resume, is_main: bool, created: bool, accelerator) -> Optional[Path]:
    path = None
    if is_main:
        try:
            path = resolve_resume(run_dir, resume)
        except LmforgeError:
            if created:  # the folder was made for this call: leave nothing behind
                shutil.rmtree(run_dir, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()
    if not is_main:
        path = Path(resume) if not isinstance(resume, bool) else latest_checkpoint(run_dir)
    return path


def _file_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("lmforge").addHandler(handler)
    if logging.getLogger("lmforge").level == logging.NOTSET:
        logging.getLogger("lmforge").setLevel(logging.INFO)
    return handler


def _close_handler(handler: Optional[logging.Handler]) -> None:
    if handler is not None:
        logging.getLogger("lmforge").removeHandler(handler)
        handler.close()
