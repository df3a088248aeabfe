"""Load tokenizers (and, later, train them)."""

from __future__ import annotations

import logging

from .errors import LmforgeError


def load_tokenizer(path: str, revision: str | None = None):
    """A fast tokenizer for a model folder or Hub id (``AutoTokenizer``, never ``BertTokenizer(vocab_file)``)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as e:
        raise LmforgeError(f"could not load a tokenizer from {path}: {str(e).splitlines()[0]}",
                           "the model folder needs tokenizer files (tokenizer.json or vocab files)") from None
    if not getattr(tok, "is_fast", False):
        logging.getLogger("lmforge").warning("tokenizer at %s is not a fast tokenizer; some features are slower", path)
    # Long texts are truncated by lmforge itself; the "sequence longer than max" warning is noise.
    tok.model_max_length = int(min(getattr(tok, "model_max_length", 10**6) or 10**6, 10**6))
    return tok
