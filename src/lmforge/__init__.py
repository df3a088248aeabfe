"""lmforge: fine-tune and train language models with one command, offline, CPU or GPU.

    from lmforge import train, evaluate, predict
"""

import importlib

from .config import Config, load_config
from .errors import LmforgeError
from .runtime import VERSION as __version__

__all__ = ["train", "evaluate", "predict", "Config", "load_config", "LmforgeError", "__version__"]


def __getattr__(name: str):
    # lazy: lmforge.api imports torch and transformers (seconds); `lmforge --help` and `import lmforge.config`
    # must not pay for them
    if name in ("train", "evaluate", "predict", "api"):
        api = importlib.import_module("lmforge.api")  # sets lmforge.api: no further __getattr__ for it
        return api if name == "api" else getattr(api, name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")
