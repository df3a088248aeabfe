"""The doctor's checks on the task's own preparation (the same `setup` training runs): lengths, the
first training example decoded with its labels, memory against the machine, and a 3-step probe."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from accelerate.utils import set_seed

from ...config import Config, Permissions
from ...data.batching import epoch_batches
from ...errors import LmforgeError
from ...tasks import get_task
from ...tasks.base import TaskParts, clip
from ...train.evaluation import make_accelerator
from ...train.loop import Trainer
from ...train.memory import MB, estimate_for
from ...train.perf import peak_memory_mb
from ...train.steps import plan_steps
from .model import model_vocab
from .output import Collect, DoctorReport, Out, err


def check_prepared(out: Out, cfg: Config, probe: bool, report: DoctorReport, permissions: Permissions) -> None:
    set_seed(cfg.train.seed)
    parts = _setup_collecting_logs(out, cfg, permissions)
    if parts is None:
        return
    tok = parts.tokenizer
    vocab = model_vocab(parts.model)
    if vocab is not None and len(tok) > vocab:
        out.problem(f"the tokenizer has {len(tok):,} tokens but the model's embeddings only {vocab:,} — "
                    "token ids beyond the embeddings crash training; use the model's own tokenizer")
    lengths = list(parts.train.lengths) if parts.train is not None else []
    if not lengths:
        out.problem("no training examples after preparation")
        return
    _lengths_section(out, parts, lengths, report)
    if parts.summary.get("preflight"):
        _preflight_section(out, cfg, parts, report)
    out.section("first training example")
    try:
        show_example(out, parts, cfg)
    except Exception as e:  # showing the example must not hide the rest of the report
        out.info(f"(could not decode the first example: {e})")
    out.section("memory and time")
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-doctor-"))
    try:
        _memory_and_time(out, cfg, parts, probe, report, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _setup_collecting_logs(out: Out, cfg: Config, permissions: Permissions) -> Optional[TaskParts]:
    """The task's setup, with what it logs shown in the report (not on the console twice)."""
    collect = Collect()
    lg = logging.getLogger("lmforge")
    others = list(lg.handlers)
    for h in others:
        lg.removeHandler(h)
    lg.addHandler(collect)
    old_level = lg.level
    lg.setLevel(logging.INFO)
    try:
        parts = get_task(cfg.task).setup(cfg, lg, permissions)
    except LmforgeError as e:
        out.problem(err(e))
        return None
    finally:
        lg.removeHandler(collect)
        lg.setLevel(old_level)
        for h in others:
            lg.addHandler(h)
    for rec in collect.records:
        (out.warn if rec.levelno >= logging.WARNING else out.info)(rec.getMessage())
    return parts


