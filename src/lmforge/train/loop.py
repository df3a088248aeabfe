"""The training loop: one explicit loop over accelerate, shared by every task.

    micro-batches (length-grouped, dynamically padded) -> loss sum / items in the whole step
    -> backward -> clip -> AdamW -> schedule -> log / evaluate / checkpoint

Tasks plug in a collate function, a loss and an evaluation step (see tasks/base.py).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ..config import Config
from ..data.batching import epoch_batches, eval_batches, shard
from ..errors import LmforgeError, TrainingInterrupted
from ..runfolder import LogWriter
from ..tasks.base import EncodedSplit, Prepared
from . import checkpoint as ckpt
from . import compiling
from .perf import count_params, device_peak_flops, peak_memory_mb, release_memory, task_flop_params
from .progress import TrainProgress
from .schedule import make_optimizer, make_scheduler
from .signals import StopRequest

log = logging.getLogger("lmforge")


@dataclass
class FitResult:
    steps: int
    epochs: float
    train_loss: Optional[float]
    runtime_s: float
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    eval_history: list = field(default_factory=list)
    tokens_per_s: float = 0.0
    mfu: Optional[float] = None
    peak_mem_mb: float = 0.0
    stopped_early: bool = False


def to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def make_accelerator(cfg: Config):
    from accelerate import Accelerator

    mp = cfg.train.mixed_precision
    cuda = torch.cuda.is_available()
    if mp == "auto":
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "no"
    if mp in ("bf16", "fp16") and not cuda:
        # fp32 matmul is faster than bf16 on CPUs without AMX, and fp16 autocast is unsupported.
        log.info("mixed_precision=%s asked for on a CPU: training in fp32 instead", mp)
        mp = "no"
    return Accelerator(mixed_precision=mp, cpu=not cuda)


@torch.no_grad()
def evaluate_split(model, split: EncodedSplit, prep: Prepared, batch_size: int, accelerator=None,
                   progress: Optional[TrainProgress] = None, desc: str = "eval") -> dict:
    """Run the task's eval_step over a split, concatenating its outputs; finalize -> metrics."""
    device = accelerator.device if accelerator else next(model.parameters()).device
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    all_batches = eval_batches(split.lengths, batch_size)
    batches = all_batches[rank::world]
    # Every process runs the same number of forward passes: a DDP/FSDP-wrapped model communicates in
    # forward (buffer sync, all-gathers), so an uneven share would hang. Padding passes are discarded.
    n_pad = (-(-len(all_batches) // world) - len(batches)) if world > 1 and all_batches else 0
    was_training = model.training
    model.eval()
    acc: dict[str, list] = {}
    task_id = progress.add_eval(desc, len(batches)) if progress else None
    autocast = accelerator.autocast() if accelerator else nullcontext()
    with autocast:
        for _ in range(n_pad):
            prep.eval_step(model, to_device(prep.collate(split.take(all_batches[0])), device))
        for idx in batches:
            out = prep.eval_step(model, to_device(prep.collate(split.take(idx)), device))
            for k, v in out.items():
                acc.setdefault(k, []).append(v.detach().float().reshape(-1).cpu() if v.is_floating_point()
                                             else v.detach().reshape(-1).cpu())
            if progress:
                progress.advance_eval(task_id)
    if progress:
        progress.done_eval(task_id)
    cat = {k: torch.cat(v) for k, v in acc.items()}
    if world > 1:
        from accelerate.utils import gather_object
        parts = gather_object([cat])
        keys = dict.fromkeys(k for p in parts for k in p)  # a process with no batches sends nothing
        cat = {k: torch.cat([p[k] for p in parts if k in p]) for k in keys}
    model.train(was_training)
    return prep.finalize(cat)


class Trainer:
    """Holds the state of one training run. ``fit()`` runs it."""

    def __init__(self, cfg: Config, prep: Prepared, run_dir: Path, accelerator=None):
        self.cfg, self.prep, self.run_dir = cfg, prep, Path(run_dir)
        self.tc = cfg.train
        self.acc = accelerator or make_accelerator(cfg)
        self.main = self.acc.is_main_process
        self.logw = LogWriter(self.run_dir / "log.jsonl", enabled=self.main)
        self.ckpt_root = self.run_dir / "checkpoints"
        if self.tc.gradient_checkpointing and hasattr(prep.model, "gradient_checkpointing_enable"):
            prep.model.gradient_checkpointing_enable()
        self.optimizer = make_optimizer(prep.model, self.tc, prep.new_param_names)
        self.model, self.optimizer = self.acc.prepare(prep.model, self.optimizer)
        bs, accum = self.tc.per_device_train_batch_size, self.tc.gradient_accumulation_steps
        n_batches = len(self._batches(0))
        if n_batches == 0:
            raise LmforgeError(f"not enough training data for one batch of {bs} per process",
                               "lower per_device_train_batch_size or add data")
        self.batches_per_epoch = n_batches
        self.steps_per_epoch = math.ceil(n_batches / accum)
        self.total_steps = self.tc.max_steps if self.tc.max_steps > 0 else \
            max(1, math.ceil(self.tc.num_train_epochs * self.steps_per_epoch))
        self.scheduler = make_scheduler(self.optimizer, self.tc, self.total_steps)
        self.n_params = count_params(self.acc.unwrap_model(self.model))
        self.flop_params = task_flop_params(self.acc.unwrap_model(self.model), prep.task, cfg)
        self.peak_flops = device_peak_flops(self.acc.device) * self.acc.num_processes
        self.compiled = compiling.setup(self.tc.compile, prep.task, getattr(cfg.data, "packing", None),
                                        self.total_steps, self.acc, self.model, self.tc.gradient_checkpointing)
        # state that a checkpoint saves
        self.step = 0
        self.epoch = 0
        self.batch_pos = 0  # next batch index within the epoch
        self.best: Optional[float] = None
        self.best_step: Optional[int] = None
        self.bad_evals = 0
        self.eval_history: list[dict] = []
        self.last_loss: Optional[float] = None
        # The logging window: each log.jsonl line averages the loss over the steps since the last line;
        # saved in checkpoints so a resumed run writes the same lines.
        self.win_loss, self.win_items = 0.0, 0
        self.nan_streak = 0  # consecutive skipped non-finite steps (nan_policy: skip)
        self.nan_skipped = 0  # all skipped batches
        self.step_times: list[float] = []  # seconds per optimizer step (excluding eval and saving)
        self.last_saved: Optional[Path] = None
        self.stop = StopRequest()
        self._last_shape: Optional[tuple] = None

    def _eager(self):
        return self.compiled.eager() if self.compiled is not None and self.compiled.active else nullcontext()

    def _forward_backward(self, micro: list[dict], items: float) -> tuple[torch.Tensor, int]:
        """Forward and backward over the micro-batches of one step: (sum of losses, tokens)."""
        acc, model = self.acc, self.model
        step_loss = torch.zeros((), device=acc.device)
        tokens = 0
        for i, mb in enumerate(micro):
            mb = to_device(mb, acc.device)
            sync = nullcontext() if i == len(micro) - 1 else acc.no_sync(model)
            with sync, acc.autocast():
                loss_sum = self.prep.loss(model, mb)
                # Normalise over the items of the whole step (all micro-batches, all processes);
                # DDP averages gradients over processes, hence the factor num_processes.
                acc.backward(loss_sum * (acc.num_processes / items))
            step_loss += loss_sum.detach().float()
            tokens += int(mb["n_tokens"])
        return step_loss, tokens

    def _step_grads(self, micro: list[dict], items: float) -> tuple[torch.Tensor, int]:
        """_forward_backward; a compiled model that fails to compile falls back to eager once, with a warning."""
        try:
            return self._forward_backward(micro, items)
        except Exception as e:  # noqa: BLE001 - only compile errors are handled, the rest re-raised
            if self.compiled is None or not self.compiled.active or not compiling.is_compile_error(e):
                raise
            log.warning("torch.compile failed (%s: %s); training on without it (train.compile: false skips "
                        "the attempt)", type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
            self.compiled.disable()
            self.optimizer.zero_grad(set_to_none=True)
            return self._forward_backward(micro, items)

    # -------------------------------------------------------------------------------- data
    def _batches(self, epoch: int) -> list[list[int]]:
        b = epoch_batches(self.prep.train.lengths, self.tc.per_device_train_batch_size, self.tc.seed, epoch,
                          group_by_length=self.tc.group_by_length, drop_last=self.prep.train_batch_drop_last)
        return shard(b, self.acc.process_index, self.acc.num_processes)

    def _steps(self):
        """Yield (epoch, index of the first batch, batches in the epoch, list of batch index lists) per step."""
        accum = self.tc.gradient_accumulation_steps
        epoch, start = self.epoch, self.batch_pos
        while True:
            batches = self._batches(epoch)
            for s in range(start, len(batches), accum):
                group = batches[s:s + accum]
                yield epoch, s, len(batches), group
            epoch, start = epoch + 1, 0

    def _collate(self, indices: list[int], epoch: int, batch_index: int) -> dict:
        rows = self.prep.train.take(indices)
        if self.prep.train_collate is not None:
            seed = (self.tc.seed * 1_000_003 + epoch * 100_003 + batch_index) % (2**63)
            return self.prep.train_collate(rows, seed)
        return self.prep.collate(rows)

    # -------------------------------------------------------------------------------- state
    def state(self) -> dict:
        return {"step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos, "best": self.best,
                "best_step": self.best_step, "bad_evals": self.bad_evals, "eval_history": self.eval_history,
                "total_steps": self.total_steps, "seed": self.tc.seed,
                "world_size": self.acc.num_processes, "last_loss": self.last_loss, "win_loss": self.win_loss,
                "win_items": self.win_items, "nan_streak": self.nan_streak, "nan_skipped": self.nan_skipped,
                "batches_per_epoch": self.batches_per_epoch}

    def save(self) -> Optional[Path]:
        self.acc.wait_for_everyone()
        path = None
        if self.main:
            path = ckpt.save_checkpoint(self.ckpt_root / f"step-{self.step}", self.acc.unwrap_model(self.model),
                                        self.optimizer, self.scheduler, self.state(), self.prep.tokenizer,
                                        scaler=getattr(self.acc, "scaler", None))
            keep = {self.ckpt_root / f"step-{self.best_step}"} if self.best_step is not None else set()
            ckpt.rotate(self.ckpt_root, self.tc.save_total_limit, keep=keep)
        self.acc.wait_for_everyone()
        self.last_saved = self.ckpt_root / f"step-{self.step}"
        return path

    def resume(self, folder: Path) -> None:
        fresh_lrs = list(self.scheduler.base_lrs)
        state = ckpt.load_training_state(folder, self.acc.unwrap_model(self.model), self.optimizer, self.scheduler,
                                         scaler=getattr(self.acc, "scaler", None))
        if [round(x, 12) for x in self.scheduler.base_lrs] != [round(x, 12) for x in fresh_lrs]:
            # The checkpoint's optimizer carries its learning rates; a resume after lowering
            # train.learning_rate (say, after a NaN) must use the new ones from here on.
            log.info("learning rate changed since the checkpoint (%g -> %g): continuing with the new one",
                     self.scheduler.base_lrs[0], fresh_lrs[0])
            self.scheduler.base_lrs = fresh_lrs
            for group, base, fn in zip(self.optimizer.param_groups, fresh_lrs, self.scheduler.lr_lambdas):
                group["initial_lr"] = base
                group["lr"] = base * fn(self.scheduler.last_epoch)
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if state.get("world_size", 1) != self.acc.num_processes:
            raise LmforgeError(f"checkpoint {folder} was written with {state.get('world_size')} processes, "
                               f"this run has {self.acc.num_processes}", "resume with the same number of processes")
        if state.get("batches_per_epoch", self.batches_per_epoch) != self.batches_per_epoch or \
                state.get("seed", self.tc.seed) != self.tc.seed:
            log.warning("the data, batch size or seed differ from the checkpoint's: the resumed run will not "
                        "see the same batches as an uninterrupted one")
        for key in ("step", "epoch", "batch_pos", "best", "best_step", "bad_evals", "eval_history"):
            setattr(self, key, state[key])
        for key, default in (("last_loss", None), ("win_loss", 0.0), ("win_items", 0), ("nan_streak", 0),
                             ("nan_skipped", 0)):
            setattr(self, key, state.get(key, default))
        self.last_saved = Path(folder)
        self.logw.truncate_after(self.step)
        if self.main:
            self._reconcile_best()
        log.info("resumed from %s at step %d (epoch %d, batch %d)", folder, self.step, self.epoch, self.batch_pos)

    def _reconcile_best(self) -> None:
        """After a resume, best/ must hold the weights of the checkpoint's best step, not those of a later
        evaluation of the run that was cut off (a replay re-creates those if it gets there again)."""
        best = self.ckpt_root / "best"
        if not best.exists():
            return
        marker = best / ckpt.BEST_STEP
        held = int(marker.read_text()) if marker.exists() else None
        if held == self.best_step:
            return
        src = self.ckpt_root / f"step-{self.best_step}"
        if self.best_step is not None and ckpt.is_complete(src):
            import shutil

            def write(d: Path):
                for f in src.iterdir():
                    if f.name == "config.json" or f.name.startswith("model") and f.suffix in (".safetensors", ".json"):
                        shutil.copy2(f, d / f.name)
                (d / ckpt.BEST_STEP).write_text(str(self.best_step))
            ckpt.atomic_dir(best, write, mark_complete=False)
        else:
            import shutil
            shutil.rmtree(best, ignore_errors=True)
            if self.best_step is not None:
                log.warning("best/ held the weights of step %s of the cut-off run and those of step %s (the best at "
                            "the checkpoint) were rotated away: the final model will be the best one evaluated from "
                            "now on if one beats step %s, else the last one", held, self.best_step, self.best_step)

    # -------------------------------------------------------------------------------- eval
    def evaluate(self, progress=None, split: Optional[EncodedSplit] = None, desc="eval") -> dict:
        split = split or self.prep.eval
        with self._eager():
            return evaluate_split(self.model, split, self.prep, self.tc.per_device_eval_batch_size, self.acc,
                                  progress=progress, desc=desc)

    def _improved(self, value: float) -> bool:
        if self.best is None or (value is not None and not math.isnan(value) and
                                 (value > self.best if self.prep.greater_is_better else value < self.best)):
            return True
        return False

    def _after_eval(self, metrics: dict) -> bool:
        """Record an evaluation; save the best model; return True to stop early."""
        name = self.tc.metric_for_best_model or self.prep.best_metric
        name = name.removeprefix("eval_").removeprefix("eval.")
        if name not in metrics:
            raise LmforgeError(f"metric_for_best_model '{name}' is not an eval metric of this task",
                               f"choose one of: {', '.join(k for k, v in metrics.items() if isinstance(v, (int, float)))}")
        value = metrics[name]
        rec = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
               **{f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
        self.eval_history.append(rec)
        self.logw.write(rec)
        if self._improved(value):
            self.best, self.best_step, self.bad_evals = value, self.step, 0
            if self.tc.load_best_model_at_end and self.main:
                model = self.acc.unwrap_model(self.model)
                step = self.step

                def write_best(d: Path):
                    model.save_pretrained(d, safe_serialization=True)
                    (d / ckpt.BEST_STEP).write_text(str(step))
                ckpt.atomic_dir(self.ckpt_root / "best", write_best, mark_complete=False)
        else:
            self.bad_evals += 1
        if self.prep.samples and self.main:
            with self._eager():
                samples = self.prep.samples(self.acc.unwrap_model(self.model))
            if samples:
                self.logw.write({"step": self.step, "samples": samples})
        patience = self.tc.early_stopping_patience
        return bool(patience and self.bad_evals >= patience)

    # -------------------------------------------------------------------------------- fit
    def fit(self, progress: Optional[TrainProgress] = None) -> FitResult:
        with self.stop:
            return self._fit(progress)

    def _nonfinite(self, loss_val: float, grad_norm: float) -> bool:
        """Handle a NaN/Inf loss or gradient: True = skip this batch; raises when the run must stop."""
        if getattr(self.acc, "scaler", None) is not None and math.isfinite(loss_val):
            return False  # fp16: the gradient scaler skips the update and lowers its scale
        what = "NaN" if math.isnan(loss_val) or math.isnan(grad_norm) else "infinite"
        step = self.step + 1
        kept = f"the last good checkpoint is {self.last_saved}" if self.last_saved else "no checkpoint was written yet"
        causes = ("likely causes: a learning rate too high (lower train.learning_rate), fp16 overflow "
                  "(mixed_precision: bf16 or no), no gradient clipping (set max_grad_norm), or a bad input batch")
        if self.tc.nan_policy == "skip":
            if self.nan_streak < self.tc.max_consecutive_nan_skips:
                self.nan_streak += 1
                self.nan_skipped += 1
                log.warning("step %d: %s loss or gradient (loss %s, grad norm %s): batch skipped "
                            "(%d in a row, at most %d)", step, what, loss_val, grad_norm, self.nan_streak,
                            self.tc.max_consecutive_nan_skips)
                self.logw.write({"step": step, "nonfinite_skipped": True, "loss": None if not math.isfinite(loss_val)
                                 else loss_val, "grad_norm": None if not math.isfinite(grad_norm) else grad_norm})
                return True
            raise LmforgeError(
                f"{self.nan_streak + 1} batches in a row gave a {what} loss or gradient, the last at step {step} "
                f"(nan_policy: skip allows {self.tc.max_consecutive_nan_skips})",
                f"{causes}; {kept}")
        raise LmforgeError(
            f"the loss or gradient became {what} at step {step} (loss {loss_val}, grad norm {grad_norm})",
            f"{causes}; {kept}; or set train.nan_policy: skip to skip such batches")

    def _stop_requested(self) -> bool:
        stop = self.stop.signal is not None
        if self.acc.num_processes > 1:  # every process must stop at the same step
            flag = torch.tensor(float(stop), device=self.acc.device)
            stop = bool(self.acc.reduce(flag, "sum").item() > 0)
        return stop

    def _fit(self, progress: Optional[TrainProgress] = None) -> FitResult:
        tc, acc, model = self.tc, self.acc, self.model
        model.train()
        eval_every = tc.eval_steps if tc.eval_strategy == "steps" else None
        save_every = tc.save_steps if tc.save_strategy == "steps" else None
        has_eval = tc.eval_strategy != "no" and self.prep.eval is not None and len(self.prep.eval) > 0
        start = time.perf_counter()
        win_tokens, win_start = 0, time.perf_counter()
        total_tokens, stopped = 0, False
        last_record: dict = {}
        if progress:
            progress.start_train(self.total_steps, self.step)
        steps = self._steps()
        while self.step < self.total_steps:
            epoch, first, n_in_epoch, group = next(steps)
            t_step = time.perf_counter()
            pos = first + len(group)
            micro = [self._collate(idx, epoch, first + j) for j, idx in enumerate(group)]
            local_items = sum(int(b["n_items"]) for b in micro)
            items = acc.reduce(torch.tensor(float(local_items), device=acc.device), "sum").item() \
                if acc.num_processes > 1 else float(local_items)
            if items == 0:
                continue
            step_loss, n_tok = self._step_grads(micro, items)
            total_tokens += n_tok
            win_tokens += n_tok
            if tc.max_grad_norm:
                grad_norm = acc.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
            else:
                grad_norm = torch.norm(torch.stack([p.grad.detach().norm() for p in model.parameters()
                                                    if p.grad is not None]))
            grad_norm = float(grad_norm)
            loss_val = (acc.reduce(step_loss, "sum").item() if acc.num_processes > 1 else step_loss.item()) / items
            if not math.isfinite(loss_val) or not math.isfinite(grad_norm):
                if self._nonfinite(loss_val, grad_norm):
                    self.optimizer.zero_grad(set_to_none=True)
                    self.epoch, self.batch_pos = (epoch, pos) if pos < n_in_epoch else (epoch + 1, 0)
                    if self._stop_requested():
                        self._interrupt()
                    continue
            else:
                self.nan_streak = 0
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            shape = tuple(micro[-1]["input_ids"].shape)
            if acc.device.type == "cpu" and shape != self._last_shape:
                release_memory()  # only when batch shapes vary (fixed shapes reuse the same memory)
            self._last_shape = shape
            self.step += 1
            self.epoch, self.batch_pos = (epoch, pos) if pos < n_in_epoch else (epoch + 1, 0)
            self.last_loss = loss_val
            self.win_loss += loss_val
            self.win_items += 1
            self.step_times.append(time.perf_counter() - t_step)
            del self.step_times[:-1000]
            epoch_float = epoch + pos / n_in_epoch
            if progress:
                progress.update_train(self.step, loss_val, lr)
            if self.step % tc.logging_steps == 0 or self.step == self.total_steps:
                dt = time.perf_counter() - win_start
                tok_s = win_tokens * acc.num_processes / dt if dt > 0 else 0.0
                mfu = 6 * self.flop_params * tok_s / self.peak_flops if self.peak_flops else None
                last_record = {"step": self.step, "epoch": round(epoch_float, 4),
                               "loss": round(self.win_loss / self.win_items, 6),
                               "lr": lr, "grad_norm": round(grad_norm, 6), "tokens_per_s": round(tok_s, 1),
                               "mfu": round(mfu, 4) if mfu is not None else None,
                               "peak_mem_mb": round(peak_memory_mb(acc.device), 1)}
                self.logw.write(last_record)
                if progress:
                    progress.set_rate(tok_s, mfu)
                win_tokens, win_start = 0, time.perf_counter()
                self.win_loss, self.win_items = 0.0, 0
            epoch_end = pos >= n_in_epoch
            do_eval = has_eval and ((eval_every and self.step % eval_every == 0) or
                                    (tc.eval_strategy == "epoch" and epoch_end) or self.step == self.total_steps)
            if do_eval:
                eval_start = time.perf_counter()
                metrics = self.evaluate(progress)
                win_start += time.perf_counter() - eval_start  # tokens/s counts training time only
                if progress:
                    progress.note_eval(metrics, self.prep.best_metric)
                stopped = self._after_eval(metrics)
            if (save_every and self.step % save_every == 0) or (tc.save_strategy == "epoch" and epoch_end):
                self.save()
            if stopped:
                log.info("early stopping at step %d: no improvement in %d evaluations", self.step, self.bad_evals)
                break
            if self._stop_requested():
                self._interrupt()
        runtime = time.perf_counter() - start
        best_dir = self.ckpt_root / "best"
        if tc.load_best_model_at_end and has_eval and best_dir.exists():
            self.acc.wait_for_everyone()
            from safetensors.torch import load_file
            best = best_dir / "model.safetensors"
            marker = best_dir / ckpt.BEST_STEP
            held = int(marker.read_text()) if marker.exists() else self.best_step
            if best.exists() and self.best_step != self.step and held == self.best_step:
                log.info("loading the best model (step %d, %s = %.4f)", self.best_step,
                         self.tc.metric_for_best_model or self.prep.best_metric, self.best)
                acc.unwrap_model(model).load_state_dict(load_file(str(best)), strict=False)
        tok_s = total_tokens * acc.num_processes / runtime if runtime > 0 else 0.0
        return FitResult(steps=self.step, epochs=round(self.step / self.steps_per_epoch, 4), train_loss=self.last_loss,
                         runtime_s=runtime, best_metric=self.best, best_step=self.best_step,
                         eval_history=self.eval_history, tokens_per_s=tok_s,
                         mfu=6 * self.flop_params * tok_s / self.peak_flops if self.peak_flops else None,
                         peak_mem_mb=peak_memory_mb(acc.device), stopped_early=stopped)

    def _interrupt(self) -> None:
        """Save a checkpoint (unless this step already has one) and stop with TrainingInterrupted."""
        path = self.ckpt_root / f"step-{self.step}"
        if self.step > 0 and self.last_saved != path:
            self.save()
        where = f"checkpoint saved to {path}" if self.step > 0 else "no step was finished, nothing to save"
        raise TrainingInterrupted(f"training stopped by {self.stop.signal} at step {self.step}: {where}",
                                  "continue with the same command plus --resume", checkpoint=path)
