"""The Task contract: everything that differs between task families, behind one interface.

The training loop, the evaluation, the server, the doctor and the report ask a `Task` (or the
`TaskParts` its `setup` assembles); nothing outside `tasks/` branches on a task's name. Adding a
task family is one new module here plus one line in `tasks/__init__.py` (see docs/ARCHITECTURE.md).

The batch-dict contract (what every collate function returns, what the loop reads):
    input_ids    LongTensor [batch, length]    the loop reads its shape (memory release, compile)
    n_items      int    the items the loss sums over (examples, or target tokens); the loop divides the
                        summed loss of a whole accumulated step by the items of that step, so gradient
                        accumulation and several processes do not change the loss
    n_tokens     int    real (non-pad) tokens, for tokens/s and MFU
    ...          whatever the task's loss / eval_step read (attention_mask, labels, position_ids, ...)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ..config import Config, Permissions, load_config
from ..data import pipeline
from ..errors import LmforgeError
from ..runtime import load_function


@dataclass
class EncodedSplit:
    """An encoded split: rows (a `datasets.Dataset` or list of dicts) and their lengths in tokens."""
    rows: Any
    lengths: list[int]
    # the split's own metrics from its eval outputs, when they depend on the split (a retrieval corpus: its queries'
    # relevant documents); None: the task's `finalize`
    finalize: Optional[Callable[[dict], dict]] = None
    # its items are one problem (a retrieval corpus: queries and the documents they search), so a sample of them
    # would measure another problem: `sample` keeps them all
    whole: bool = False

    def __len__(self) -> int:
        return len(self.lengths)

    def subset(self, indices: list[int]) -> "EncodedSplit":
        """The items at `indices`, as a split of its own."""
        rows = [self.rows[i] for i in indices] if isinstance(self.rows, list) else self.rows.select(indices)
        return EncodedSplit(rows, [self.lengths[i] for i in indices], self.finalize, self.whole)

    def sample(self, n: Optional[int], seed: int) -> "EncodedSplit":
        """A seeded sample of at most n items (in their original order), or the split itself when it is no larger
        (or `whole`)."""
        if n is None or len(self) <= n or self.whole:
            return self
        import numpy as np
        return self.subset(sorted(np.random.RandomState(seed).permutation(len(self))[:n].tolist()))

    def take(self, indices: list[int]) -> list[dict]:
        if isinstance(self.rows, list):
            return [self.rows[i] for i in indices]
        cols = self.rows[indices]  # datasets: dict of column -> list
        keys = list(cols)
        return [dict(zip(keys, vals)) for vals in zip(*(cols[k] for k in keys))]


class StepStats:
    """Sums of per-item statistics over a logging window; `drain` gives their means and starts a new window.
    The window is part of a checkpoint's state, so a resumed run logs the same numbers."""

    def __init__(self, names: tuple[str, ...], count: str = "items"):
        self.names, self.count = names, count
        self.window: dict[str, float] = {}

    def add(self, sums: dict) -> None:
        for k, v in sums.items():
            self.window[k] = self.window.get(k, 0.0) + float(v)

    def drain(self) -> dict:
        w, self.window = self.window, {}
        n = w.get(self.count, 0.0)
        return {k: round(w[k] / n, 6) for k in self.names if k in w} if n else {}


@dataclass(frozen=True)
class RolloutInfo:
    """Where a training batch sits in the run, for a task's rollout hook (seeds, reused rollouts)."""
    epoch: int
    batch_index: int  # the micro-batch's index within the epoch
    repeat: int  # 0, or the how-many-th optimizer step on the same batches (step_repeats > 1)
    step: int  # optimizer steps done before this one


