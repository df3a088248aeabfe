"""Models from scratch: a fresh, randomly initialised model built from a config.

    model:
      from_config: {architecture: gpt2, n_layer: 4, hidden_size: 256, num_attention_heads: 4,
                    max_position_embeddings: 256}
    # or: from_config: path/to/config.json (or a folder holding one)

Sizes use the Hugging Face names (hidden_size, num_hidden_layers, num_attention_heads,
max_position_embeddings, intermediate_size) or the usual short ones (n_layer, n_embd, n_head,
n_positions, heads, layers, context). The vocabulary size always follows the tokenizer, and the
special token ids (pad/bos/eos) come from it too.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import AutoConfig

from ..errors import LmforgeError, did_you_mean

log = logging.getLogger("lmforge")

ARCHITECTURES = {  # name -> (model_type, tasks it can do)
    "gpt2": ("gpt2", ("causal-lm",)),
    "llama": ("llama", ("causal-lm",)),
    "bert": ("bert", ("masked-lm",)),
    "roberta": ("roberta", ("masked-lm",)),
}

ALIASES = {
    "n_layer": "num_hidden_layers", "n_layers": "num_hidden_layers", "num_layers": "num_hidden_layers",
    "layers": "num_hidden_layers",
    "n_embd": "hidden_size", "d_model": "hidden_size", "hidden": "hidden_size", "width": "hidden_size",
    "n_head": "num_attention_heads", "heads": "num_attention_heads", "num_heads": "num_attention_heads",
    "n_positions": "max_position_embeddings", "n_ctx": "max_position_embeddings", "context": "max_position_embeddings",
    "context_length": "max_position_embeddings", "max_seq_len": "max_position_embeddings",
    "n_inner": "intermediate_size", "ffn_size": "intermediate_size", "d_ff": "intermediate_size",
    "dropout": "dropout",
}


def _read_config_file(spec: str) -> dict:
    p = Path(spec).expanduser()
    if p.is_dir():
        p = p / "config.json"
    if not p.exists():
        raise LmforgeError(f"model.from_config: {spec} not found",
                           "give a config.json (or a folder with one), or {architecture: gpt2, ...}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"model.from_config: {p} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise LmforgeError(f"model.from_config: {p} has no model_type", "a transformers config.json names its model_type")
    return data


def _known_keys(config_cls) -> set[str]:
    keys = set(config_cls().to_dict()) | set(getattr(config_cls, "attribute_map", {}) or {})
    return keys


def make_config(spec: Any, tokenizer, task: str):
    """A transformers config for the spec, with vocabulary and special ids from the tokenizer."""
    arch, model_type, sizes = _read_spec(spec, tokenizer)
    tasks = ARCHITECTURES.get(arch, (None, None))[1]
    if tasks and task not in tasks:
        other = [a for a, (_, t) in ARCHITECTURES.items() if task in t]
        raise LmforgeError(f"a {arch} model cannot be trained for {task}",
                           f"use architecture {' or '.join(other)} for {task}")
    try:
        config_cls = type(AutoConfig.for_model(model_type))
    except ValueError as e:
        raise LmforgeError(f"model.from_config: unknown model_type '{model_type}': {str(e).splitlines()[0]}") from None
    kwargs = _size_kwargs(sizes, model_type, _known_keys(config_cls))
    n_vocab = len(tokenizer)
    asked = kwargs.pop("vocab_size", None)
    if asked is not None and int(asked) < n_vocab:
        raise LmforgeError(f"model.from_config vocab_size {asked} is smaller than the tokenizer's {n_vocab} tokens",
                           "leave vocab_size out: it follows the tokenizer")
    kwargs["vocab_size"] = int(asked) if asked is not None else n_vocab
    for role in ("pad", "bos", "eos"):
        tid = getattr(tokenizer, f"{role}_token_id", None)
        if tid is not None:
            kwargs[f"{role}_token_id"] = tid
    if model_type == "roberta" and isinstance(spec, dict):
        # RoBERTa's positions start after the pad id: room for pad_id + 1 extra positions
        ctx = int(kwargs.get("max_position_embeddings", 512))
        kwargs["max_position_embeddings"] = ctx + int(kwargs.get("pad_token_id") or 1) + 1
        kwargs.setdefault("type_vocab_size", 1)
    config = AutoConfig.for_model(model_type, **kwargs)
    heads = getattr(config, "num_attention_heads", None)
    width = getattr(config, "hidden_size", None)
    if heads and width and width % heads:
        raise LmforgeError(f"model.from_config: hidden_size {width} is not divisible by num_attention_heads {heads}",
                           f"pick a width that is a multiple of {heads}")
    return config


def _read_spec(spec: Any, tokenizer) -> tuple[str, str, dict]:
    """(architecture, model_type, sizes) of a from_config spec: a mapping, or a path to a config.json."""
    if isinstance(spec, (str, Path)):
        raw = _read_config_file(str(spec))
        model_type = raw.pop("model_type")
        for k in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
                  "pad_token_id", "bos_token_id", "eos_token_id"):
            raw.pop(k, None)
        file_vocab = raw.pop("vocab_size", None)  # the vocabulary follows the tokenizer
        if file_vocab is not None and file_vocab != len(tokenizer):
            log.info("model.from_config: vocab_size %s of %s replaced by the tokenizer's %d", file_vocab, spec,
                     len(tokenizer))
        return model_type, model_type, raw
    if not isinstance(spec, dict):
        raise LmforgeError("model.from_config must be a mapping {architecture: ..., sizes} or a path to a config.json")
    sizes = dict(spec)
    arch = sizes.pop("architecture", None) or sizes.pop("model_type", None)
    if not arch:
        raise LmforgeError("model.from_config needs an architecture",
                           f"add architecture: one of {', '.join(ARCHITECTURES)}")
    arch = str(arch).lower()
    if arch not in ARCHITECTURES:
        raise LmforgeError(f"model.from_config: unknown architecture '{arch}'.{did_you_mean(arch, ARCHITECTURES)}",
                           f"architectures: {', '.join(ARCHITECTURES)} (or a path to a config.json)")
    return arch, ARCHITECTURES[arch][0], sizes


def _size_kwargs(sizes: dict, model_type: str, known: set[str]) -> dict[str, Any]:
    """The config keyword arguments for the sizes (aliases resolved, dropout spread, default widths)."""
    kwargs: dict[str, Any] = {}
    for key, value in sizes.items():
        name = ALIASES.get(key, key) if key not in known else key
        if name == "dropout":
            for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout_prob", "attention_probs_dropout_prob",
                      "attention_dropout"):
                if k in known:
                    kwargs[k] = value
            continue
        if name not in known:
            raise LmforgeError(f"model.from_config: '{key}' is not a {model_type} config option."
                               f"{did_you_mean(key, sorted(known | set(ALIASES)))}",
                               "use the transformers config names (hidden_size, num_hidden_layers, num_attention_heads, "
                               "max_position_embeddings, intermediate_size)")
        kwargs[name] = value
    if model_type == "gpt2" and "intermediate_size" in kwargs:
        kwargs["n_inner"] = kwargs.pop("intermediate_size")
    hidden = kwargs.get("hidden_size") or kwargs.get("n_embd")
    if hidden and "intermediate_size" not in kwargs and model_type in ("bert", "roberta"):
        kwargs["intermediate_size"] = 4 * int(hidden)
    if hidden and "intermediate_size" not in kwargs and model_type == "llama":
        kwargs["intermediate_size"] = -(-int(8 * int(hidden) / 3) // 64) * 64  # SwiGLU: ~8/3 of the width
    return kwargs


def context_of(config) -> Optional[int]:
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if n and config.model_type == "roberta":
        n = n - (config.pad_token_id or 1) - 1
    return n


def build_model(cfg, tokenizer, auto_cls, task: str):
    """A freshly initialised `auto_cls` model (the task's Auto* class; `task` names it in messages) as
    ``cfg.model.from_config`` says."""
    config = make_config(cfg.model.from_config, tokenizer, task)
    if cfg.model.attn_implementation:
        config._attn_implementation = cfg.model.attn_implementation
    try:
        model = auto_cls.from_config(config)
    except ValueError as e:
        raise LmforgeError(f"a {config.model_type} model cannot be built for {task}: {str(e).splitlines()[0][:200]}") from None
    if cfg.model.dtype not in ("float32", "auto"):
        model = model.to(getattr(torch, cfg.model.dtype))
    n_params = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight.numel()
    layers = getattr(config, "num_hidden_layers", None)
    log.info("model: a fresh %s from config: %s layers, width %s, %s heads, context %s, vocab %s -> %.2fM parameters "
             "(%.2fM without the token embeddings)", config.model_type, layers, getattr(config, "hidden_size", "?"),
             getattr(config, "num_attention_heads", "?"), context_of(config), f"{config.vocab_size:,}",
             n_params / 1e6, (n_params - emb) / 1e6)
    return model
