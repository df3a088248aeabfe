"""Experiment trackers: every log.jsonl record also goes to TensorBoard, MLflow, W&B or Trackio.

    train:
      report_to: [tensorboard, mlflow]     # or none; default: [tensorboard] -> runs/<name>/tb/

    tensorboard --logdir runs/             # then open http://localhost:6006
    mlflow ui --backend-store-uri mlruns   # MLflow writes to ./mlruns unless MLFLOW_TRACKING_URI is set

Scalars are named ``train/loss``, ``train/lr``, ``train/grad_norm``, ``train/tokens_per_s``,
``train/mfu``, ``train/peak_mem_mb``, ``eval/<metric>`` (during training, step 0 = before
training), ``final_eval/<metric>`` and ``test/<metric>`` (the final model). The resolved config
is logged as hyper-parameters. Only the main process opens trackers.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import netrc
import os
import time
from pathlib import Path
from typing import Any, Optional

from ..errors import LmforgeError

log = logging.getLogger("lmforge")

# tracker -> (module to import, what to pip install)
PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"),
            "wandb": ("wandb", "wandb"), "trackio": ("trackio", "trackio")}


def check_installed(names: list[str]) -> None:
    """Fail before training starts when a requested tracker's package is missing (one line, exit 2)."""
    for name in names:
        module, pip = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise LmforgeError(f"train.report_to lists {name}, but the {module} package is not installed",
                               f"pip install {pip} (or remove {name} from train.report_to)")


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"learning_rate": 1e-4}} -> {"train.learning_rate": 1e-4}; lists and None become text."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, bool) or isinstance(v, (int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v) if v is not None else "None"
    return out


def record_scalars(record: dict) -> dict[str, float]:
    """A log.jsonl record -> tracker scalars: eval_x -> eval/x, everything else numeric -> train/x."""
    out = {}
    for k, v in record.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"] = float(v)
    return out


# ----------------------------------------------------------------------------------- backends
class TensorBoard:
    name = "tensorboard"

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: Optional[int]):
        from torch.utils.tensorboard import SummaryWriter
        self.dir = run_dir / "tb"
        # purge_step: on resume, TensorBoard hides the events the crashed run logged after the checkpoint
        self.writer = SummaryWriter(log_dir=str(self.dir), purge_step=resume_step)
        self.hparams = {k: v for k, v in flatten(config).items()}
        self.metric_tags: set[str] = set()
        if not resume_step:
            import yaml
            self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "\n```", 0)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)
            if tag.startswith(("final_eval/", "test/")):
                self.metric_tags.add(tag)

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self, ok: bool) -> None:
        # The hyper-parameters go into the same event file (add_hparams would start a second run folder).
        from torch.utils.tensorboard.summary import hparams
        for summary in hparams(self.hparams, {t: 0.0 for t in sorted(self.metric_tags)}):
            self.writer.file_writer.add_summary(summary)
        self.writer.close()


class MLflow:
    name = "mlflow"

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: Optional[int], run_id=None):
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            # A local file store in ./mlruns (`mlflow ui` reads it). MLflow 3 asks for an opt-in to
            # the file store; the alternative (sqlite) takes ~10 s to create its tables.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            uri = (Path.cwd() / "mlruns").resolve().as_uri()
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        self.Metric = Metric
        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            exp_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "lmforge")
            exp = self.client.get_experiment_by_name(exp_name)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(exp_name)
            run = self.client.create_run(exp_id, run_name=run_name,
                                         tags={"lmforge.run_dir": str(run_dir.resolve()), "lmforge.task": config.get("task", "")})
            self.run_id = run.info.run_id
            params = [Param(k[:250], str(v)[:6000]) for k, v in flatten(config).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])

    def scalars(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])

    def text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.run_id, text, f"{tag}/step-{step}.txt")

    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED" if ok else "FAILED")


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandB:
    name = "wandb"

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: Optional[int], run_id=None):
        import wandb
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "lmforge"), name=run_name, config=config,
                              dir=str(run_dir), mode=mode, id=run_id, resume="allow" if run_id else None)
        self.run_id = getattr(self.run, "id", None)
        self.mode = mode
        if mode == "offline":
            log.info("wandb: offline mode (not logged in); `wandb sync %s/wandb/offline-run-*` uploads it later",
                     run_dir)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        pass  # W&B tables need a schema; the samples stay in log.jsonl

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