@dataclass
class TaskParts:
    """What a task's `setup` (or `eval_setup`) assembles for the loop and the evaluation."""
    task: "Task"
    model: torch.nn.Module
    tokenizer: Any
    train: Optional[EncodedSplit]
    eval: Optional[EncodedSplit]
    collate: Callable[[list[dict]], dict]
    # (model, batch) -> sum of the per-item losses (see the batch-dict contract above)
    loss: Callable[[torch.nn.Module, dict], torch.Tensor]
    # (model, batch) -> dict of tensors to concatenate across batches; finalize -> metrics
    eval_step: Callable[[torch.nn.Module, dict], dict]
    finalize: Callable[[dict], dict]
    new_param_names: set[str] = field(default_factory=set)
    # token ids added to the vocabulary for this run (a chat template's tokens): LoRA trains their embedding rows
    added_token_ids: list[int] = field(default_factory=list)
    # learning rate of the newly initialised parameters when train.head_learning_rate is not set
    # (None: the one learning rate for all)
    head_learning_rate: Optional[float] = None
    test: Optional[EncodedSplit] = None
    summary: dict = field(default_factory=dict)  # data summary for the manifest and report
    notes: list[str] = field(default_factory=list)  # things to say once in the log and model card
    fingerprints: dict = field(default_factory=dict)
    # optional: model -> list of sample outputs (generations, fill-mask) logged at each evaluation
    samples: Optional[Callable[[torch.nn.Module], list]] = None
    # optional: (rows, seed) -> batch for training batches that need randomness (MLM masking).
    # The loop derives the seed from (train.seed, epoch, batch index), so a resumed run draws
    # the same masks as an uninterrupted one.
    train_collate: Optional[Callable[[list[dict], int], dict]] = None
    train_batch_drop_last: bool = False
    # every training batch has the same shape (packed blocks): torch.compile pays off (train.compile: auto)
    fixed_shapes: bool = False
    # share of the tokens at which the output layer runs (masked-lm: the masked ones), for MFU
    output_layer_share: float = 1.0
    # optional: statistics of the training steps (reward accuracy, ...) added to each log.jsonl line
    step_stats: Optional["StepStats"] = None
    # eval.metrics_function, loaded: fn(predictions, labels, batch_info) -> dict, merged into the metrics
    metrics_function: Optional[Callable] = None
    metrics_function_name: Optional[str] = None
    # optional, online tasks (grpo): (model, collated batch, RolloutInfo) -> the batch the loss reads, built with the
    # current weights (sample, score, advantages); called before the step's items are counted
    rollout: Optional[Callable[[torch.nn.Module, dict, RolloutInfo], dict]] = None
    # optimizer steps taken on each step's batches (grpo.num_iterations: the rollouts reused)
    step_repeats: int = 1
    # optional: state a checkpoint must keep beyond the weights and the loop's (state_dict() -> JSON-able,
    # load_state_dict(d)), e.g. rollouts reused by the next steps
    task_state: Optional[Any] = None
    # optional: writes files a saved model needs beyond the weights and tokenizer into its folder (model/, merged
    # LoRA), e.g. an embedding model's sentence-transformers modules
    save_files: Optional[Callable[[Path], None]] = None

    @property
    def best_metric(self) -> str:
        return self.task.best_metric

    @property
    def greater_is_better(self) -> bool:
        return self.task.greater_is_better


