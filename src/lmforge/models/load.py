"""Loading models: which folder a name means, safety checks, the context limit, the pad token, and
``from_pretrained`` with clear errors. One implementation of each rule, shared by every task.

    resolve_model("minilm-l6")          # alias / folder / Hub id -> what from_pretrained loads
    resolve_model_dir("runs/x")         # a run folder, a model folder, an adapter folder or an alias
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from transformers import CONFIG_MAPPING, AutoConfig
from transformers.utils import logging as hf_logging

from ..config import Config, Permissions
from ..errors import LmforgeError
from .onnx_model import is_onnx_dir
from .zoo import MODELS, resolve_model

# Beyond this the tokenizer's model_max_length is a "no limit" placeholder (1e30), not a limit.
NO_LIMIT = 10**6
# Default length of examples / blocks when the config gives none: the model's limit, capped here
# (long contexts cost memory quadratically in attention and are rarely needed for fine-tuning).
DEFAULT_LENGTH_CAP = 512
POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")


# ----------------------------------------------------------------------------------- where
def resolve_model_dir(path: Union[str, Path]) -> Path:
    """A run folder (-> its model/ or adapter/), a model folder, an adapter folder, or a built-in alias."""
    p = Path(path).expanduser()
    if (p / "model" / "config.json").exists():
        check_model_folder(p / "model", trust_remote_code=True)
        return p / "model"
    if (p / "config.json").exists():
        check_model_folder(p, trust_remote_code=True)  # a broken folder is said plainly, before any loader
        return p
    if (p / "adapter" / "adapter_config.json").exists():  # a LoRA run without a merged model
        return p / "adapter"
    if (p / "adapter_config.json").exists():
        return p
    if str(path) in MODELS:
        return Path(MODELS[str(path)].locate())
    if p.exists():
        raise LmforgeError(f"{p} is neither a run folder nor a model folder (no config.json)",
                           "point at runs/<name> or runs/<name>/model")
    raise LmforgeError(f"model or run folder not found: {path}", "check the path")


# What transformers and peft read when they load safetensors: a model, a sharded model, a LoRA adapter.
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")


def check_model_folder(p: Path, trust_remote_code: bool = False) -> None:
    """What is wrong with a model folder, said before transformers tries it: its config.json must be valid JSON
    naming a model type this transformers knows (or remote code allowed), and weights must be there."""
    cfg_file = p / "config.json"
    if not cfg_file.is_file():
        return  # an adapter folder, or the caller reports the missing config.json
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{cfg_file} is not valid JSON ({str(e).splitlines()[0][:120]})",
                           "restore the file from where the model came from") from None
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if kind not in CONFIG_MAPPING and not (trust_remote_code and isinstance(cfg, dict) and cfg.get("auto_map")):
        raise LmforgeError(f"{cfg_file} names model_type {kind!r}, which this transformers does not know",
                           "check the model folder (is config.json from another library?), or upgrade transformers")
    weights = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
               "adapter_model.safetensors", "adapter_model.bin", "model.onnx")
    if not any((p / w).exists() for w in weights) and not any(p.glob("model-*.safetensors")):
        raise LmforgeError(f"model folder {p} has a config.json but no weights (model.safetensors)",
                           "copy the weights next to config.json, or build a fresh model with model.from_config")


def check_weights_safe(path: str, permissions: Permissions = Permissions()) -> None:
    """Refuse a model folder whose weights would be unpickled (they can run code) unless allowed; say what is
    wrong with a broken folder (config.json, model type, weights) first."""
    p = Path(path)
    if not p.is_dir():
        return  # Hub id: from_pretrained prefers safetensors
    check_model_folder(p, permissions.trust_remote_code)
    # the weights the loaders will read (an unrelated *.safetensors beside a pickle does not count)
    has_safe = any((p / name).exists() for name in SAFE_WEIGHTS)
    pickled = [f.name for f in p.glob("*.bin")] + [f.name for f in p.glob("*.pt")] + [f.name for f in p.glob("*.pth")]
    if not has_safe and pickled and not permissions.allow_pickle:
        raise LmforgeError(
            f"model folder {p} has only pickled weights ({', '.join(sorted(pickled))}); loading them can run code",
            "convert them to safetensors, or pass --allow-pickle if you trust the files",
        )


def model_source(cfg: Config, permissions: Permissions = Permissions()) -> str:
    """The folder (or Hub id) of model.name, checked: remote code only when permitted, no pickles unless allowed."""
    if cfg.model.trust_remote_code and not permissions.trust_remote_code:
        raise LmforgeError("the config sets model.trust_remote_code, which runs code from the model's files",
                           "pass --trust-remote-code on the command line to allow it")
    tok = getattr(cfg, "tokenizer", None)
    if tok is not None and (tok.name or tok.train is not None):  # never silently replaced by the model's own
        key = "tokenizer.name" if tok.name else "tokenizer.train"
        raise LmforgeError(f"{key} is set, but model.name {cfg.model.name} brings its own tokenizer, which its "
                           "embeddings are tied to", f"remove {key}, or build a fresh model with model.from_config "
                           "(and no model.name) to use another tokenizer")
    path = resolve_model(cfg.model.name)
    if is_onnx_dir(path):
        raise LmforgeError(f"{path} is an ONNX export, which runs but cannot be trained",
                           "train from the run folder it came from, or from a --format safetensors export")
    check_weights_safe(path, permissions)
    return path


def model_config_of(path: str, cfg: Config):
    return AutoConfig.from_pretrained(path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)


# ----------------------------------------------------------------------------------- limits, pad
def context_length(model_config, tokenizer=None) -> Optional[int]:
    """Tokens the model can attend to: its position limit, and the tokenizer's model_max_length when
    that is a real limit; None when neither says."""
    limits = []
    for key in POSITION_KEYS:
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    tok_max = getattr(tokenizer, "model_max_length", None) if tokenizer is not None else None
    if isinstance(tok_max, int) and 0 < tok_max < NO_LIMIT:
        limits.append(tok_max)
    return min(limits) if limits else None


def default_length(model_config, tokenizer=None) -> int:
    """The example / block length used when the config gives none: the context, capped at 512."""
    limit = context_length(model_config, tokenizer)
    return min(limit or DEFAULT_LENGTH_CAP, DEFAULT_LENGTH_CAP)


def check_length(value: int, model_config, tokenizer, key: str) -> int:
    """`value` (the config's `key`), refused when it is above the model's context."""
    limit = context_length(model_config, tokenizer)
    if limit and value > limit:
        raise LmforgeError(f"{key} {value} is above the model's limit of {limit} tokens",
                           f"set {key} to at most {limit}")
    return value


def resolve_block_size(value: Optional[int], model_config, tokenizer=None, key: str = "data.block_size") -> int:
    """The one block-size rule of every task: the config's value, else the default length (the context,
    capped at 512), always checked against the model's context (`check_length`)."""
    return check_length(value or default_length(model_config, tokenizer), model_config, tokenizer, key)


