"""The public Python API. The CLI only parses arguments and calls these.

    from lmforge import train, evaluate, predict
    result = train("examples/sentiment-minilm.yaml", overrides=["--train.max_steps", "20"])
    print(result.metrics["test"]["accuracy"])
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence, Union

from .config import Config, load_config
from .errors import LmforgeError
from .runfolder import (default_run_name, new_manifest, prepare_run_dir, read_json, write_json)

log = logging.getLogger("lmforge")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    config: Config


def quiet_libraries() -> None:
    """Library progress bars and info logs would drown lmforge's own output."""
    for noisy in ("transformers", "datasets", "accelerate", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import datasets
    from transformers.utils import logging as hf_logging
    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _as_config(config: Union[str, Path, Config, dict, None], overrides) -> Config:
    if isinstance(config, Config):
        if overrides:
            from .config import build_config, deep_merge, parse_overrides
            extra = parse_overrides(list(overrides)) if not isinstance(overrides, dict) else overrides
            return build_config(deep_merge(config.model_dump(), extra), "config + overrides")
        return config
    if isinstance(config, dict):
        from .config import build_config, deep_merge, parse_overrides
        raw = config
        if overrides:
            raw = deep_merge(raw, parse_overrides(list(overrides)) if not isinstance(overrides, dict) else overrides)
        return build_config(raw, "config dict")
    return load_config(config, list(overrides) if overrides and not isinstance(overrides, dict) else overrides)


def _file_logging(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger("lmforge").addHandler(handler)
    if logging.getLogger("lmforge").level == logging.NOTSET:
        logging.getLogger("lmforge").setLevel(logging.INFO)
    return handler


def latest_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest complete checkpoint of a run folder (cut-off ones are skipped with a warning)."""
    from .train.recovery import latest_checkpoint as latest
    return latest(Path(run_dir))


def train(config: Union[str, Path, Config, dict, None] = None, overrides: Optional[Sequence[str]] = None,
          resume: Union[bool, str, Path] = False, overwrite: bool = False, progress: bool = True,
          callbacks: Optional[Sequence] = None) -> TrainResult:
    """Train a model as the config says; returns the run folder and its final metrics.

    ``callbacks``: functions called with every log.jsonl record (on the main process).
    """
    from accelerate.utils import set_seed

    from .report import model_card, plot_losses, write_metrics
    from .tasks import get_task
    from .train.loop import Trainer, evaluate_split, make_accelerator
    from .train.progress import TrainProgress

    quiet_libraries()
    cfg = _as_config(config, overrides)
    if overwrite:
        cfg.output.overwrite = True
    if not cfg.output.output_dir:
        cfg.output.output_dir = default_run_name(cfg.task, cfg.model.name)
    run_dir = Path(cfg.output.output_dir)
    from .trackers import check_installed
    check_installed(cfg.train.report_to)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    if accelerator.num_processes > 1:
        # Every process must write to the main process's run folder (the default name has a timestamp).
        from accelerate.utils import broadcast_object_list
        cfg.output.output_dir = broadcast_object_list([cfg.output.output_dir])[0]
        run_dir = Path(cfg.output.output_dir)
        if not main:  # one copy of each log line
            logging.getLogger("lmforge").setLevel(logging.WARNING)
    resume_path: Optional[Path] = None
    created = not run_dir.exists() or (run_dir.is_dir() and not any(run_dir.iterdir())) or \
        (bool(cfg.output.overwrite) and not resume)
    if main:
        prepare_run_dir(run_dir, cfg.output.overwrite, bool(resume), [cfg.data.train, cfg.data.eval, cfg.data.test])
    accelerator.wait_for_everyone()
    if resume:
        from .train.recovery import resolve_resume
        if main:
            try:
                resume_path = resolve_resume(run_dir, resume)
            except LmforgeError:
                if created:  # the folder was made for this call: leave nothing behind
                    import shutil
                    shutil.rmtree(run_dir, ignore_errors=True)
                raise
        accelerator.wait_for_everyone()
        if not main:
            resume_path = Path(resume) if not isinstance(resume, bool) else latest_checkpoint(run_dir)
    handler = _file_logging(run_dir) if main else None
    manifest = new_manifest(cfg, str(accelerator.device), cfg.train.seed)
    trackers, lora_state, ok = None, None, False
    training = False  # once True, a failure leaves the run folder for --resume
    try:
        set_seed(cfg.train.seed)
        task = get_task(cfg.task)
        prep = task.setup(cfg, log)
        if cfg.peft is not None:
            from . import lora
            lora_state = lora.apply(cfg, prep, log)
            manifest["peft"] = {"trainable_parameters": lora_state.trainable, "total_parameters": lora_state.total,
                                "target_modules": lora_state.target_modules,
                                "modules_to_save": lora_state.modules_to_save}
        for note in prep.notes:
            log.info(note)
        manifest["data_fingerprints"] = prep.fingerprints
        manifest["data_summary"] = {k: v for k, v in prep.summary.items() if k != "lengths"}
        if prep.summary.get("lengths") is not None:  # the raw lengths can be millions: keep a histogram
            from .report import length_histogram
            manifest["data_summary"]["length_histogram"] = length_histogram(prep.summary["lengths"])
        if main:
            (run_dir / "config.yaml").write_text(cfg.to_yaml())
            write_json(run_dir / "manifest.json", manifest)
        trainer = Trainer(cfg, prep, run_dir, accelerator)
        manifest.update({"parameters": trainer.n_params, "total_steps": trainer.total_steps,
                         "effective_batch_size": cfg.train.per_device_train_batch_size *
                         cfg.train.gradient_accumulation_steps * accelerator.num_processes,
                         "num_processes": accelerator.num_processes})
        log.info("effective batch size %d = %d per device x %d accumulation steps x %d processes",
                 manifest["effective_batch_size"], cfg.train.per_device_train_batch_size,
                 cfg.train.gradient_accumulation_steps, accelerator.num_processes)
        from .train.memory import preflight
        est = preflight(trainer, log)
        if est is not None:
            manifest["memory_estimate"] = est.as_dict()
        training = True
        metrics: dict = {}
        if resume_path is not None:
            trainer.resume(resume_path)
            metrics = read_json(run_dir / "metrics.json", {}) or {}
        if main:
            from .trackers import open_trackers
            trackers = open_trackers(cfg.train.report_to, run_dir, cfg.model_dump(mode="json"),
                                     trainer.step if resume_path is not None else None)
            trainer.logw.listeners.append(trackers)
            trainer.logw.listeners.extend(callbacks or [])
        with TrainProgress(enabled=progress and main) as bar:
            if prep.eval is not None and len(prep.eval) and "before" not in metrics:
                metrics["before"] = trainer.evaluate(bar, desc="eval (before training)")
                log.info("before training: %s", _short(metrics["before"]))
                if trackers:
                    trackers.log_metrics(metrics["before"], 0, "eval")
                if main:
                    write_metrics(run_dir, metrics)
            result = trainer.fit(bar)
            if prep.eval is not None and len(prep.eval):
                metrics["eval"] = trainer.evaluate(bar, desc="eval (final model)")
            if prep.test is not None and len(prep.test):
                metrics["test"] = trainer.evaluate(bar, prep.test, desc="test")
        if trackers:
            trackers.log_metrics(metrics.get("eval", {}), result.steps, "final_eval")
            trackers.log_metrics(metrics.get("test", {}), result.steps, "test")
        metrics["train"] = {"loss": result.train_loss, "steps": result.steps, "epochs": result.epochs,
                            "runtime_s": round(result.runtime_s, 2), "tokens_per_s": round(result.tokens_per_s, 1),
                            "mfu": result.mfu, "peak_mem_mb": round(result.peak_mem_mb, 1),
                            "best_step": result.best_step, "best_metric": result.best_metric,
                            "stopped_early": result.stopped_early}
        if main:
            from .train.checkpoint import atomic_dir
            model = accelerator.unwrap_model(trainer.model)
            card = model_card(cfg, metrics, prep.summary, prep.notes)

            def write_model(d: Path):
                model.save_pretrained(d, safe_serialization=True)
                prep.tokenizer.save_pretrained(d)
                (d / "README.md").write_text(card)
            if lora_state is not None:
                from . import lora
                lora.save(lora_state, run_dir, prep.tokenizer, card, merge=cfg.peft.merge)
            else:
                atomic_dir(run_dir / "model", write_model, mark_complete=False)
            write_metrics(run_dir, metrics)
            plot_losses(run_dir)
            (run_dir / "README.md").write_text(card)
            manifest.update(status="finished", finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                            duration_s=round(time.time() - manifest["started_unix"], 1))
            write_json(run_dir / "manifest.json", manifest)
            _write_report(run_dir)  # after the manifest: the report shows the run as finished
        accelerator.wait_for_everyone()
        ok = True
        return TrainResult(run_dir, metrics, cfg)
    except BaseException as e:
        if main and created and not training and isinstance(e, (LmforgeError, KeyboardInterrupt)):
            # Nothing was trained: leave no half-made run folder behind.
            if handler:
                logging.getLogger("lmforge").removeHandler(handler)
                handler.close()
                handler = None
            import shutil
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if main and run_dir.exists():
            manifest.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                            error=str(e)[:2000], error_type=type(e).__name__,
                            traceback=None if isinstance(e, LmforgeError) else traceback.format_exc()[-4000:])
            write_json(run_dir / "manifest.json", manifest)
        raise
    finally:
        if trackers is not None:
            trackers.close(ok)
        if handler:
            logging.getLogger("lmforge").removeHandler(handler)
            handler.close()


def _write_report(run_dir: Path) -> None:
    """The HTML report, when the report module provides one."""
    from . import report
    try:
        report.write_html_report(run_dir)
    except Exception as e:  # the run itself succeeded; `lmforge report RUN` can retry
        log.warning("could not write %s/report.html: %s", run_dir, e)


def _short(m: dict) -> str:
    keys = ("loss", "perplexity", "perplexity_per_word", "accuracy", "mcc", "f1_macro")
    return ", ".join(f"{k} {m[k]:.4f}" for k in keys if isinstance(m.get(k), float))


# ----------------------------------------------------------------------------------- use
def resolve_model_dir(path: Union[str, Path]) -> Path:
    """A run folder (-> its model/) or a model folder, or a built-in alias."""
    p = Path(path).expanduser()
    if (p / "model" / "config.json").exists():
        return p / "model"
    if (p / "config.json").exists():
        return p
    if (p / "adapter" / "adapter_config.json").exists():  # a LoRA run without a merged model
        return p / "adapter"
    if (p / "adapter_config.json").exists():
        return p
    from .zoo import MODELS
    if str(path) in MODELS:
        return Path(MODELS[str(path)].locate())
    if p.exists():
        raise LmforgeError(f"{p} is neither a run folder nor a model folder (no config.json)",
                           "point at runs/<name> or runs/<name>/model")
    raise LmforgeError(f"model or run folder not found: {path}", "check the path")


def task_of(model_dir: Path) -> str:
    """Task of a saved model: from its run's config.yaml, else from its architecture."""
    run_cfg = model_dir.parent / "config.yaml"
    if model_dir.name in ("model", "adapter") and run_cfg.exists():
        import yaml
        task = (yaml.safe_load(run_cfg.read_text()) or {}).get("task")
        if task:
            return task
    from .lora import model_config_dict
    arch = " ".join(model_config_dict(model_dir).get("architectures") or [])
    if "SequenceClassification" in arch:
        return "classification"
    if "CausalLM" in arch or "LMHeadModel" in arch:
        return "causal-lm"
    if "MaskedLM" in arch:
        return "masked-lm"
    raise LmforgeError(f"cannot tell the task of the model in {model_dir} (architectures: {arch or 'none'})")


def prepare(config: Union[str, Path, Config, dict, None] = None, overrides: Optional[Sequence[str]] = None,
            progress: bool = True) -> dict:
    """Train the config's tokenizer (if asked) and tokenize its training data into the on-disk token
    cache, so that ``train`` with the same config starts at once (see lmforge.data.stream)."""
    from .data.stream import prepare as build
    quiet_libraries()
    return build(_as_config(config, overrides), progress=progress)


def evaluate(model: Union[str, Path], data: str, batch_size: int = 64, overrides: Optional[Sequence[str]] = None,
             progress: bool = True) -> dict:
    """Metrics of a trained model (run or model folder) on a labelled file or built-in dataset."""
    from .tasks import get_task
    from .train.loop import evaluate_split
    from .train.progress import TrainProgress

    quiet_libraries()
    model_dir = resolve_model_dir(model)
    task = get_task(task_of(model_dir))
    prep = task.eval_setup(model_dir, data, overrides)
    with TrainProgress(enabled=progress) as bar:
        return evaluate_split(prep.model, prep.eval, prep, batch_size, progress=bar, desc="eval")


def predict(model: Union[str, Path], texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
            output: Optional[str] = None, batch_size: int = 64, text_column: Optional[str] = None,
            text_pair_column: Optional[str] = None, progress: bool = True) -> list[dict]:
    """Label + class probabilities per text (classification models)."""
    from .infer import classify
    return classify(resolve_model_dir(model), texts=texts, input_file=input_file, output=output,
                    batch_size=batch_size, text_column=text_column, text_pair_column=text_pair_column,
                    progress=progress)


def generate(model: Union[str, Path], prompts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
             output: Optional[str] = None, **kwargs) -> list[dict]:
    """Continuations of prompts by a causal LM (run, folder or alias): greedy, or sampling with
    temperature / top_k / top_p; see lmforge.generate.generate for every option."""
    from .generate import generate as _generate
    quiet_libraries()
    return _generate(str(model), prompts=prompts, input_file=input_file, output=output, **kwargs)


def fill_mask(model: Union[str, Path], texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
              output: Optional[str] = None, top_k: int = 5, batch_size: int = 32,
              text_column: Optional[str] = None) -> list[dict]:
    """Top-k fillers (token, score) at every mask of each text, for a masked LM run, folder or alias."""
    from .fillmask import fill_mask as _fill
    quiet_libraries()
    return _fill(resolve_model_dir(model), texts=texts, input_file=input_file, output=output, top_k=top_k,
                 batch_size=batch_size, text_column=text_column)
