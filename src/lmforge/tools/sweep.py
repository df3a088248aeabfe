"""Hyper-parameter search on Optuna: every trial is a normal run folder under the sweep folder.

    lmforge sweep examples/sentiment-minilm.yaml \\
        --param train.learning_rate=loguniform:1e-5:1e-3 \\
        --param train.per_device_train_batch_size=choice:8,16 \\
        --trials 8 --metric eval.accuracy --direction maximize

Parameter forms: ``loguniform:LO:HI``, ``uniform:LO:HI``, ``int:LO:HI``, ``choice:A,B,C`` (values
typed as YAML: numbers, true/false, text). Trials report every evaluation during training to
Optuna, and a trial whose metric falls below the median of the earlier trials at the same step
is pruned (stopped early; its folder stays, marked ``pruned``). The sweep folder ends with:

    sweep/trial-000/ ...      one run folder per trial (config.yaml, log.jsonl, model/, ...)
    sweep/summary.csv|.md     trial, state, parameters, metric, run folder
    sweep/best_config.yaml    the best trial's full config: `lmforge train sweep/best_config.yaml`
    sweep/optuna.journal      the study (rerun the same command with the same --output-dir to add trials)
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml

from ..config import Permissions, build_config, parse_value, resolve_config
from ..errors import LmforgeError, did_you_mean
from ..fs import check_output_dir, read_json, write_json, write_text
from ..metrics import higher_is_better
from ..runtime import quiet_libraries
from ..train.run import train
from ..train.runfolder import default_run_name

log = logging.getLogger("lmforge")

KINDS = ("loguniform", "uniform", "int", "choice")


@dataclass
class ParamSpec:
    key: str  # dotted config key, e.g. train.learning_rate
    kind: str
    low: Any = None
    high: Any = None
    choices: list = field(default_factory=list)

    def suggest(self, trial):
        if self.kind == "loguniform":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.key, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high)
        return trial.suggest_categorical(self.key, self.choices)

    def example(self):
        return self.choices[0] if self.kind == "choice" else self.low


def _number(text: str, spec: str, integer: bool = False):
    try:
        value = float(text)
    except ValueError:
        raise LmforgeError(f"--param {spec}: '{text}' is not a number") from None
    if not math.isfinite(value):
        raise LmforgeError(f"--param {spec}: '{text}' is not a finite number", "give finite bounds, e.g. 1e-5:1e-3")
    if integer:
        if not value.is_integer():
            raise LmforgeError(f"--param {spec}: '{text}' is not an integer")
        return int(value)
    return value


def parse_param(spec: str) -> ParamSpec:
    """``train.learning_rate=loguniform:1e-5:1e-3`` -> ParamSpec."""
    if "=" not in spec:
        raise LmforgeError(f"--param '{spec}' has no '='", "write --param section.key=KIND:ARGS, "
                           "e.g. train.learning_rate=loguniform:1e-5:1e-3")
    key, _, rhs = spec.partition("=")
    key = key.strip().removeprefix("--")
    kind, _, args = rhs.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise LmforgeError(f"--param {spec}: unknown kind '{kind}'.{did_you_mean(kind, KINDS)}",
                           f"kinds: {', '.join(KINDS)} (e.g. loguniform:1e-5:1e-3, choice:8,16)")
    if kind == "choice":
        choices = [parse_value(c.strip()) for c in args.split(",") if c.strip()]
        if not choices:
            raise LmforgeError(f"--param {spec}: choice needs values", "e.g. choice:8,16,32")
        return ParamSpec(key, kind, choices=choices)
    parts = args.split(":")
    if len(parts) != 2:
        raise LmforgeError(f"--param {spec}: {kind} needs LOW:HIGH", f"e.g. {key}={kind}:1e-5:1e-3")
    low, high = (_number(p, spec, integer=kind == "int") for p in parts)
    if not low < high:
        raise LmforgeError(f"--param {spec}: LOW must be below HIGH")
    if kind == "loguniform" and low <= 0:
        raise LmforgeError(f"--param {spec}: loguniform needs LOW > 0")
    return ParamSpec(key, kind, low, high)


def set_key(raw: dict, key: str, value) -> dict:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LmforgeError(f"--param {key}: '{part}' is not a config section")
    node[parts[-1]] = value
    return raw


def parse_metric(metric: str, direction: Optional[str]) -> tuple[str, str, str]:
    """``eval.accuracy`` -> (split, name, direction); direction inferred from the name when absent."""
    split, _, name = metric.partition(".")
    if not name:
        split, name = "eval", split
    if split not in ("eval", "test"):
        raise LmforgeError(f"--metric {metric}: the split must be eval or test", "e.g. --metric eval.accuracy")
    if direction is None:
        direction = "minimize" if higher_is_better(name) is False else "maximize"
    if direction not in ("minimize", "maximize"):
        raise LmforgeError(f"--direction must be minimize or maximize, got '{direction}'")
    return split, name, direction


class PruneOnEval:
    """api.train callback: reports each evaluation of the metric to the trial; prunes poor trials."""

    def __init__(self, trial, name: str):
        self.trial, self.key = trial, f"eval_{name}"

    def __call__(self, record: dict) -> None:
        value = record.get(self.key)
        if value is None or "step" not in record or not isinstance(value, (int, float)) or math.isnan(value):
            return
        self.trial.report(float(value), int(record["step"]))
        if self.trial.should_prune():
            import optuna
            raise optuna.TrialPruned(f"{self.key} = {value:.4f} at step {record['step']} is below the median")


@dataclass
class SweepResult:
    sweep_dir: Path
    best_value: Optional[float]
    best_params: dict
    best_run_dir: Optional[Path]
    rows: list[dict]


def sweep(config: Union[str, Path, dict, None], params: Sequence[str], trials: int = 10, metric: str = "eval.loss",
          direction: Optional[str] = None, output_dir: Optional[str] = None, overrides: Optional[Sequence[str]] = None,
          pruner: str = "median", seed: Optional[int] = None, progress: bool = False,
          permissions: Permissions = Permissions()) -> SweepResult:
    """Run ``trials`` trials of Optuna's TPE sampler over ``params``; returns the best run and a table."""

    quiet_libraries()
    if trials <= 0:
        raise LmforgeError(f"--trials must be positive, got {trials}")
    if not params:
        raise LmforgeError("nothing to search over", "give one or more --param section.key=KIND:ARGS")
    specs = [parse_param(p) for p in params]
    split, name, direction = parse_metric(metric, direction)
    base = resolve_config(config, overrides)
    base_raw = base.model_dump(mode="json")
    for spec in specs:  # a wrong key or value fails now, not in trial 1 after the data is loaded
        if spec.key.startswith("output."):
            raise LmforgeError(f"--param {spec.key}: output settings are set by the sweep")
        build_config(set_key(copy.deepcopy(base_raw), spec.key, spec.example()), f"--param {spec.key}")
    if split == "eval" and base.train.eval_strategy == "no" and pruner != "none":
        log.warning("train.eval_strategy is 'no': trials report no intermediate metrics, so none is pruned")
    sweep_dir = check_output_dir(output_dir or default_run_name(base.task, base.model.name).replace(
        "runs/", "runs/sweep-", 1), "sweep output folder")
    sweep_dir.mkdir(parents=True, exist_ok=True)

    study = _study(sweep_dir, direction, base.train.seed if seed is None else seed, pruner)
    log.info("sweep: %d trials over %s, %s %s; folder %s", trials, ", ".join(s.key for s in specs),
             direction, f"{split}.{name}", sweep_dir)
    fatal: list[LmforgeError] = []  # a mistake every trial would repeat: stop the sweep
    failures: list[str] = []  # why each failed trial failed
    objective = _objective(base_raw, specs, sweep_dir, split, name, progress, permissions, fatal, failures)
    try:
        study.optimize(objective, n_trials=trials, catch=(LmforgeError,), gc_after_trial=True)
    except KeyboardInterrupt:
        log.warning("sweep interrupted: writing the summary of the trials so far")
    result = summarize(study, sweep_dir, specs, f"{split}.{name}", direction)
    if fatal:
        raise fatal[0]
    if failures and not any(r["state"] == "complete" for r in result.rows):
        raise LmforgeError(f"all {len(failures)} trials of the sweep in {sweep_dir} failed; the first: {failures[0]}",
                           "fix that error (try the base config alone with lmforge train), then sweep again")
    return result


