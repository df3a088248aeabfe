"""The training loop: one explicit loop over accelerate, shared by every task.

    micro-batches (length-grouped, dynamically padded) -> loss sum / items in the whole step
    -> backward -> clip -> AdamW -> schedule -> log / evaluate / checkpoint

Tasks plug in a collate function, a loss and an evaluation step (see tasks/base.py).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from ..config import Config
from ..data.batching import epoch_batches, shard
from ..errors import LmforgeError, TrainingInterrupted
from ..fs import JsonLog, atomic_dir
from ..runtime import to_device
from ..tasks.base import EncodedSplit, RolloutInfo, TaskParts
from . import checkpoint as ckpt
from . import compiling, sharding
from .evaluation import evaluate_split, make_accelerator
from .loop_state import LoopState, state_property
from .perf import Mfu, count_params, peak_memory_mb, release_memory, task_flop_params
from .progress import TrainProgress
from .schedule import is_plateau, low_lr_share, make_optimizer, make_scheduler, metric_direction
from .signals import StopRequest
from .steps import plan_steps

log = logging.getLogger("lmforge")


@dataclass
class FitResult:
    steps: int
    epochs: float
    train_loss: Optional[float]
    runtime_s: float
    eval_s: float = 0.0  # of runtime_s, the evaluations during training
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    eval_history: list = field(default_factory=list)
    tokens_per_s: float = 0.0
    mfu: Optional[float] = None
    peak_mem_mb: float = 0.0
    stopped_early: bool = False


class Trainer:
    """Holds the state of one training run. ``fit()`` runs it."""

    def __init__(self, cfg: Config, parts: TaskParts, run_dir: Path, accelerator=None):
        self.cfg, self.parts, self.run_dir = cfg, parts, Path(run_dir)
        self.tc = cfg.train
        self.accelerator = accelerator or make_accelerator(cfg)
        self.is_main = self.accelerator.is_main_process
        self.logw = JsonLog(self.run_dir / "log.jsonl", enabled=self.is_main)
        self.ckpt_root = self.run_dir / "checkpoints"
        if self.tc.gradient_checkpointing and hasattr(parts.model, "gradient_checkpointing_enable"):
            parts.model.gradient_checkpointing_enable()
        self.cpu_fsdp = sharding.cpu_fsdp(self.accelerator)
        sharding.warn_deepspeed_fallback(self.accelerator)
        if self.cpu_fsdp:  # FSDP asked for on CPU processes: accelerate would run DDP; shard with torch's FSDP2
            sharding.shard_model(parts.model)
        self.optimizer = make_optimizer(parts.model, self.tc, parts.new_param_names, parts.head_learning_rate)
        if self.cpu_fsdp:
            self.model, self.optimizer = parts.model, self.accelerator.prepare(self.optimizer)
        else:
            self.model, self.optimizer = self.accelerator.prepare(parts.model, self.optimizer)
        # FSDP (accelerate's, or ours on CPU): state dicts are gathered by every process
        self.sharded = ckpt.is_sharded(self.accelerator) or self.cpu_fsdp
        if self.sharded:
            sharding.full_logits_losses(parts)
        bs = self.tc.per_device_train_batch_size
        n_batches = len(self._batches(0))
        if n_batches == 0:
            raise LmforgeError(f"not enough training data for one batch of {bs} per process",
                               "lower per_device_train_batch_size or add data")
        self.plan = plan_steps(self.tc, n_batches, self.accelerator.num_processes, parts.step_repeats)
        self.batches_per_epoch = n_batches
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.total_steps = self.plan.total_steps
        self.best_metric_name, self.greater_is_better = metric_direction(self.tc, parts.best_metric,
                                                                         parts.greater_is_better)
        self.scheduler = make_scheduler(self.optimizer, self.tc, self.total_steps, self.greater_is_better)
        low = low_lr_share(self.scheduler, self.total_steps)
        if low is not None and low > 0.5:  # before step 1: a run that would learn almost nothing
            log.warning("the learning-rate schedule keeps the rate below 1%% of train.learning_rate for %.0f%% of "
                        "the %s steps (warmup %s): check train.warmup_steps / warmup_ratio and train.max_steps",
                        100 * low, f"{self.total_steps:,}", self.tc.warmup_steps or self.tc.warmup_ratio)
        self.n_params = count_params(self.accelerator.unwrap_model(self.model))
        self._mfu = Mfu(task_flop_params(self.accelerator.unwrap_model(self.model), parts.output_layer_share),
                        self.accelerator.device, self.accelerator.num_processes)
        self.compiled = compiling.setup(self.tc.compile, parts.fixed_shapes, self.total_steps, self.accelerator,
                                        self.model, self.tc.gradient_checkpointing)
        self.loop_state = LoopState()  # what a checkpoint saves (read and written through the properties below)
        self.step_times: list[float] = []  # seconds per optimizer step (excluding eval and saving)
        # this fit() call: tokens trained, the logging window's tokens and start, records written
        self.tokens_seen, self.win_tokens, self.win_start, self.eval_seconds = 0, 0, 0.0, 0.0
        self.last_saved: Optional[Path] = None
        self.stop = StopRequest()
        self._last_shape: Optional[tuple] = None

    def _eager(self):
        return self.compiled.eager() if self.compiled is not None and self.compiled.active else nullcontext()

    def _forward_backward(self, micro: list[dict], items: float) -> tuple[torch.Tensor, int]:
        """Forward and backward over the micro-batches of one step: (sum of losses, tokens)."""
        accelerator, model = self.accelerator, self.model
        step_loss = torch.zeros((), device=accelerator.device)
        tokens = 0
        for i, mb in enumerate(micro):
            mb = to_device(mb, accelerator.device)
            sync = nullcontext() if i == len(micro) - 1 else accelerator.no_sync(model)
            with sync, accelerator.autocast():
                loss_sum = self.parts.loss(model, mb)
                # Normalise over the items of the whole step (all micro-batches, all processes);
                # DDP averages gradients over processes, hence the factor num_processes.
                accelerator.backward(loss_sum * (accelerator.num_processes / items))
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
        """This process's batches of an epoch: the global batches (grouped by length over all the data), each
        cut into one slice per process, so the batch order does not depend on the number of processes."""
        world = self.accelerator.num_processes
        b = epoch_batches(self.parts.train.lengths, self.tc.per_device_train_batch_size * world, self.tc.seed, epoch,
                          group_by_length=self.tc.group_by_length, drop_last=self.parts.train_batch_drop_last)
        return shard(b, self.accelerator.process_index, world)

    def _steps(self):
        """Yield (epoch, index of the first batch, batches in the epoch, list of batch index lists, repeat) per
        step; a task with step_repeats > 1 takes that many steps on each group of batches (repeat 0, 1, ...)."""
        accum, repeats = self.tc.gradient_accumulation_steps, self.parts.step_repeats
        epoch, start, first_repeat = self.epoch, self.batch_pos, self.repeat
        while True:
            batches = self._batches(epoch)
            for s in range(start, len(batches), accum):
                group = batches[s:s + accum]
                for r in range(first_repeat, repeats):
                    yield epoch, s, len(batches), group, r
                first_repeat = 0
            epoch, start = epoch + 1, 0

    def _collate(self, indices: list[int], epoch: int, batch_index: int) -> dict:
        rows = self.parts.train.take(indices)
        if self.parts.train_collate is not None:
            # each process draws its own stream for its slice of the global batch (rank 0: the 1-process seed)
            seed = (self.tc.seed * 1_000_003 + epoch * 100_003 + batch_index
                    + self.accelerator.process_index * 7_919_993) % (2**63)
            return self.parts.train_collate(rows, seed)
        return self.parts.collate(rows)

    # -------------------------------------------------------------------------------- state
    def state(self) -> dict:
        return {**asdict(self.loop_state), "total_steps": self.total_steps, "seed": self.tc.seed,
                "world_size": self.accelerator.num_processes, "batches_per_epoch": self.batches_per_epoch,
                "step_stats": dict(self.parts.step_stats.window) if self.parts.step_stats else None,
                "task_state": self.parts.task_state.state_dict() if self.parts.task_state is not None else None}

    def save(self) -> Optional[Path]:
        self.accelerator.wait_for_everyone()
        path = None
        full = ckpt.full_state(self.model, self.optimizer) if self.sharded else None  # a collective under FSDP
        if self.is_main:
            path = ckpt.save_checkpoint(self.ckpt_root / f"step-{self.step}", self.accelerator.unwrap_model(self.model),
                                        self.optimizer, self.scheduler, self.state(), self.parts.tokenizer,
                                        scaler=getattr(self.accelerator, "scaler", None), full=full)
            keep = {self.ckpt_root / f"step-{self.best_step}"} if self.best_step is not None else set()
            ckpt.rotate(self.ckpt_root, self.tc.save_total_limit, keep=keep)
        self.accelerator.wait_for_everyone()
        self.last_saved = self.ckpt_root / f"step-{self.step}"
        return path

    def resume(self, folder: Path) -> None:
        fresh_lrs = [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]
        state = ckpt.load_training_state(folder, self.accelerator.unwrap_model(self.model), self.optimizer, self.scheduler,
                                         scaler=getattr(self.accelerator, "scaler", None), sharded=self.sharded)
        if hasattr(self.scheduler, "lr_lambdas") and \
                [round(x, 12) for x in self.scheduler.base_lrs] != [round(x, 12) for x in fresh_lrs]:
            # The checkpoint's optimizer carries its learning rates; a resume after lowering
            # train.learning_rate (say, after a NaN) must use the new ones from here on.
            log.info("learning rate changed since the checkpoint (%g -> %g): continuing with the new one",
                     self.scheduler.base_lrs[0], fresh_lrs[0])
            self.scheduler.base_lrs = fresh_lrs
            for group, base, fn in zip(self.optimizer.param_groups, fresh_lrs, self.scheduler.lr_lambdas):
                group["initial_lr"] = base
                group["lr"] = base * fn(self.scheduler.last_epoch)
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        if state.get("world_size", 1) != self.accelerator.num_processes:
            raise LmforgeError(f"checkpoint {folder} was written with {state.get('world_size')} processes, "
                               f"this run has {self.accelerator.num_processes}", "resume with the same number of processes")
        if state.get("batches_per_epoch", self.batches_per_epoch) != self.batches_per_epoch or \
                state.get("seed", self.tc.seed) != self.tc.seed:
            log.warning("the data, batch size or seed differ from the checkpoint's: the resumed run will not "
                        "see the same batches as an uninterrupted one")
        fresh = LoopState()
        self.loop_state = LoopState(**{f.name: state.get(f.name, getattr(fresh, f.name)) for f in fields(LoopState)})
        if self.parts.step_stats is not None:
            self.parts.step_stats.window = dict(state.get("step_stats") or {})
        if self.parts.task_state is not None:
            self.parts.task_state.load_state_dict(state.get("task_state"))
        self.last_saved = Path(folder)
        self.logw.truncate_after(self.step)
        if self.is_main:
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
            def write(d: Path):
                for f in src.iterdir():
                    if f.name == "config.json" or f.name.startswith("model") and f.suffix in (".safetensors", ".json"):
                        shutil.copy2(f, d / f.name)
                (d / ckpt.BEST_STEP).write_text(str(self.best_step))
            atomic_dir(best, write)
        else:
            shutil.rmtree(best, ignore_errors=True)
            if self.best_step is not None:
                log.warning("best/ held the weights of step %s of the cut-off run and those of step %s (the best at "
                            "the checkpoint) were rotated away: the final model will be the best one evaluated from "
                            "now on if one beats step %s, else the last one", held, self.best_step, self.best_step)

    # -------------------------------------------------------------------------------- eval
    def evaluate(self, progress=None, split: Optional[EncodedSplit] = None, desc="eval") -> dict:
        split = split or self.parts.eval
        with self._eager():
            return evaluate_split(self.model, split, self.parts, self.tc.per_device_eval_batch_size, self.accelerator,
                                  progress=progress, desc=desc)

    def _improved(self, value: float) -> bool:
        if self.best is None or (value is not None and not math.isnan(value) and
                                 (value > self.best if self.greater_is_better else value < self.best)):
            return True
        return False

    def _after_eval(self, metrics: dict) -> bool:
        """Record an evaluation; save the best model; return True to stop early."""
        name = self.best_metric_name
        if name not in metrics:
            raise LmforgeError(f"metric_for_best_model '{name}' is not an eval metric of this task",
                               f"choose one of: {', '.join(k for k, v in metrics.items() if isinstance(v, (int, float)))}")
        value = metrics[name]
        rec = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4),
               **{f"eval_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}}
        self.eval_history.append(rec)
        self.logw.write(rec)
        if is_plateau(self.scheduler):
            self.scheduler.step(value)
        if self._improved(value):
            self.best, self.best_step, self.bad_evals = value, self.step, 0
            weights = ckpt.full_state(self.model)[0] if self.tc.load_best_model_at_end and self.sharded else None
            if self.tc.load_best_model_at_end and self.is_main:
                model = self.accelerator.unwrap_model(self.model)
                step = self.step

                def write_best(d: Path):
                    model.save_pretrained(d, safe_serialization=True, **({"state_dict": weights} if weights else {}))
                    (d / ckpt.BEST_STEP).write_text(str(step))
                atomic_dir(self.ckpt_root / "best", write_best)
        else:
            self.bad_evals += 1
        if self.parts.samples and (self.is_main or self.sharded):  # FSDP: every process runs the forwards
            with self._eager():
                samples = self.parts.samples(self.accelerator.unwrap_model(self.model))
            if samples and self.is_main:
                self.logw.write({"step": self.step, "samples": samples})
        patience = self.tc.early_stopping_patience
        return bool(patience and self.bad_evals >= patience)

    # -------------------------------------------------------------------------------- fit
    def fit(self, progress: Optional[TrainProgress] = None) -> FitResult:
        with self.stop:
            return self._fit(progress)

    def _nonfinite(self, loss_val: float, grad_norm: float) -> bool:
        """Handle a NaN/Inf loss or gradient: True = skip this batch; raises when the run must stop."""
        if getattr(self.accelerator, "scaler", None) is not None and math.isfinite(loss_val):
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
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            flag = torch.tensor(float(stop), device=self.accelerator.device)
            stop = bool(self.accelerator.reduce(flag, "sum").item() > 0)
        return stop

    def _fit(self, progress: Optional[TrainProgress] = None) -> FitResult:
        self.model.train()
        start = time.perf_counter()
        self.tokens_seen, self.win_tokens, self.win_start = 0, 0, time.perf_counter()
        self.eval_seconds = 0.0
        stopped = False
        if progress:
            progress.start_train(self.total_steps, self.step)
        steps = self._steps()
        while self.step < self.total_steps:
            epoch, first, n_in_epoch, group, repeat = next(steps)
            pos = first + len(group)
            done = self._train_step(epoch, first, group, pos, n_in_epoch, progress, repeat)
            if done is None:  # an empty or skipped step
                continue
            stopped = self._evaluate_and_save(pos >= n_in_epoch and self.repeat == 0, progress)
            if stopped:
                log.info("early stopping at step %d: no improvement in %d evaluations", self.step, self.bad_evals)
                break
            if self._stop_requested():
                self._interrupt()
        runtime = time.perf_counter() - start
        self._restore_best()
        train_time = runtime - self.eval_seconds  # tokens/s over training steps only, not evaluations
        tok_s = self.tokens_seen * self.accelerator.num_processes / train_time if train_time > 0 else 0.0
        return FitResult(steps=self.step, epochs=round(self.step / self.steps_per_epoch, 4), train_loss=self.last_loss,
                         runtime_s=runtime, eval_s=self.eval_seconds, best_metric=self.best, best_step=self.best_step,
                         eval_history=self.eval_history, tokens_per_s=tok_s, mfu=self._mfu(tok_s),
                         peak_mem_mb=peak_memory_mb(self.accelerator.device), stopped_early=stopped)

    def _train_step(self, epoch: int, first: int, group: list, pos: int, n_in_epoch: int,
                    progress: Optional[TrainProgress], repeat: int = 0) -> Optional[float]:
        """One optimizer step over the micro-batches in `group`; its loss, or None when skipped."""
        accelerator = self.accelerator
        t_step = time.perf_counter()
        micro = [self._collate(idx, epoch, first + j) for j, idx in enumerate(group)]
        if self.parts.rollout is not None:  # online tasks: the batches come from the current model (rollouts)
            policy = accelerator.unwrap_model(self.model)
            micro = [self.parts.rollout(policy, mb, RolloutInfo(epoch, first + j, repeat, self.step))
                     for j, mb in enumerate(micro)]
        local_items = sum(int(b["n_items"]) for b in micro)
        items = accelerator.reduce(torch.tensor(float(local_items), device=accelerator.device), "sum").item() \
            if accelerator.num_processes > 1 else float(local_items)
        if items == 0:
            return None
        step_loss, n_tok = self._step_grads(micro, items)
        self.tokens_seen += n_tok
        self.win_tokens += n_tok
        grad_norm = float(self._clip_gradients())
        loss_val = (accelerator.reduce(step_loss, "sum").item() if accelerator.num_processes > 1
                    else step_loss.item()) / items
        if repeat + 1 < self.parts.step_repeats:
            next_position = (epoch, first, repeat + 1)  # the same batches again
        else:
            next_position = (epoch, pos, 0) if pos < n_in_epoch else (epoch + 1, 0, 0)
        if not math.isfinite(loss_val) or not math.isfinite(grad_norm):
            if self._nonfinite(loss_val, grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                self.epoch, self.batch_pos, self.repeat = next_position
                if self._stop_requested():
                    self._interrupt()
                return None
        else:
            self.nan_streak = 0
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        if not is_plateau(self.scheduler):  # a plateau schedule steps on the eval metric (_after_eval)
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        shape = tuple(micro[-1]["input_ids"].shape)
        if accelerator.device.type == "cpu" and shape != self._last_shape:
            release_memory()  # only when batch shapes vary (fixed shapes reuse the same memory)
        self._last_shape = shape
        self.step += 1
        self.epoch, self.batch_pos, self.repeat = next_position
        self.last_loss = loss_val
        self.win_loss += loss_val
        self.win_items += 1
        self.step_times.append(time.perf_counter() - t_step)
        del self.step_times[:-1000]
        if len(self.step_times) == 2:  # the first step warms up; the second says what a step costs
            self._warn_if_long(self.step_times[-1])
        if progress:
            progress.update_train(self.step, loss_val, lr)
        if self.step % self.tc.logging_steps == 0 or self.step == self.total_steps:
            self._log_window(epoch + pos / n_in_epoch, lr, grad_norm, progress)
        return loss_val

    def _warn_if_long(self, per_step: float) -> None:
        left = per_step * (self.total_steps - self.step)
        if left > 3600:
            log.warning("at %.2f s per step, the remaining %s steps take about %.1f h here: to try the recipe first, "
                        "lower train.max_steps or data.max_train_samples (Ctrl-C stops cleanly; --resume goes on)",
                        per_step, f"{self.total_steps - self.step:,}", left / 3600)

    def _clip_gradients(self) -> torch.Tensor:
        if self.tc.max_grad_norm:
            return self.accelerator.clip_grad_norm_(self.model.parameters(), self.tc.max_grad_norm)
        return torch.norm(torch.stack([p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]))

    def _log_window(self, epoch_float: float, lr: float, grad_norm: float, progress: Optional[TrainProgress]) -> None:
        """One log.jsonl line: the mean loss of the steps since the last line, and the window's tokens/s."""
        dt = time.perf_counter() - self.win_start
        tok_s = self.win_tokens * self.accelerator.num_processes / dt if dt > 0 else 0.0
        mfu = self._mfu(tok_s)
        self.logw.write({"step": self.step, "epoch": round(epoch_float, 4),
                         "loss": round(self.win_loss / self.win_items, 6),
                         "lr": lr, "grad_norm": round(grad_norm, 6), "tokens_per_s": round(tok_s, 1),
                         "mfu": round(mfu, 4) if mfu is not None else None,
                         "peak_mem_mb": round(peak_memory_mb(self.accelerator.device), 1),
                         **(self.parts.step_stats.drain() if self.parts.step_stats else {})})
        if progress:
            progress.set_rate(tok_s, mfu, self.win_loss / self.win_items if self.win_items else None)
        self.win_tokens, self.win_start = 0, time.perf_counter()
        self.win_loss, self.win_items = 0.0, 0

    def _has_eval(self) -> bool:
        return self.tc.eval_strategy != "no" and self.parts.eval is not None and len(self.parts.eval) > 0

    def _evaluate_and_save(self, epoch_end: bool, progress: Optional[TrainProgress]) -> bool:
        """Evaluate and checkpoint when the strategies say so; True when early stopping ends the run."""
        tc, stopped = self.tc, False
        eval_every = tc.eval_steps if tc.eval_strategy == "steps" else None
        if self._has_eval() and ((eval_every and self.step % eval_every == 0) or
                                 (tc.eval_strategy == "epoch" and epoch_end) or self.step == self.total_steps):
            eval_start = time.perf_counter()
            metrics = self.evaluate(progress)
            if progress:
                progress.note_eval(metrics, self.best_metric_name)
            stopped = self._after_eval(metrics)  # with the best-model save and the sample generations
            spent = time.perf_counter() - eval_start
            self.win_start += spent  # tokens/s counts training time only
            self.eval_seconds += spent
        save_every = tc.save_steps if tc.save_strategy == "steps" else None
        if (save_every and self.step % save_every == 0) or (tc.save_strategy == "epoch" and epoch_end):
            self.save()
        return stopped

    def _restore_best(self) -> None:
        """With load_best_model_at_end: put the best evaluated weights back into the model."""
        best_dir = self.ckpt_root / "best"
        if not (self.tc.load_best_model_at_end and self._has_eval() and best_dir.exists()):
            return
        self.accelerator.wait_for_everyone()
        best = best_dir / "model.safetensors"
        marker = best_dir / ckpt.BEST_STEP
        held = int(marker.read_text()) if marker.exists() else self.best_step
        if best.exists() and self.best_step != self.step and held == self.best_step:
            log.info("loading the best model (step %d, %s = %.4f)", self.best_step,
                     self.best_metric_name, self.best)
            if self.sharded:
                ckpt.load_full_state(self.model, None, load_file(str(best)), None)
            else:
                self.accelerator.unwrap_model(self.model).load_state_dict(load_file(str(best)), strict=False)

    def _interrupt(self) -> None:
        """Save a checkpoint (unless this step already has one) and stop with TrainingInterrupted."""
        path = self.ckpt_root / f"step-{self.step}"
        if self.step > 0 and self.last_saved != path:
            self.save()
        where = f"checkpoint saved to {path}" if self.step > 0 else "no step was finished, nothing to save"
        raise TrainingInterrupted(f"training stopped by {self.stop.signal} at step {self.step}: {where}",
                                  "continue with the same command plus --resume", checkpoint=path)


for _field in fields(LoopState):  # trainer.step etc. are the LoopState's fields
    setattr(Trainer, _field.name, state_property(_field.name))
