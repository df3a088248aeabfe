"""The one typed config: YAML is its serialization, ``--section.key value`` overrides it.

Every option has a type, a default and a one-line docstring. Unknown keys and wrong types
are :class:`~lmforge.errors.LmforgeError` naming the key and the closest valid one.

    lmforge train examples/sentiment-minilm.yaml --train.learning_rate 1e-4
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, ValidationError, field_validator, model_validator

from .config_io import deep_merge, parse_overrides, parse_value, read_yaml  # noqa: F401 (re-exported)
from .config_ranges import AT_LEAST_1, NON_NEGATIVE, POSITIVE, SEED, SHARE, Range, Section  # noqa: F401
from .config_posttrain import DistillConfig, GrpoConfig, RewardConfig  # noqa: F401 (GrpoConfig re-exported)
from .config_retrieval import EmbeddingConfig, RerankerConfig
from .errors import LmforgeError, did_you_mean

# transformers.SchedulerType's values (a test keeps them equal; a Literal gives a "did you mean" at load time).
SchedulerName = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                        "inverse_sqrt", "reduce_lr_on_plateau", "cosine_with_min_lr", "cosine_warmup_with_min_lr",
                        "warmup_stable_decay", "greedy"]
# The task families (tasks/__init__.py registers one module for each; a test keeps the two lists equal).
TaskName = Literal["classification", "causal-lm", "masked-lm", "sft", "dpo", "grpo", "embedding", "reranker", "reward", "distill"]
TRACKERS = ("tensorboard", "mlflow", "wandb", "trackio")


@dataclass(frozen=True)
class SamplingParams:
    """How to generate, passed whole from the CLI through lmforge.api to generation (greedy by default).

        api.generate("runs/kjv", ["In the beginning"], sampling=SamplingParams(max_new_tokens=40, temperature=0.8))
    """
    max_new_tokens: int = 50
    temperature: Optional[float] = None  # None or 0: greedy
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    num_return_sequences: int = 1
    seed: Optional[int] = None  # reset before each prompt: the same seed gives the same text
    stop: tuple[str, ...] = ()  # end the text where one of these strings starts (it is not part of the text)

    @property
    def greedy(self) -> bool:
        return not self.temperature and self.top_k is None and self.top_p is None and self.repetition_penalty is None


class ModelConfig(Section):
    RANGES = {"attention_dropout": SHARE}
    name: Optional[str] = None
    """Built-in alias (see `lmforge models`), a local folder, or a Hub id."""
    from_config: Optional[Union[dict[str, Any], str]] = None
    """Build a fresh model: {architecture: gpt2|llama|bert|roberta, sizes...} or a path to a config.json."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) when `name` is a Hub id."""
    trust_remote_code: bool = False
    """Run model code from the Hub. Refused unless also given on the command line."""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    """Dtype the weights are loaded in (training keeps fp32 master weights on CPU)."""
    attn_implementation: Optional[str] = None
    """Attention kernel to ask transformers for (sdpa, eager, flash_attention_2, ...)."""
    attention_dropout: Optional[float] = None
    """Override the model's attention-probability dropout; 0 lets CPU attention use the fused kernel."""
    init_output_bias: bool = True
    """masked-lm: an output bias missing from the checkpoint starts at the training text's log token frequencies."""


class MixSource(Section):
    """One source of a mixed `data.train` / `data.eval`: `{path: a.jsonl, weight: 0.7}`."""
    RANGES = {"weight": POSITIVE}
    path: str
    """A file, a folder, a built-in name or a Hub id, read and checked like a single source."""
    weight: float = 1.0
    """This source's share of the drawn rows (weights are normalised to sum to 1)."""


DataSource = Optional[Union[str, list[MixSource]]]