def _study(sweep_dir: Path, direction: str, seed: int, pruner: str):
    """The Optuna study, in a journal file in the sweep folder (a second call with the folder adds trials)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    return optuna.create_study(
        study_name="lmforge", storage=storage, load_if_exists=True, direction=direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0) if pruner == "median"
        else optuna.pruners.NopPruner())


def _objective(base_raw: dict, specs: list, sweep_dir: Path, split: str, name: str, progress: bool,
               permissions: Permissions, fatal: list, failures: list):
    """The function Optuna calls per trial: the config with the trial's values, trained in its own run folder."""
    import optuna

    def objective(trial) -> float:
        raw = copy.deepcopy(base_raw)
        values = {spec.key: spec.suggest(trial) for spec in specs}
        for key, value in values.items():
            set_key(raw, key, value)
        run_dir = sweep_dir / f"trial-{trial.number:03d}"
        raw["output"] = {"output_dir": str(run_dir), "overwrite": True}
        trial.set_user_attr("run_dir", str(run_dir))
        shown = ", ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in values.items())
        start = time.perf_counter()
        try:
            result = train(resolve_config(raw), progress=progress, permissions=permissions,
                           callbacks=[PruneOnEval(trial, name)] if split == "eval" else None)
        except optuna.TrialPruned as e:
            _mark(run_dir, "pruned", str(e))
            log.info("trial %d (%s): pruned, %s", trial.number, shown, e)
            raise
        except LmforgeError as e:
            log.warning("trial %d (%s) failed: %s", trial.number, shown, e.message)
            failures.append(e.message)
            raise
        except Exception as e:  # noqa: BLE001 - a trial's crash is that trial's failure, said in one line
            message = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log.warning("trial %d (%s) failed: %s", trial.number, shown, message)
            failures.append(message)
            raise LmforgeError(message) from None
        got = result.metrics.get(split) or {}
        if not isinstance(got.get(name), (int, float)):
            avail = [f"{split}.{k}" for k, v in got.items() if isinstance(v, (int, float))]
            fatal.append(LmforgeError(f"--metric {split}.{name} is not a metric of this run",
                                      f"choose one of: {', '.join(avail) or 'none (no ' + split + ' data?)'}"))
            trial.study.stop()
            raise fatal[-1]
        value = float(got[name])
        log.info("trial %d (%s): %s.%s %.4f in %.0f s", trial.number, shown, split, name, value,
                 time.perf_counter() - start)
        return value

    return objective


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _mark(run_dir: Path, status: str, reason: str) -> None:
    path = run_dir / "manifest.json"
    manifest = read_json(path, None)
    if manifest is not None:
        manifest.update(status=status, error=reason, error_type=None, traceback=None)
        write_json(path, manifest)


