"""`lmforge doctor CONFIG`: everything that would stop or spoil a run, found before it starts.

    lmforge doctor examples/sentiment-minilm.yaml --train.per_device_train_batch_size 64

Checks, in order: the config; the previous run in output_dir (crashed? finished?); that the
model and data are available offline; the data (rows, empty texts, duplicates, label balance,
labels unseen in training); the tokenizer (pad / eos / mask tokens, chat template, vocabulary
against the model's embeddings); then the task's own preparation (the same `setup` training
runs): token length histogram, share truncated, the first training example decoded with its
labels, a memory estimate against what the machine has, and a 3-step probe for the time per step.

Exit code 0 when training would start, 2 with the list of problems otherwise. Warnings (duplicates,
imbalance, truncation) do not change the exit code.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console

from .doctor_data import check_data
from .errors import LmforgeError

log = logging.getLogger("lmforge")


@dataclass
class DoctorReport:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


class _Out:
    def __init__(self, console: Console, report: DoctorReport):
        self.c, self.r = console, report

    def section(self, title: str) -> None:
        self.c.print(f"\n[bold]{title}[/bold]")

    def ok(self, text: str) -> None:
        self.c.print(f"  [green]ok[/green]      {text}", markup=True, highlight=False)

    def info(self, text: str) -> None:
        self.c.print(f"          {text}", markup=False, highlight=False)

    def warn(self, text: str) -> None:
        self.r.warnings.append(text)
        self.c.print(f"  [yellow]warning[/yellow] {_esc(text)}", highlight=False)

    def problem(self, text: str) -> None:
        self.r.problems.append(text)
        self.c.print(f"  [red]problem[/red] {_esc(text)}", highlight=False)


def _esc(text: str) -> str:
    from rich.markup import escape
    return escape(text)


def _err(e: LmforgeError) -> str:
    return e.message + (f" — {e.hint}" if e.hint else "")


class _Collect(logging.Handler):
    """Collects what the task's setup logs, to show it in the report."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


# ----------------------------------------------------------------------------------- model, tokenizer
def check_model_and_tokenizer(out: _Out, cfg):
    """Offline availability of the model, and the tokenizer's special tokens. Returns the tokenizer or None."""
    if cfg.model.name:
        try:
            from .tasks.common import model_source
            path = model_source(cfg)
        except LmforgeError as e:
            out.problem(_err(e))
            return None
        p = Path(path)
        if p.is_dir():
            weights = sorted(f.name for f in p.iterdir() if f.suffix in (".safetensors", ".bin", ".gguf"))
            out.ok(f"model: {cfg.model.name} -> {p} ({', '.join(weights[:3]) or 'no weight files'})")
            if not weights:
                out.problem(f"model folder {p} has no weight files (*.safetensors) — copy the weights there")
        else:
            out.ok(f"model: {cfg.model.name} (Hub id, reachable)")
    else:
        out.ok("model: built from model.from_config (fresh weights)")
    try:
        from .tokenizer import tokenizer_for_config
        tok = tokenizer_for_config(cfg, log)
    except LmforgeError as e:
        out.problem(_err(e))
        return None
    except ImportError:
        from .tasks.common import model_source
        from .tokenizer import load_tokenizer
        tok = load_tokenizer(model_source(cfg), cfg.model.revision)
    specials = {name: getattr(tok, f"{name}_token", None) for name in ("pad", "eos", "bos", "mask", "unk")}
    out.ok(f"tokenizer: {type(tok).__name__}, {len(tok):,} tokens; "
           + ", ".join(f"{k} {v!r}" for k, v in specials.items() if v is not None))
    if specials["pad"] is None:
        if specials["eos"] is None and cfg.task != "masked-lm":
            out.problem("the tokenizer has neither a pad nor an eos token — add a pad token to the tokenizer")
        elif specials["eos"] is not None:
            out.info(f"no pad token: the eos token {specials['eos']!r} will pad")
    if cfg.task == "masked-lm" and specials["mask"] is None:
        out.problem("the tokenizer has no mask token, which masked-lm needs — use a tokenizer with one "
                    "(e.g. [MASK] or <mask>)")
    if cfg.task == "causal-lm" and specials["eos"] is None:
        out.warn("the tokenizer has no eos token: documents will run into each other when packed")
    template = getattr(tok, "chat_template", None)
    out.info(f"chat template: {'yes' if template else 'none'}")
    return tok


def _model_vocab(model) -> Optional[int]:
    try:
        return int(model.get_input_embeddings().weight.shape[0])
    except Exception:
        return None