def ensure_pad(tokenizer, model=None, where: str = "the model") -> Optional[str]:
    """Give a tokenizer without a pad token its eos token (padding is never a training target);
    returns the note to log once, or None. The model's configs get the pad id too."""
    note = None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise LmforgeError(f"the tokenizer of {where} has neither a pad nor an eos token",
                               "add a pad token (or an eos token) to the tokenizer (tokenizer_config.json)")
        tokenizer.pad_token = tokenizer.eos_token
        note = f"the tokenizer has no pad token: using its eos token {tokenizer.eos_token!r} for padding " \
               f"(padding is never a training target)"
    if model is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model is not None and getattr(model, "generation_config", None) is not None \
            and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return note


# ----------------------------------------------------------------------------------- load
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout", "attention_probs_dropout")


def with_attention_dropout(path: str, cfg: Config, value: float, kwargs: dict):
    """The model's config with its attention dropout set (dropout on attention probabilities forces
    the unfused, memory-hungry attention path on CPU: 0 saves ~30% memory per step)."""
    if not 0.0 <= value < 1.0:
        raise LmforgeError(f"model.attention_dropout must be in [0, 1), got {value}")
    conf = AutoConfig.from_pretrained(path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    for key in ATTENTION_DROPOUT_KEYS:
        if hasattr(conf, key):
            setattr(conf, key, value)
    for key in list(kwargs):  # label maps etc. go into the config object, not from_pretrained
        if hasattr(conf, key) or key in ("num_labels", "id2label", "label2id"):
            setattr(conf, key, kwargs.pop(key))
    return conf


def load_pretrained(auto_cls, path: str, cfg: Config, permissions: Permissions = Permissions(), **kwargs: Any):
    """``auto_cls.from_pretrained`` with loading info; returns (model, names of newly initialised params)."""
    hf_logging.set_verbosity_error()
    dtype = None if cfg.model.dtype == "auto" else getattr(torch, cfg.model.dtype)
    extra = {}
    if cfg.model.attention_dropout is not None:
        extra["config"] = with_attention_dropout(path, cfg, cfg.model.attention_dropout, kwargs)
    if cfg.model.attn_implementation:
        extra["attn_implementation"] = cfg.model.attn_implementation
    try:
        model, info = auto_cls.from_pretrained(
            path, revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code,
            dtype=dtype, output_loading_info=True, use_safetensors=None if permissions.allow_pickle else True,
            **extra, **kwargs)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "Unrecognized configuration class" in msg or "Unrecognized model" in msg:
            raise LmforgeError(f"the model at {path} cannot be used for {cfg.task}: {msg[:200]}",
                               "choose a model whose architecture supports this task") from None
        if "attn_implementation" in msg:
            raise LmforgeError(f"model.attn_implementation {cfg.model.attn_implementation!r} cannot be used with "
                               f"this model: {msg[:160]}", "use sdpa or eager (or leave it unset)") from None
        raise
    except OSError as e:
        raise LmforgeError(f"could not load the model from {path}: {str(e).splitlines()[0]}") from None
    except ImportError as e:  # an attention kernel (or other extra) asked for but not installed
        raise LmforgeError(f"could not load the model from {path}: {str(e).splitlines()[0][:200]}",
                           "install the missing package, or drop model.attn_implementation") from None
    mismatched = [m[0] if isinstance(m, (tuple, list)) else str(m) for m in info.get("mismatched_keys") or []]
    prefix = getattr(model, "base_model_prefix", "") or ""
    body = [k for k in mismatched if prefix and k.startswith(prefix + ".")]
    if body:  # only a task head may be re-made (new labels); a body that does not fit its weights would start random
        raise LmforgeError(f"the weights in {path} do not fit its config.json: {len(body)} tensors have other shapes "
                           f"(e.g. {body[0]}; was hidden_size or a layer size edited?)",
                           "use the config.json the weights were saved with")
    missing = set(info.get("missing_keys", []))
    return model, missing
