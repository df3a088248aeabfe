"""Model loading shared by the tasks: safety checks and clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import LmforgeError
from ..zoo import resolve_model

# Set from the command line only (--allow-pickle / --trust-remote-code): a config file alone
# must not be able to run code or unpickle files.
CLI_PERMISSIONS = {"allow_pickle": False, "trust_remote_code": False}


def check_weights_safe(path: str) -> None:
    p = Path(path)
    if not p.is_dir():
        return  # Hub id: from_pretrained prefers safetensors
    has_safe = any(p.glob("*.safetensors")) or any(p.glob("*.safetensors.index.json"))
    pickled = [f.name for f in p.glob("*.bin")] + [f.name for f in p.glob("*.pt")] + [f.name for f in p.glob("*.pth")]
    if not has_safe and pickled and not CLI_PERMISSIONS["allow_pickle"]:
        raise LmforgeError(
            f"model folder {p} has only pickled weights ({', '.join(sorted(pickled))}); loading them can run code",
            "convert them to safetensors, or pass --allow-pickle if you trust the files",
        )


def model_source(cfg: Config) -> str:
    if cfg.model.trust_remote_code and not CLI_PERMISSIONS["trust_remote_code"]:
        raise LmforgeError("the config sets model.trust_remote_code, which runs code from the model's files",
                           "pass --trust-remote-code on the command line to allow it")
    path = resolve_model(cfg.model.name)
    check_weights_safe(path)
    return path


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attn_pdrop", "attention_dropout", "attention_probs_dropout")


def with_attention_dropout(path: str, cfg: Config, value: float, kwargs: dict):
    """The model's config with its attention dropout set (dropout on attention probabilities forces
    the unfused, memory-hungry attention path on CPU: 0 saves ~30% memory per step)."""
    from transformers import AutoConfig
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


def load_pretrained(auto_cls, path: str, cfg: Config, **kwargs: Any):
    """``auto_cls.from_pretrained`` with loading info; returns (model, names of newly initialised params)."""
    import torch
    from transformers.utils import logging as hf_logging

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
            dtype=dtype, output_loading_info=True, use_safetensors=None if CLI_PERMISSIONS["allow_pickle"] else True,
            **extra, **kwargs)
    except ValueError as e:
        msg = str(e).splitlines()[0]
        if "Unrecognized configuration class" in msg or "Unrecognized model" in msg:
            raise LmforgeError(f"the model at {path} cannot be used for {cfg.task}: {msg[:200]}",
                               "choose a model whose architecture supports this task") from None
        raise
    except OSError as e:
        raise LmforgeError(f"could not load the model from {path}: {str(e).splitlines()[0]}") from None
    missing = set(info.get("missing_keys", []))
    return model, missing


def model_from_config(cfg: Config, task) -> tuple[Any, Any]:
    """(fresh model, tokenizer) for model.from_config (see lmforge.scratch); `task` is a task name or Auto* class."""
    from ..scratch import model_from_config as build
    return build(cfg, task)