# ----------------------------------------------------------------------------------- prepared run
def _histogram(lengths: Sequence[int], limit: Optional[int]) -> list[str]:
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
    lines = []
    for i, c in enumerate(bins):
        if c == 0:
            continue
        bar = "#" * max(1, round(30 * c / width))
        lines.append(f"{edges[i] + 1:>6}-{edges[i + 1]:<6} {c:>8,}  {bar}")
    return lines


def _show_example(out: _Out, prep, tok) -> None:
    import torch

    from .data.batching import epoch_batches
    tc = prep._cfg.train
    order = epoch_batches(prep.train.lengths, tc.per_device_train_batch_size, tc.seed, 0,
                          group_by_length=tc.group_by_length, drop_last=prep.train_batch_drop_last)
    idx = order[0][0] if order and order[0] else 0
    rows = prep.train.take([idx])
    batch = prep.train_collate(rows, tc.seed * 1_000_003) if prep.train_collate else prep.collate(rows)
    ids = batch["input_ids"][0]
    if "attention_mask" in batch:
        ids = ids[batch["attention_mask"][0].bool()]
    ids = ids.tolist()
    out.info(f"first training example (row {idx}, {len(ids)} tokens):")
    out.info("  input:  " + _clip(tok.decode(ids, skip_special_tokens=False)))
    labels = batch.get("labels")
    if labels is None:
        return
    lab = labels[0]
    if lab.dim() == 0:
        id2label = getattr(getattr(prep.model, "config", None), "id2label", None) or {}
        out.info(f"  label:  {id2label.get(int(lab), int(lab))}")
        return
    lab = lab[: len(ids)].tolist()
    scored = [i for i, t in enumerate(lab) if t != -100]
    if prep.task == "masked-lm":
        shown = [f"[{tok.convert_ids_to_tokens(ids[i])}→{tok.convert_ids_to_tokens(lab[i])}]" if lab[i] != -100
                 else tok.convert_ids_to_tokens(ids[i]) for i in range(len(ids))]
        out.info(f"  masked: {len(scored)} of {len(ids)} positions predicted, shown as [input→label]:")
        out.info("          " + _clip(" ".join(shown)))
    else:
        out.info(f"  labels: loss on {len(scored)} of {len(ids)} positions"
                 + (f"; no loss on: {_clip(tok.decode([ids[i] for i in range(len(ids)) if lab[i] == -100]), 120)}"
                    if len(scored) < len(ids) - 1 else ""))
    del torch


def _clip(text: str, n: int = 300) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"


