"""`lmforge doctor CONFIG`: everything that would stop or spoil a run, found before it starts.

    lmforge doctor examples/sentiment-minilm.yaml --train.per_device_train_batch_size 64

Checks, in order: the config; the previous run in output_dir (crashed? finished?); that the
model and data are available offline; the data (rows, empty texts, duplicates, label balance,
labels unseen in training); the tokenizer (what the task needs of it, chat template, vocabulary
against the model's embeddings); then the task's own preparation (the same `setup` training
runs): token length histogram, share truncated, the first training example decoded with its
labels, a memory estimate against what the machine has, and a 3-step probe for the time per step.

Exit code 0 when training would start, 2 with the list of problems otherwise. Warnings (duplicates,
imbalance, truncation) do not change the exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from ...config import Config, Permissions, resolve_config
from ...data.pipeline import describe
from ...errors import LmforgeError
from ...runtime import quiet_libraries
from ...tasks import get_task
from ...train.checkpoint import incomplete_checkpoints
from ...train.recovery import previous_run
from .data import check_data
from .model import check_model_and_tokenizer
from .output import DoctorReport, Out, err
from .prepared import check_prepared

__all__ = ["DoctorReport", "run_doctor"]


def run_doctor(config=None, overrides: Optional[Sequence[str]] = None, probe: bool = True,
               console: Optional[Console] = None, permissions: Permissions = Permissions()) -> DoctorReport:
    """Check a config before training; prints a report and returns it (problems, warnings, facts)."""
    quiet_libraries()
    report = DoctorReport()
    out = Out(console or Console(highlight=False, soft_wrap=True), report)
    out.section("config")
    try:
        cfg = resolve_config(config, list(overrides) if overrides else None)
    except LmforgeError as e:
        out.problem(err(e))
        return out.finish()
    out.ok(f"{config or 'the default recipe'}: task {cfg.task}, model {cfg.model.name or 'from_config'}, "
           f"train {describe(cfg.data.train)}")
    if cfg.output.output_dir:
        check_previous_run(out, cfg)
    before = len(report.problems)
    out.section("model and tokenizer (offline)")
    tok = check_model_and_tokenizer(out, get_task(cfg.task).model_check_config(cfg), permissions)
    out.section("data")
    readable = check_data(out, cfg)
    if len(report.problems) > before or not readable or tok is None:
        out.section("preparation")
        out.info("skipped: fix the problems above first (the later checks need the data and the model)")
        return out.finish()
    out.section("preparation (the task's own setup, as training runs it)")
    try:
        check_prepared(out, cfg, probe, report, permissions)
    except LmforgeError as e:
        out.problem(err(e))
    return out.finish()


def check_previous_run(out: Out, cfg: Config) -> None:
    """What the run folder already holds: a live run, a crashed one, a finished one, cut-off checkpoints."""
    run_dir = Path(cfg.output.output_dir)
    prev = previous_run(run_dir)
    if prev and prev["status"] == "alive":
        out.problem(prev["message"] + " — wait for it, or stop it before training into this folder")
    elif prev and prev["status"] == "crashed":
        out.warn(prev["message"] + f"; continue it with `lmforge train CONFIG --resume`; {prev['advice']}")
    elif prev and prev["status"] == "finished" and not cfg.output.overwrite:
        out.problem(f"{run_dir} already holds a finished run — pass --overwrite to replace it, or choose "
                    "another output.output_dir")
    elif prev and prev["status"] in ("failed", "interrupted"):
        out.warn(prev["message"] + " — continue with `lmforge train CONFIG --resume`")
    for folder, why in incomplete_checkpoints(run_dir / "checkpoints"):
        out.warn(f"checkpoint {folder} will be skipped: {why}")