def _best_trial(done: list, direction: str):
    """The best complete trial; a tie on the metric goes to the lower eval loss (then the earlier trial)."""
    if not done:
        return None
    top = (max if direction == "maximize" else min)(t.value for t in done)
    tied = [t for t in done if t.value == top]

    def eval_loss(t) -> float:
        run = t.user_attrs.get("run_dir")
        loss = ((read_json(Path(run) / "metrics.json", {}) or {}).get("eval") or {}).get("loss") if run else None
        return float(loss) if isinstance(loss, (int, float)) else float("inf")
    return min(tied, key=lambda t: (eval_loss(t), t.number))


def summarize(study, sweep_dir: Path, specs: list[ParamSpec], metric: str, direction: str) -> SweepResult:
    """summary.csv / summary.md / best_config.yaml / sweep.json from the study's trials."""
    import optuna
    import pandas as pd

    rows = []
    for t in study.trials:
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        last = max(t.intermediate_values) if t.intermediate_values else None
        rows.append({"trial": t.number, "state": t.state.name.lower(),
                     **{s.key: t.params.get(s.key) for s in specs},
                     metric: t.value if t.state == optuna.trial.TrialState.COMPLETE else None,
                     "last_reported": t.intermediate_values.get(last) if last is not None else None,
                     "seconds": round(dur, 1) if dur is not None else None, "run_dir": t.user_attrs.get("run_dir")})
    df = pd.DataFrame(rows)
    df.to_csv(sweep_dir / "summary.csv", index=False)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = _best_trial(done, direction)
    lines = [f"# sweep: {metric} ({direction})", "",
             "| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    for r in rows:
        mark = " **best**" if best is not None and r["trial"] == best.number else ""
        lines.append("| " + " | ".join(_fmt(r[c]) if r[c] is not None else "-" for c in df.columns) + mark + " |")
    write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    best_run = Path(best.user_attrs["run_dir"]) if best is not None else None
    if best_run is not None and (best_run / "config.yaml").exists():
        cfg = yaml.safe_load((best_run / "config.yaml").read_text())
        cfg["output"] = {"output_dir": None, "overwrite": False}
        header = (f"# best of {len(rows)} trials in {sweep_dir}: trial {best.number}, {metric} = {best.value:.6g}\n"
                  f"# run folder: {best_run}\n")
        write_text(sweep_dir / "best_config.yaml", header + yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    write_json(sweep_dir / "sweep.json", {
        "metric": metric, "direction": direction, "params": [s.__dict__ for s in specs],
        "trials": len(rows), "complete": len(done),
        "pruned": sum(r["state"] == "pruned" for r in rows), "failed": sum(r["state"] == "fail" for r in rows),
        "best": {"trial": best.number, "value": best.value, "params": best.params, "run_dir": str(best_run)}
        if best is not None else None})
    return SweepResult(sweep_dir, best.value if best else None, dict(best.params) if best else {}, best_run, rows)