def check_prepared(out: _Out, cfg, probe: bool, report: DoctorReport) -> None:
    from accelerate.utils import set_seed

    from .tasks import get_task
    from .train.memory import MB, advise, estimate
    from .train.perf import peak_memory_mb

    set_seed(cfg.train.seed)
    collect = _Collect()
    lg = logging.getLogger("lmforge")
    others = list(lg.handlers)  # the report shows what setup logs; the console handler would repeat it
    for h in others:
        lg.removeHandler(h)
    lg.addHandler(collect)
    old_level = lg.level
    lg.setLevel(logging.INFO)
    try:
        prep = get_task(cfg.task).setup(cfg, lg)
    except LmforgeError as e:
        out.problem(_err(e))
        return
    finally:
        lg.removeHandler(collect)
        lg.setLevel(old_level)
        for h in others:
            lg.addHandler(h)
    for rec in collect.records:
        if rec.levelno >= logging.WARNING:
            out.warn(rec.getMessage())
        else:
            out.info(rec.getMessage())
    prep._cfg = cfg
    tok = prep.tokenizer
    vocab = _model_vocab(prep.model)
    if vocab is not None and len(tok) > vocab:
        out.problem(f"the tokenizer has {len(tok):,} tokens but the model's embeddings only {vocab:,} — "
                    "token ids beyond the embeddings crash training; use the model's own tokenizer")
    lengths = list(prep.train.lengths) if prep.train is not None else []
    if not lengths:
        out.problem("no training examples after preparation")
        return
    summ = prep.summary
    limit = summ.get("max_length") or summ.get("block_size")
    out.section("lengths (training examples, tokens)")
    out.info(f"{len(lengths):,} examples, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}"
             + (f", limit {limit}" if limit else ""))
    for line in _histogram(lengths, limit):
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
    out.section("first training example")
    try:
        _show_example(out, prep, tok)
    except Exception as e:  # showing the example must not hide the rest of the report
        out.info(f"(could not decode the first example: {e})")

    out.section("memory and time")
    from .train.loop import Trainer, make_accelerator
    tc = cfg.train
    probe_cfg = cfg.model_copy(deep=True)
    probe_cfg.train.max_steps = 3
    probe_cfg.train.eval_strategy = "no"
    probe_cfg.train.save_strategy = "no"
    probe_cfg.train.logging_steps = 1
    tmp = Path(tempfile.mkdtemp(prefix="lmforge-doctor-"))
    try:
        acc = make_accelerator(cfg)
        try:
            trainer = Trainer(probe_cfg, prep, tmp, acc)
        except LmforgeError as e:
            out.problem(_err(e))
            return
        steps_per_epoch = trainer.steps_per_epoch
        total = tc.max_steps if tc.max_steps > 0 else max(1, math.ceil(tc.num_train_epochs * steps_per_epoch))
        mp = "bf16" if getattr(acc, "mixed_precision", "no") in ("bf16", "fp16") else "no"
        est = estimate(acc.unwrap_model(trainer.model), lengths, tc.per_device_train_batch_size,
                       tc.per_device_eval_batch_size, len(prep.eval) if prep.eval is not None else 0, mp,
                       tc.gradient_checkpointing, acc.device)
        est.advice = advise(est, tc.gradient_accumulation_steps, cfg.data.max_length)
        report.facts["memory"] = est.as_dict()
        out.info(est.summary())
        if est.fits is False:
            out.problem(f"training will probably not fit in memory ({est.total / MB:,.0f} MB needed, "
                        f"{(est.available + est.already_used) / MB:,.0f} MB available) — try "
                        + "; or ".join(est.advice))
        out.info(f"{total:,} optimizer steps ({steps_per_epoch:,} per epoch, effective batch "
                 f"{tc.per_device_train_batch_size * tc.gradient_accumulation_steps * acc.num_processes})")
        report.facts["total_steps"] = total
        if probe and est.fits is not False:
            start = time.perf_counter()
            try:
                trainer.fit()
            except LmforgeError as e:
                out.problem(f"the 3-step probe failed: {_err(e)}")
                return
            times = sorted(trainer.step_times)
            per_step = times[len(times) // 2] if times else (time.perf_counter() - start) / 3
            report.facts["seconds_per_step"] = per_step
            report.facts["probe_peak_mem_mb"] = peak_memory_mb(acc.device)
            out.info(f"probe: 3 steps, {per_step:.3f} s per step (median) -> about "
                     f"{_duration(per_step * total)} for {total:,} steps, without evaluation; "
                     f"peak memory {peak_memory_mb(acc.device):,.0f} MB")
            load, cores = _load()
            if acc.device.type == "cpu" and load is not None and load > cores:
                out.warn(f"the machine is busy (load average {load:.1f} on {cores} cores): the time per step "
                         "above is inflated; probe again when it is idle")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _load() -> tuple[Optional[float], int]:
    import os
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


# ----------------------------------------------------------------------------------- entry point
def run_doctor(config=None, overrides: Optional[Sequence[str]] = None, probe: bool = True,
               console: Optional[Console] = None) -> DoctorReport:
    """Check a config before training; prints a report and returns it (problems, warnings, facts)."""
    from .api import _as_config, quiet_libraries
    from .train.checkpoint import incomplete_checkpoints
    from .train.recovery import previous_run

    quiet_libraries()
    report = DoctorReport()
    out = _Out(console or Console(highlight=False, soft_wrap=True), report)
    out.section("config")
    try:
        cfg = _as_config(config, list(overrides) if overrides else None)
    except LmforgeError as e:
        out.problem(_err(e))
        return _finish(out, report)
    out.ok(f"{config or 'the default recipe'}: task {cfg.task}, model {cfg.model.name or 'from_config'}, "
           f"train {cfg.data.train}")
    if cfg.output.output_dir:
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
    before = len(report.problems)
    out.section("model and tokenizer (offline)")
    tok = check_model_and_tokenizer(out, cfg)
    out.section("data")
    readable = check_data(out, cfg)
    if len(report.problems) > before or not readable or tok is None:
        out.section("preparation")
        out.info("skipped: fix the problems above first (the later checks need the data and the model)")
        return _finish(out, report)
    out.section("preparation (the task's own setup, as training runs it)")
    try:
        check_prepared(out, cfg, probe, report)
    except LmforgeError as e:
        out.problem(_err(e))
    return _finish(out, report)


def _finish(out: _Out, report: DoctorReport) -> DoctorReport:
    out.c.print()
    if report.problems:
        out.c.print(f"[red bold]{len(report.problems)} problem(s)[/red bold] — training would not start or "
                    "would fail:")
        for p in report.problems:
            out.c.print(f"  - {_esc(p)}", highlight=False)
    else:
        out.c.print("[green bold]ready to train[/green bold]"
                    + (f" ({len(report.warnings)} warning(s) above)" if report.warnings else ""))
    return report
