"""Facts about the process lmforge runs in: quiet third-party logs, the inference device, and
whether the Hugging Face Hub can be reached (offline first: a Hub id fails fast, saying what to use)."""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Callable, Optional

from .errors import LmforgeError

VERSION = "0.1.0"


def quiet_libraries() -> None:
    """Library progress bars and info logs would drown lmforge's own output. Only libraries already imported are
    touched (the public API functions call this after importing them): `lmforge --help`, `models` or `runs` must
    not pay seconds for importing datasets and transformers just to silence them."""
    for noisy in ("transformers", "datasets", "accelerate", "torch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if "datasets" in sys.modules:
        sys.modules["datasets"].disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def inference_device():
    import torch  # lazy, as above
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_path(name: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else with a slash is meant as a path."""
    return name.startswith((".", "/", "~")) or name.endswith("/") or name.count("/") > 1 or "\\" in name


def check_hub_available(ident: str, kind: str, alternatives: str) -> None:
    """Fail fast, with a useful message, when a Hub id cannot be fetched. `alternatives` says what
    to use instead (a local folder, the built-in aliases, ...)."""
    if hub_offline():
        raise LmforgeError(
            f"'{ident}' is not a local {kind} folder or a built-in alias, and the Hugging Face Hub is "
            f"off (HF_HUB_OFFLINE=1)",
            f"use {alternatives}, or unset HF_HUB_OFFLINE",
        )
    if not hub_reachable():
        raise LmforgeError(
            f"'{ident}' is not a local {kind} or a built-in alias, and the Hugging Face Hub is unreachable "
            f"(no network)",
            f"use {alternatives}",
        )


def load_function(spec: str, key: str, example: str) -> Callable:
    """A user's function named 'module:function' (module importable, or a .py file in the current folder),
    'path/to/file.py:function', or 'package.module.function' (the dotted form other trainers' configs use);
    `key` is the config key that names it, for the error messages."""
    if ":" in spec:
        mod_name, _, fn_name = spec.rpartition(":")
    elif "." in spec.strip(".") and " " not in spec:
        mod_name, _, fn_name = spec.rpartition(".")
    else:
        raise LmforgeError(f"{key} '{spec}' is not of the form module:function",
                           f"e.g. {example} (the module's .py file in the current folder)")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if mod_name.endswith(".py") or "/" in mod_name or "\\" in mod_name:
            module = _module_from_file(Path(mod_name).expanduser(), key)
        else:
            module = importlib.import_module(mod_name)
    except LmforgeError:
        raise
    except ImportError as e:
        raise LmforgeError(f"{key}: cannot import module '{mod_name}' ({e})",
                           "put the module in the current folder or install it") from None
    except SyntaxError as e:
        raise LmforgeError(f"{key}: module '{mod_name}' has a syntax error ({e.filename}, line {e.lineno}: {e.msg})",
                           "fix the module's code") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised while it was imported: named, one line
        raise LmforgeError(f"{key}: importing module '{mod_name}' raised {type(e).__name__}: {e}",
                           "fix the module's code (it runs when imported)") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise LmforgeError(f"{key}: '{mod_name}' has no function '{fn_name}'")
    return fn


def _module_from_file(path: Path, key: str):
    """A module loaded from a .py file named by its path (relative to the current folder)."""
    import importlib.util
    if not path.is_file():
        raise LmforgeError(f"{key}: no file {path}", "give the .py file's path, relative to the current folder")
    name = "lmforge_user_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def to_device(batch: dict, device) -> dict:
    """A batch dict with its tensors on `device` (counts and other values as they are); the one copy of this
    rule for training, evaluation and the reference pass. Tensors are told by duck typing, so this bottom
    module needs no torch import (the CLI starts without it)."""
    return {k: (v.to(device, non_blocking=True) if hasattr(v, "is_floating_point") and hasattr(v, "to") else v)
            for k, v in batch.items()}


def available_bytes(device) -> Optional[float]:
    """Free memory for this process: GPU free memory, or RAM (MemAvailable, capped by a cgroup limit)."""
    import torch  # lazy: this bottom module is imported by the CLI, which starts without torch

    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return float(free)
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = float(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # containers: the cgroup v2 limit is what the OOM killer enforces
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = float(Path("/sys/fs/cgroup/memory.current").read_text())
            room = float(limit) - used
            avail = room if avail is None else min(avail, room)
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            import psutil
            avail = float(psutil.virtual_memory().available)
        except Exception:
            return None
    return avail
