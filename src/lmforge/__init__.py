"""lmforge: fine-tune and train language models with one command, offline, CPU or GPU."""

__version__ = "0.1.0"

from .api import evaluate, predict, train  # noqa: E402
from .config import Config, load_config  # noqa: E402
from .errors import LmforgeError  # noqa: E402

__all__ = ["train", "evaluate", "predict", "Config", "load_config", "LmforgeError", "__version__"]