class Task:
    """One task family. Subclasses set the attributes and implement `setup`, `eval_setup` and
    `load_for_use`; the other methods have defaults that fit most tasks."""

    name: str = ""
    """The config's `task:` value."""
    auto_class: Any = None
    """The transformers Auto* class of the task's models."""
    architectures: tuple[str, ...] = ()
    """Endings of a config's architecture names that mean this task (`task_of` a bare model folder)."""
    best_metric: str = "loss"
    """Eval metric that picks the best checkpoint by default (train.metric_for_best_model overrides)."""
    greater_is_better: bool = False
    endpoint: str = ""
    """The `lmforge serve` endpoint that uses a model of this task."""
    playground: str = ""
    """The view of the serve playground page for this task: classify, fill-mask, embed, rerank, generate (a prompt continued) or
    chat (a multi-turn conversation through the model's chat template, over /v1/chat/completions)."""
    data_kind: str = "corpus"
    # options of `lmforge eval` that only some tasks have, passed to their eval_setup as keywords (causal-lm:
    # "stride"); any other task refuses them in one line, in one place (api.evaluate)
    eval_options: tuple[str, ...] = ()
    # the config key that bounds an example's tokens (what the out-of-memory advice tells a user to lower)
    length_key: str = "data.block_size"
    """'table' (rows with text and label columns), 'corpus' (documents) or 'conversations': how `doctor`
    checks the data."""
    report_sections: tuple[str, ...] = ()
    """Optional sections of report.html that apply (e.g. 'confusion', 'misclassified')."""
    samples_title: str = "Samples"
    """Title of the report's section of samples logged at each evaluation."""
    pipeline_tag: str = ""
    """The Hugging Face pipeline that runs the model (model card, `pipeline(...)`)."""
    usage_example: str = ""
    """One line of Python after `pipe = pipeline(...)` that shows the model at work (model card)."""
    usage_code: str = ""
    """The model card's code instead of the pipeline lines, when another library runs the model ({model}: its
    folder)."""
    library_name: str = "transformers"
    """The library that loads the model (model card metadata)."""
    starter: dict = {}
    """`lmforge init`: {model, data (built-in defaults), about (one line), keys (section -> task-specific keys to
    write out), values (section -> key -> starter value)}."""
    try_command: str = ""
    """The command that tries a trained model ({run} = its run folder), printed when `lmforge train` ends."""

    def intended_use(self, summary: dict) -> str:
        """The model card's 'Intended use' sentence."""
        return ""

    # ------------------------------------------------------------------ training and evaluation
    def setup(self, cfg: Config, log: logging.Logger, permissions: Permissions = Permissions()) -> TaskParts:
        raise NotImplementedError

    def eval_setup(self, model_dir: Path, data: str, overrides=None) -> TaskParts:
        """A saved model and new data, encoded as its run did (options in `eval_options` come as keywords)."""
        raise NotImplementedError

    def prepare(self, cfg: Config, progress: bool = True) -> dict:
        """Tokenize the config's data ahead of training (`lmforge prepare`)."""
        raise LmforgeError(f"lmforge prepare builds the token cache of causal-lm corpora; task {self.name} "
                           "tokenizes its data when training starts", "run lmforge train directly")

    # ------------------------------------------------------------------ use
    def load_for_use(self, model_dir: Path, allow_untrained: bool = False) -> tuple[Any, Any]:
        """(model in eval mode, tokenizer) of a saved model or LoRA adapter folder of this task. A model whose
        task head was never trained (its weights would be random now) is refused unless `allow_untrained`."""
        raise NotImplementedError

    def serve_info(self, model, tokenizer) -> dict:
        """What the server's /info shows beyond the model's type and size."""
        return {}

    # ------------------------------------------------------------------ doctor
    def model_check_config(self, cfg: Config) -> Config:
        """The config whose model and tokenizer the doctor checks before setup (a distillation student built from
        its teacher: the teacher's)."""
        return cfg

    def tokenizer_findings(self, specials: dict) -> list[tuple[str, str]]:
        """(level, message) about the tokenizer's special tokens ({'pad': ..., 'eos': ...}); level is
        'problem', 'warning' or 'info'."""
        out = []
        if specials.get("pad") is None:
            if specials.get("eos") is None:
                out.append(("problem", "the tokenizer has neither a pad nor an eos token — add a pad token to "
                                       "the tokenizer"))
            else:
                out.append(("info", f"no pad token: the eos token {specials['eos']!r} will pad"))
        return out

    def metric_inputs(self, outputs: dict) -> tuple:
        """(predictions, labels, batch_info) of a whole evaluation, for eval.metrics_function."""
        raise NotImplementedError

    def describe_example(self, parts: TaskParts, ids: list[int], labels: Optional[torch.Tensor]) -> list[str]:
        """Lines showing one training example's labels (the doctor prints them under the decoded input)."""
        if labels is None:
            return []
        lab = labels[: len(ids)].tolist()
        scored = [i for i, t in enumerate(lab) if t != -100]
        unscored = [ids[i] for i in range(len(ids)) if lab[i] == -100]
        line = f"  labels: loss on {len(scored)} of {len(ids)} positions"
        if len(scored) < len(ids) - 1:
            line += f"; no loss on: {clip(parts.tokenizer.decode(unscored), 120)}"
        return [line]


def eval_config(model_dir: Path, overrides, task: Task) -> Config:
    """The config a saved model's run used (the default recipe for a bare folder, as `task`), with the
    overrides; the run's data format is dropped unless overridden (the file evaluated need not have it)."""
    run_cfg = Path(model_dir).parent / "config.yaml"
    cfg = load_config(run_cfg if run_cfg.exists() else None, overrides)
    if not run_cfg.exists():
        cfg = cfg.model_copy(update={"task": task.name})
    if not overrides:
        cfg.data.format = None
    return cfg


def eval_rows(rows, overrides, cfg: Config):
    """The rows `lmforge eval --data` scores (data.pipeline.eval_rows: the run's caps are not inherited)."""
    return pipeline.eval_rows(rows, overrides, cfg.train.seed)


def attach_metrics_function(parts: TaskParts, cfg: Config) -> TaskParts:
    """eval.metrics_function of the config, loaded onto the parts (training runs and `lmforge eval`)."""
    if cfg.eval.metrics_function:
        parts.metrics_function = load_metrics_function(cfg.eval.metrics_function)
        parts.metrics_function_name = cfg.eval.metrics_function
    return parts


def load_metrics_function(spec: str) -> Callable:
    return load_function(spec, "eval.metrics_function", "metrics_function: my_metrics:f1_weighted")


def clip(text: str, n: int = 300) -> str:
    """One line of at most n characters (newlines shown as \\n)."""
    text = text.replace("\n", "\\n")
    return text if len(text) <= n else text[:n] + f"... ({len(text)} chars)"