class Trackio:
    name = "trackio"

    def __init__(self, run_dir: Path, run_name: str, config: dict, resume_step: Optional[int], run_id=None):
        import trackio
        self.trackio = trackio
        self.run = trackio.init(project=os.environ.get("TRACKIO_PROJECT", "lmforge"), name=run_name, config=config)
        self.run_id = run_name

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.trackio.log(values, step=step)

    def text(self, tag: str, text: str, step: int) -> None:
        pass

    def close(self, ok: bool) -> None:
        self.trackio.finish()


BACKENDS = {"tensorboard": TensorBoard, "mlflow": MLflow, "wandb": WandB, "trackio": Trackio}


# ----------------------------------------------------------------------------------- the hub
class Trackers:
    """Fans every log record out to the open trackers. A tracker that fails mid-run is dropped
    with one warning: losing a dashboard must not lose the training run."""

    def __init__(self, backends: list):
        self.backends = backends

    @property
    def names(self) -> list[str]:
        return [b.name for b in self.backends]

    def _each(self, what: str, *args) -> None:
        for b in list(self.backends):
            try:
                getattr(b, what)(*args)
            except Exception as e:  # noqa: BLE001 - a dashboard failure must not stop training
                log.warning("%s stopped working (%s: %s); training goes on without it", b.name, type(e).__name__, e)
                self.backends.remove(b)

    def __call__(self, record: dict) -> None:
        """JsonLog listener: one log.jsonl record."""
        step = int(record.get("step", 0))
        if "samples" in record:
            text = "\n\n".join(s if isinstance(s, str) else "    " + json.dumps(s, ensure_ascii=False)
                               for s in record["samples"])
            self._each("text", "samples", text, step)
        values = record_scalars(record)
        if values:
            self._each("scalars", values, step)

    def log_metrics(self, metrics: dict, step: int, prefix: str) -> None:
        values = {f"{prefix}/{k}": float(v) for k, v in metrics.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if values:
            self._each("scalars", values, step)

    def close(self, ok: bool = True) -> None:
        self._each("close", ok)
        self.backends = []


def open_trackers(names: list[str], run_dir: Path, config: dict, resume_step: Optional[int] = None) -> Trackers:
    """Open the trackers named in train.report_to for this run (main process only).

    Run ids are kept in run_dir/trackers.json, so a resumed run continues the same MLflow / W&B run.
    """
    check_installed(names)
    run_dir = Path(run_dir)
    ids_file = run_dir / "trackers.json"
    ids = {}
    if resume_step is not None and ids_file.exists():
        try:
            ids = json.loads(ids_file.read_text())
        except ValueError:
            ids = {}
    backends = []
    for name in names:
        cls = BACKENDS[name]
        kwargs = {"run_id": ids.get(name)} if name in ("mlflow", "wandb") else {}
        try:
            backends.append(cls(run_dir, run_dir.name, config, resume_step, **kwargs))
        except LmforgeError:
            raise
        except Exception as e:  # noqa: BLE001
            raise LmforgeError(f"could not start the {name} tracker: {type(e).__name__}: {str(e).splitlines()[0][:300]}",
                               f"fix its settings, or remove {name} from train.report_to") from None
    ids.update({b.name: b.run_id for b in backends if getattr(b, "run_id", None)})
    if ids:
        ids_file.write_text(json.dumps(ids, indent=1))
    if backends:
        log.info("trackers: %s", ", ".join(f"tensorboard ({b.dir})" if b.name == "tensorboard" else
                                             f"mlflow ({b.uri})" if b.name == "mlflow" else b.name for b in backends))
    return Trackers(backends)