def _preflight_section(out: Out, cfg: Config, parts: TaskParts, report: DoctorReport) -> None:
    """Online RL: the groups the starting model samples (the same preflight training runs before step 1)."""
    p = parts.summary["preflight"]
    report.facts["preflight"] = p
    out.section(f"preflight: {p['prompts']} train prompts x {p['group_size']} completions, the starting model")
    for name, r in p["rewards"].items():
        line = f"reward {name}: mean {r['mean']}, std {r['std']}, min {r['min']}, max {r['max']}"
        (out.warn if r["none"] else out.info)(line + (f"; None for {r['none']} completions (the function does not "
                                                      "apply to them)" if r["none"] else ""))
    flat = f"{p['flat_groups']} of {p['prompts']} groups have equal rewards (no learning signal)"
    (out.warn if p["flat_share"] >= 0.5 else out.info)(
        flat + (" — raise grpo.temperature or grpo.num_generations, or give partial credit" if p["flat_share"] >= 0.5
                else ""))
    (out.warn if p["truncated_share"] >= 0.5 else out.info)(
        f"{100 * p['truncated_share']:.0f}% of the completions reach grpo.max_completion_length without ending")
    tc = cfg.train
    per_step = tc.per_device_train_batch_size * tc.gradient_accumulation_steps
    n_batches = -(-len(parts.train) // max(1, tc.per_device_train_batch_size))
    steps = plan_steps(tc, n_batches, 1, parts.step_repeats).total_steps
    gen_steps = -(-steps // max(1, parts.step_repeats))
    out.info(f"{p['seconds_per_group']:.2f} s per group -> generation alone about "
             f"{_duration(p['seconds_per_group'] * per_step * gen_steps)} for {steps:,} steps "
             f"({per_step} prompts per step); the probe below measures whole steps")


def _lengths_section(out: Out, parts: TaskParts, lengths: list[int], report: DoctorReport) -> None:
    summ = parts.summary
    limit = summ.get("max_length") or summ.get("block_size")
    out.section("lengths (training examples, tokens)")
    out.info(f"{len(lengths):,} examples, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}"
             + (f", limit {limit}" if limit else ""))
    for line in histogram(lengths):
        out.info(line)
    share = summ.get("truncated_train_share")
    if share is None and summ.get("truncated_documents") is not None and summ.get("train_documents"):
        share = summ["truncated_documents"] / max(1, summ["train_documents"])
    if share is not None:
        out.info(f"truncated at the limit: {100 * share:.1f}% of the training examples")
        report.facts["truncated_share"] = share
        if share >= 0.2:
            out.warn(f"{100 * share:.0f}% of the training examples are cut at {limit} tokens — raise data.max_length "
                     "if the ends matter")
    report.facts["lengths"] = {"n": len(lengths), "max": max(lengths), "mean": sum(lengths) / len(lengths)}


def histogram(lengths: Sequence[int]) -> list[str]:
    """Text histogram of lengths in power-of-two bins."""
    if not lengths:
        return []
    top = max(lengths)
    edges = [0]
    b = 8
    while b < top:
        edges.append(b)
        b *= 2
    edges.append(max(top, 1))
    bins = [0] * (len(edges) - 1)
    for x in lengths:
        for i in range(len(bins)):
            if x <= edges[i + 1] or i == len(bins) - 1:
                bins[i] += 1
                break
    width = max(bins) or 1
    return [f"{edges[i] + 1:>6}-{edges[i + 1]:<6} {c:>8,}  {'#' * max(1, round(30 * c / width))}"
            for i, c in enumerate(bins) if c]


def show_example(out: Out, parts: TaskParts, cfg: Config) -> None:
    """The first training batch's first example, decoded, with the task's view of its labels."""
    tc = cfg.train
    order = epoch_batches(parts.train.lengths, tc.per_device_train_batch_size, tc.seed, 0,
                          group_by_length=tc.group_by_length, drop_last=parts.train_batch_drop_last)
    idx = order[0][0] if order and order[0] else 0
    rows = parts.train.take([idx])
    batch = parts.train_collate(rows, tc.seed * 1_000_003) if parts.train_collate else parts.collate(rows)
    ids = batch["input_ids"][0]
    if "attention_mask" in batch:
        ids = ids[batch["attention_mask"][0].bool()]
    ids = ids.tolist()
    out.info(f"first training example (row {idx}, {len(ids)} tokens):")
    out.info("  input:  " + clip(parts.tokenizer.decode(ids, skip_special_tokens=False)))
    labels = batch.get("labels")
    for line in parts.task.describe_example(parts, ids, labels[0] if labels is not None else None):
        out.info(line)


def _memory_and_time(out: Out, cfg: Config, parts: TaskParts, probe: bool, report: DoctorReport, tmp: Path) -> None:
    tc = cfg.train
    probe_cfg = cfg.model_copy(deep=True)
    probe_cfg.train.max_steps = 3
    probe_cfg.train.eval_strategy = "no"
    probe_cfg.train.save_strategy = "no"
    probe_cfg.train.logging_steps = 1
    accelerator = make_accelerator(cfg)
    try:
        trainer = Trainer(probe_cfg, parts, tmp, accelerator)
    except LmforgeError as e:
        out.problem(err(e))
        return
    plan = plan_steps(tc, trainer.batches_per_epoch, accelerator.num_processes, parts.step_repeats)
    steps_per_epoch, total = plan.steps_per_epoch, plan.total_steps
    est = estimate_for(trainer)
    report.facts["memory"] = est.as_dict()
    out.info(est.summary())
    if est.fits is False:
        out.problem(f"training will probably not fit in memory ({est.total / MB:,.0f} MB needed, "
                    f"{(est.available + est.already_used) / MB:,.0f} MB available) — try " + "; or ".join(est.advice))
    out.info(f"{total:,} optimizer steps ({steps_per_epoch:,} per epoch, effective batch {plan.effective_batch})")
    report.facts["total_steps"] = total
    if probe and est.fits is not False:
        _probe(out, trainer, total, report, plan.steps_per_epoch, tc)


LONG_RUN_S = 3600  # a run estimated longer than this is warned about


def eval_items_planned(tc, total: int, steps_per_epoch: int, n_eval: int, n_test: int) -> int:
    """How many eval items a run scores in all: before training (capped), each evaluation during it, the final
    model (and again on the before-training sample when that was capped), and the test split."""
    if not n_eval:
        return n_test
    if tc.eval_strategy == "steps" and tc.eval_steps:
        during = total // tc.eval_steps
    elif tc.eval_strategy == "epoch":
        during = max(1, -(-total // max(1, steps_per_epoch)))
    else:
        during = 0
    before = min(n_eval, tc.before_eval_max_samples or n_eval)
    return before + during * n_eval + n_eval + (before if before < n_eval else 0) + n_test


def _probe(out: Out, trainer: Trainer, total: int, report: DoctorReport, steps_per_epoch: int, tc) -> None:
    """Three real training steps and a timed evaluation batch: the time of the whole run, and the machine's load
    that may inflate it."""
    device = trainer.accelerator.device
    start = time.perf_counter()
    try:
        trainer.fit()
    except LmforgeError as e:
        out.problem(f"the 3-step probe failed: {err(e)}")
        return
    times = sorted(trainer.step_times)
    per_step = times[len(times) // 2] if times else (time.perf_counter() - start) / 3
    report.facts["seconds_per_step"] = per_step
    report.facts["probe_peak_mem_mb"] = peak_memory_mb(device)
    out.info(f"probe: 3 steps, {per_step:.3f} s per step (median) -> about {_duration(per_step * total)} for "
             f"{total:,} steps; peak memory {peak_memory_mb(device):,.0f} MB")
    parts = trainer.parts  # tc: the run's own train section (the probe's turns evaluation off)
    n_eval = len(parts.eval) if parts.eval is not None else 0
    n_test = len(parts.test) if parts.test is not None else 0
    items = eval_items_planned(tc, total, steps_per_epoch, n_eval, n_test)
    if items:
        sample = (parts.eval if n_eval else parts.test).sample(2 * tc.per_device_eval_batch_size, tc.seed)
        t0 = time.perf_counter()
        try:
            trainer.evaluate(split=sample, desc="probe")
        except LmforgeError as e:
            out.problem(f"the evaluation probe failed: {err(e)}")
            return
        per_item = (time.perf_counter() - t0) / max(1, len(sample))
        eval_s = per_item * items
        report.facts["eval_seconds_estimate"] = eval_s
        out.info(f"probe: evaluation {per_item * 1000:,.0f} ms per item -> about {_duration(eval_s)} for the "
                 f"{items:,} items the run evaluates (before, during and after training, and the test split)")
        out.info(f"whole run: about {_duration(per_step * total + eval_s)} (plus loading the model and the data)")
    report.facts["run_seconds_estimate"] = per_step * total + (report.facts.get("eval_seconds_estimate") or 0.0)
    if per_step * total > LONG_RUN_S:
        out.warn(f"this run would take about {_duration(per_step * total)} here ({total:,} steps): lower "
                 "train.max_steps or data.max_train_samples to try it first (a starter from `lmforge init` takes "
                 "minutes)")
    load, cores = _load()
    if device.type == "cpu" and load is not None and load > cores:
        out.warn(f"the machine is busy (load average {load:.1f} on {cores} cores): the time per step "
                 "above is inflated; probe again when it is idle")


def _load() -> tuple[Optional[float], int]:
    try:
        return os.getloadavg()[0], os.cpu_count() or 1
    except (OSError, AttributeError):
        return None, os.cpu_count() or 1


def _duration(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