class DataConfig(Section):
    RANGES = {"validation_split": Range(0, 1, lo_open=True, hi_open=True), "max_length": AT_LEAST_1,
              "max_train_samples": AT_LEAST_1, "max_eval_samples": AT_LEAST_1, "max_eval_blocks": AT_LEAST_1, "num_proc": AT_LEAST_1,
              "block_size": Range(2), "mlm_probability": Range(0, 1, lo_open=True, hi_open=True),
              "eval_mask_seed": SEED, "streaming_threshold_mb": POSITIVE}
    train: DataSource = None
    """Training data: a file (csv/tsv/json/jsonl/parquet/txt), a folder, a built-in name, a Hub id, or a list of {path, weight} sources mixed with probabilities from train.seed."""
    eval: DataSource = None
    """Evaluation data (same forms as `train`). Carved from train when absent."""
    test: DataSource = None
    """Optional test data, evaluated once at the end by every task (test metrics in metrics.json, the report and the card)."""
    mix_stop: Literal["first_exhausted", "all_exhausted"] = "first_exhausted"
    """A mix of sources stops drawing when one source runs out (no row repeated), or when all did (small sources repeated)."""
    format: Optional[Literal["csv", "tsv", "json", "jsonl", "parquet", "txt"]] = None
    """File format; inferred from the extension when absent."""
    text_column: Optional[str] = None
    """Column holding the text; auto-detected from common names when absent."""
    text_pair_column: Optional[str] = None
    """Second text column for sentence-pair classification."""
    label_column: Optional[str] = None
    """Column holding the label (classification); auto-detected when absent."""
    validation_split: float = 0.1
    """Fraction of train held out for evaluation when no `eval` is given (stratified, seeded)."""
    max_length: Optional[int] = None
    """Truncate each example to this many tokens (classification; embedding: each text; reranker: each query + document pair). Default: model limit capped at 512."""
    max_train_samples: Optional[int] = None
    """Train on N rows (examples, documents, conversations or pairs) of a seeded shuffle, taken after the hold-out and before encoding."""
    max_eval_samples: Optional[int] = None
    """Evaluate on N rows of a seeded shuffle of the eval rows, before encoding (the same rows in every run with that seed)."""
    max_eval_blocks: Optional[int] = None
    """Language models (causal-lm, masked-lm): evaluate on a seeded sample of at most N blocks of the encoded eval split, the same blocks at every evaluation (a row of a corpus is a whole document, often too coarse to cap)."""
    num_proc: Optional[int] = None
    """Processes for tokenization (default: all cores for large data, 1 for small)."""
    block_size: Optional[int] = None
    """Language models: tokens per block after concatenating documents. Default: model limit capped at 512."""
    remainder: Literal["drop", "pad"] = "drop"
    """Language models: the last, shorter block of a split is dropped or kept (padded in its batch)."""
    packing: Literal["pack", "truncate"] = "pack"
    """causal-lm: pack = concatenate documents (EOS between) into full blocks, attention kept inside each document; truncate = one padded example per document."""
    document_separator: Optional[str] = None
    """Text corpora: split a .txt file into documents at this string ('blank-line' or '\\n\\n' for paragraphs); default: one document per line."""
    sample_prompts: Optional[list[str]] = None
    """causal-lm: prompts for the sample generations logged at each evaluation (default: openings of 3 eval documents)."""
    masking: Literal["token", "whole-word"] = "token"
    """masked-lm: mask single tokens, or every piece of a chosen word together (any fast tokenizer)."""
    mlm_probability: float = 0.15
    """masked-lm: share of tokens (or words) chosen for prediction; 80% [MASK], 10% random, 10% unchanged."""
    eval_mask_seed: int = 0
    """masked-lm: seed of the one fixed mask of the eval/test sets (same number in every run)."""
    streaming: Optional[bool] = None
    """Language models: tokenize into a memory-mapped token cache on disk (flat memory). Default: on above streaming_threshold_mb."""
    streaming_threshold_mb: float = 256.0
    """Language models: train data above this size (MB) switches streaming on when `streaming` is not set."""
    chat_format: Optional[Literal["messages", "sharegpt", "alpaca", "prompt-completion"]] = None
    """sft: the shape of the conversation data; detected from the columns when absent."""
    train_on: Literal["assistant", "last", "all"] = "assistant"
    """sft: the tokens with loss: every assistant turn with its end-of-turn token, the last assistant turn only, or all."""
    prompt_column: Optional[str] = None
    """grpo: the column holding each prompt (text, or role/content messages); auto-detected (prompt, messages, question, ...) when absent."""


