"""The doctor's model and tokenizer checks: the model is there offline, the tokenizer has what the task needs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from ...config import Config, Permissions
from ...errors import LmforgeError
from ...models.load import model_source
from ...tasks import get_task
from ...tokenizer import tokenizer_for_config
from .output import Out, err

log = logging.getLogger("lmforge")


def check_model_and_tokenizer(out: Out, cfg: Config, permissions: Permissions):
    """Offline availability of the model, and the tokenizer's special tokens. Returns the tokenizer or None."""
    if cfg.model.name:
        try:
            path = model_source(cfg, permissions)
        except LmforgeError as e:
            out.problem(err(e))
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
        tok = tokenizer_for_config(cfg, log, permissions)
    except LmforgeError as e:
        out.problem(err(e))
        return None
    specials = {name: getattr(tok, f"{name}_token", None) for name in ("pad", "eos", "bos", "mask", "unk")}
    out.ok(f"tokenizer: {type(tok).__name__}, {len(tok):,} tokens; "
           + ", ".join(f"{k} {v!r}" for k, v in specials.items() if v is not None))
    for level, text in get_task(cfg.task).tokenizer_findings(specials):
        out.finding(level, text)
    template = getattr(tok, "chat_template", None)
    out.info(f"chat template: {'yes' if template else 'none'}")
    return tok


def model_vocab(model) -> Optional[int]:
    try:
        return int(model.get_input_embeddings().weight.shape[0])
    except Exception:
        return None