class TrainConfig(Section):
    RANGES = {"num_train_epochs": POSITIVE, "max_steps": Range(-1), "learning_rate": Range(0, 10, lo_open=True),
              "head_learning_rate": Range(0, 10, lo_open=True), "per_device_train_batch_size": AT_LEAST_1,
              "per_device_eval_batch_size": AT_LEAST_1, "before_eval_max_samples": AT_LEAST_1, "gradient_accumulation_steps": AT_LEAST_1,
              "weight_decay": NON_NEGATIVE, "adam_beta1": SHARE, "adam_beta2": SHARE, "adam_epsilon": POSITIVE,
              "momentum": SHARE, "warmup_ratio": SHARE, "warmup_steps": NON_NEGATIVE, "max_grad_norm": POSITIVE,
              "eval_steps": AT_LEAST_1, "save_steps": AT_LEAST_1, "save_total_limit": AT_LEAST_1,
              "logging_steps": AT_LEAST_1, "seed": SEED, "early_stopping_patience": AT_LEAST_1,
              "dataloader_num_workers": NON_NEGATIVE, "max_consecutive_nan_skips": AT_LEAST_1}
    num_train_epochs: float = 1.0
    """Epochs over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Total optimizer steps; overrides num_train_epochs when > 0."""
    learning_rate: float = 5e-5
    """Peak learning rate."""
    head_learning_rate: Optional[float] = None
    """Learning rate for newly initialised parameters (e.g. a classifier head); default: learning_rate."""
    per_device_train_batch_size: int = 16
    """Examples (or blocks) per device per micro-batch."""
    per_device_eval_batch_size: int = 64
    """Examples per device per evaluation batch."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the loss is normalised over all of their items."""
    weight_decay: float = 0.01
    """AdamW weight decay (never applied to biases and norm weights)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    optim: Literal["adamw", "adafactor", "sgd", "adamw_8bit"] = "adamw"
    """Optimizer: adamw (fused where the device supports it), adafactor (transformers'), sgd, adamw_8bit (bitsandbytes, GPU)."""
    momentum: float = 0.0
    """SGD momentum (optim: sgd)."""
    lr_scheduler_type: SchedulerName = "linear"
    """Learning-rate schedule, any of transformers.get_scheduler's: linear, cosine, cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt, reduce_lr_on_plateau, cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay, greedy."""
    lr_scheduler_kwargs: dict[str, Any] = {}
    """Extra arguments of the schedule (e.g. {num_cycles: 2}, {min_lr_rate: 0.1}, {num_decay_steps: 20}, {patience: 2})."""
    warmup_ratio: float = 0.0
    """Fraction of the steps spent warming up linearly from 0."""
    warmup_steps: int = 0
    """Warmup steps (overrides warmup_ratio when > 0)."""
    max_grad_norm: Optional[float] = 1.0
    """Clip the global gradient norm to this value (null to disable)."""
    eval_strategy: Literal["steps", "epoch", "no"] = "epoch"
    """When to evaluate during training."""
    eval_steps: Optional[int] = None
    """Evaluate every N optimizer steps (eval_strategy: steps)."""
    before_eval_max_samples: Optional[int] = 512
    """The evaluation before training scores a seeded sample of at most this many eval items (examples, blocks, pairs or prompts; 512 keeps an accuracy's standard error under 2.3 points), and the final model is scored on the same sample too, so the change is measured on the same items. null: the whole eval split. Retrieval evaluations (embedding, reranker) always score the whole split: a sample of a corpus would be another search problem."""
    save_strategy: Literal["steps", "epoch", "no"] = "epoch"
    """When to write a checkpoint."""
    save_steps: Optional[int] = None
    """Checkpoint every N optimizer steps (save_strategy: steps)."""
    save_total_limit: Optional[int] = 2
    """Keep at most this many checkpoints (the best one is never deleted)."""
    metric_for_best_model: Optional[str] = None
    """Eval metric that picks the best checkpoint (default: the task's, e.g. accuracy or loss)."""
    greater_is_better: Optional[bool] = None
    """Whether a higher metric_for_best_model is better; default: lower for loss / perplexity / bits, else the task's."""
    load_best_model_at_end: bool = True
    """Save the best evaluated weights as the final model instead of the last ones."""
    logging_steps: int = 10
    """Write a line to log.jsonl every N optimizer steps."""
    seed: int = 42
    """Seed for everything: shuffling, dropout, initialisation, carving the validation split."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    """auto: bf16 (or fp16) on a GPU that supports it, fp32 on CPU."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    compile: Union[Literal["auto"], bool] = "auto"
    """torch.compile the model's repeated layers for training steps; auto: packed causal-lm runs of 60+ steps (twice the measured break-even)."""
    early_stopping_patience: Optional[int] = None
    """Stop after this many evaluations without improvement of the best metric."""
    dataloader_num_workers: int = 0
    """Worker processes for the data loader."""
    nan_policy: Literal["stop", "skip"] = "stop"
    """On a NaN/Inf loss or gradient: stop (keeping the last good checkpoint) or skip the batch."""
    max_consecutive_nan_skips: int = 5
    """nan_policy skip: stop anyway after this many non-finite batches in a row."""
    loss_function: Optional[str] = None
    """Custom loss 'module:function' called as fn(logits, labels, batch) -> mean loss (causal-lm); default: shifted cross entropy."""
    report_to: Union[list[str], str] = ["tensorboard"]
    """Experiment trackers: a list of tensorboard, mlflow, wandb, trackio, or none."""

    @field_validator("eval_strategy", "save_strategy", mode="before")
    @classmethod
    def _no_is_not_false(cls, value):
        # YAML reads a bare `no` as False: `eval_strategy: no` means the strategy "no".
        return "no" if value is False else value

    @field_validator("report_to", mode="after")
    @classmethod
    def _trackers(cls, value):
        names = [value] if isinstance(value, str) else list(value)
        names = [n.strip().lower() for n in names if n and n.strip()]
        if names in ([], ["none"]):
            return []
        if names == ["all"]:
            return list(TRACKERS)
        for n in names:
            if n not in TRACKERS:
                hint = did_you_mean(n, list(TRACKERS))
                raise ValueError(f"unknown tracker '{n}'.{hint} Trackers: {', '.join(TRACKERS)}, or none")
        return list(dict.fromkeys(names))

    @model_validator(mode="after")
    def _check(self):  # single-key ranges are in RANGES; here only what ties keys together
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set num_train_epochs > 0 or max_steps > 0")
        if self.eval_strategy == "steps" and not self.eval_steps:
            raise ValueError("eval_strategy 'steps' needs eval_steps")
        if self.save_strategy == "steps" and not self.save_steps:
            raise ValueError("save_strategy 'steps' needs save_steps")
        if self.lr_scheduler_type == "reduce_lr_on_plateau" and self.eval_strategy == "no":
            raise ValueError("lr_scheduler_type reduce_lr_on_plateau steps on evaluations: set eval_strategy to "
                             "steps or epoch")
        return self


class TokenizerTrainConfig(Section):
    RANGES = {"vocab_size": Range(2, 10_000_000), "min_frequency": AT_LEAST_1, "max_mb": POSITIVE}
    type: Literal["bpe", "byte-level-bpe", "wordpiece", "unigram"] = "byte-level-bpe"
    """Tokenizer model: byte-level-bpe (GPT-2 style), bpe, wordpiece (BERT style) or unigram."""
    vocab_size: int = 8000
    """Vocabulary size, special tokens included."""
    min_frequency: int = 2
    """Minimum count of a pair (BPE) or word piece (WordPiece) to be merged into the vocabulary."""
    special_tokens: list[str] = []
    """Extra special tokens, added after the ones the type needs (pad/eos/bos/unk/mask)."""
    lowercase: Optional[bool] = None
    """Lowercase the text first (default: yes for wordpiece, no for the others)."""
    files: Optional[list[str]] = None
    """Text files (or folders of .txt) to train on; default: data.train."""
    max_mb: Optional[float] = None
    """Train on at most the first N MB of the text (the vocabulary settles long before a big corpus ends)."""



class TokenizerConfig(Section):
    name: Optional[str] = None
    """Use the tokenizer of this folder or model alias (e.g. with model.from_config)."""
    train: Optional[TokenizerTrainConfig] = None
    """Train a new tokenizer before the run (cached by data and settings): {type, vocab_size, ...}."""


class PeftConfig(Section):
    RANGES = {"r": AT_LEAST_1, "alpha": POSITIVE, "dropout": SHARE}
    r: int = 8
    """LoRA rank: the inner size of each low-rank update."""
    alpha: float = 16
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the input of each LoRA update."""
    target_modules: Optional[Union[list[str], str]] = None
    """Module names to adapt (e.g. [query, value]) or 'all-linear'; default: per architecture (peft's table)."""
    modules_to_save: Optional[list[str]] = None
    """Modules trained in full and saved with the adapter; default: the newly initialised ones (a classifier head)."""
    merge: bool = False
    """Also save model/: the adapter merged into the base, a plain model transformers loads."""



class DpoConfig(Section):
    RANGES = {"beta": POSITIVE, "label_smoothing": Range(0, 0.5, hi_open=True), "max_prompt_length": AT_LEAST_1,
              "simpo_gamma": NON_NEGATIVE}
    loss_type: Literal["sigmoid", "ipo", "simpo", "orpo"] = "sigmoid"
    """dpo: sigmoid (DPO), ipo, simpo (reference-free, length-normalised) or orpo (reference-free, odds ratio + the chosen reply's NLL)."""
    beta: float = 0.1
    """dpo: the loss's temperature: DPO's beta (0.1 is usual), IPO's tau, SimPO's beta (about 2), ORPO's lambda (about 0.1)."""
    label_smoothing: float = 0.0
    """dpo: share of pairs assumed mislabelled (conservative DPO; sigmoid and simpo), in [0, 0.5)."""
    simpo_gamma: float = 0.5
    """dpo: SimPO's target reward margin gamma."""
    reward_scale: Optional[Literal["mean", "sum"]] = None
    """dpo: IPO's logged rewards: beta x the per-token mean log-ratio (mean, the default: the scale IPO's loss uses) or x the sum (sum: TRL's figure). Other losses have one convention."""
    reference: Literal["cached", "live"] = "cached"
    """dpo: reference log-probs computed once before training and cached on disk, or at each step (live; with LoRA the adapter is disabled, without it a frozen copy is kept)."""
    max_prompt_length: Optional[int] = None
    """dpo: a prompt keeps its last this-many tokens. Default: half of data.block_size (the limit of prompt + reply)."""
    share_prompt: bool = True
    """dpo: score chosen and rejected in one row that runs the prompt once (checked against separate rows at setup)."""



class EvalConfig(Section):
    metrics_function: Optional[str] = None
    """Your metrics, 'module:function' called as fn(predictions, labels, batch_info) -> dict and merged into every evaluation's metrics (classification: logits and labels; language models: each target token's loss and id)."""


class OutputConfig(Section):
    output_dir: Optional[str] = None
    """Run folder. Default: runs/<task>-<model>-<timestamp>."""
    overwrite: bool = False
    """Replace an existing finished run folder."""
    push_to_hub: bool = False
    """Upload the final model folder (model, tokenizer, model card) to the Hugging Face Hub when training ends."""
    hub_model_id: Optional[str] = None
    """The Hub repository to push to, user/name (output.push_to_hub, `lmforge push --repo-id`)."""
    hub_private: bool = False
    """Create the Hub repository as private."""


class Config(Section):
    task: TaskName = "classification"
    """classification, causal-lm, masked-lm, sft (chat / instruction fine-tuning), dpo (preference tuning), grpo (online RL with verifiable rewards), embedding (a bi-encoder for retrieval), reranker (a cross-encoder), reward (a reward model trained on preference pairs) or distill (a student learns a teacher's distributions)."""
    model: ModelConfig = ModelConfig()
    """Which model to start from."""
    tokenizer: TokenizerConfig = TokenizerConfig()
    """Which tokenizer to use or train (default: the model's)."""
    data: DataConfig = DataConfig()
    """Where the data comes from and how it is encoded."""
    train: TrainConfig = TrainConfig()
    """Optimisation and the training loop."""
    eval: EvalConfig = EvalConfig()
    """Evaluation extras (your own metrics function)."""
    output: OutputConfig = OutputConfig()
    """Where results go."""
    dpo: DpoConfig = DpoConfig()
    """Preference tuning (task: dpo): the loss, beta, and the reference model's log-probs."""
    grpo: GrpoConfig = GrpoConfig()
    """Online RL with verifiable rewards (task: grpo): reward functions, group size, sampling and the loss."""
    embedding: EmbeddingConfig = EmbeddingConfig()
    """Embedding models (task: embedding): pooling, normalisation, the in-batch loss's scale, matryoshka, GradCache."""
    reranker: RerankerConfig = RerankerConfig()
    """Rerankers (task: reranker): the loss, mined negatives, evaluation candidates."""
    reward: RewardConfig = RewardConfig()
    """Reward models (task: reward): reward centring."""
    distill: DistillConfig = DistillConfig()
    """Distillation (task: distill): the teacher, the student, the divergence, top-k cache, on-policy share."""
    peft: Optional[PeftConfig] = None
    """LoRA fine-tuning: {r, alpha, dropout, target_modules, merge}; absent = train every weight."""

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------------------
# Loading, overrides and friendly errors

def _section_fields(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Valid keys at `loc` inside the config tree (for 'did you mean')."""
    cls = model_cls
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None:
            break
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        elif inner:  # Optional[Section]
            cls = inner[0]
        else:
            break
    return list(cls.model_fields)


def _format_validation_error(err: ValidationError, source: str) -> LmforgeError:
    errors = err.errors()
    first = errors[0]
    # a list given for a path-or-mix key: the list branch's error says what is wrong in it
    first = next((e for e in errors if "list[MixSource]" in map(str, e["loc"])), first) \
        if isinstance(first.get("input"), list) else first
    loc = tuple(str(p) for p in first["loc"])
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        valid = _section_fields(Config, loc[:-1])
        where = ".".join(loc[:-1]) or "top level"
        return LmforgeError(
            f"unknown config key '{key}' in {source}.{did_you_mean(loc[-1], valid)}",
            f"valid keys in {where}: {', '.join(valid)}",
        )
    if len(loc) >= 3 and loc[0] == "data" and loc[1] in ("train", "eval", "test"):  # a path, or a mix
        key = f"data.{loc[1]}"
        got = first.get("input")
        if loc[2] == "str" or len(loc) == 3 or isinstance(got, list) and len(loc) == 3:
            return LmforgeError(f"bad value for '{key}' in {source}: a path (text) or a list of {{path, weight}} "
                                f"sources was expected (got {got!r})", f"write {key}: my.jsonl, or {key}: "
                                "[{path: a.jsonl, weight: 0.7}, {path: b.jsonl, weight: 0.3}]")
        rest = [p for p in loc[2:] if p != "list[MixSource]"]
        where = f"{key}[{rest[0]}]" + "".join(f".{p}" for p in rest[1:]) if rest else key
        return LmforgeError(f"bad value for '{where}' in {source}: {first['msg'].removeprefix('Value error, ')}",
                            "each source is {path: FILE_OR_NAME, weight: NUMBER > 0}")
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = first.get("input")
    got_txt = "" if isinstance(got, dict) or first["type"] == "value_error" else f" (got {got!r})"
    if first["type"] == "literal_error":
        return LmforgeError(f"bad value for '{key}' in {source}: {msg}{got_txt}.{did_you_mean(got, [])}",
                            f"set {key} to one of the values listed")
    section = loc[0] if loc and loc[0] in Config.model_fields and loc[0] != "task" else ""
    return LmforgeError(f"bad value for '{key or 'config'}' in {source}: {msg}{got_txt}",
                        f"see `lmforge config keys {section}`" if section else "see `lmforge config keys`")


def build_config(raw: dict, source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise _format_validation_error(e, source) from None


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Read a YAML config (or the built-in default recipe when `path` is None) and apply overrides."""
    if path is None:
        raw = read_yaml(default_recipe_path())
        source = "the default recipe"
    else:
        raw = read_yaml(path)
        source = str(path)
    if overrides:
        extra = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        if path is None and (extra.get("data") or {}).get("train"):
            # your own data with the built-in recipe: none of the recipe's data settings (its finefood test
            # split, its columns) are mixed in, and the run gets its own folder
            raw = {**raw, "data": {}, "output": {k: v for k, v in (raw.get("output") or {}).items()
                                                 if k != "output_dir"}}
            source += " (its data settings replaced by yours)"
        raw = deep_merge(raw, extra)
        source += " + command-line overrides"
    return build_config(raw, source)


def default_recipe_path() -> Path:
    """The built-in default recipe (the same file as examples/sentiment-minilm.yaml)."""
    return Path(__file__).parent / "recipes" / "sentiment-minilm.yaml"


def resolve_config(config: Union[str, Path, Config, dict, None],
                   overrides: Union[Sequence[str], dict, None] = None) -> Config:
    """A Config from a YAML path (None = the built-in default recipe), a dict or a Config, with
    ``--section.key value`` overrides (a list) or a nested dict of them applied."""
    extra = None
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
    if isinstance(config, Config):
        return build_config(deep_merge(config.model_dump(), extra), "config + overrides") if extra else config
    if isinstance(config, dict):
        return build_config(deep_merge(config, extra) if extra else config, "config dict")
    return load_config(config, extra)


@dataclass(frozen=True)
class Permissions:
    """What a config file alone must never grant: the caller gives these (command-line flags
    ``--allow-pickle`` / ``--trust-remote-code``, or the Python API's arguments)."""
    allow_pickle: bool = False
    """Load pickled (.bin/.pt) weights, which can run code."""
    trust_remote_code: bool = False
    """Run model code shipped with a model's files."""
