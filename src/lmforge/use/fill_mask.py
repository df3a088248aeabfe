"""Fill-mask over texts or a file, for a masked LM run, model folder or alias.

    lmforge fill-mask runs/mlm "The company reported a [MASK] in profits."
    lmforge fill-mask runs/mlm --input sentences.txt --output filled.jsonl --top-k 10
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from ..errors import LmforgeError
from ..fs import check_output_file, write_jsonl
from ..runtime import inference_device
from ..tasks import masked_lm
from ..tasks.fill_mask import fill_mask_with
from .inputs import read_ids, read_texts, with_ids

log = logging.getLogger("lmforge")


def fill_mask(model_dir: Path, texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
              output: Optional[str] = None, top_k: int = 5, batch_size: int = 32,
              text_column: Optional[str] = None, allow_untrained: bool = False) -> list[dict]:
    """Load a masked LM (run folder, model folder or alias) and fill the masks of texts or a file. A model whose
    MLM head was never trained (a classification run, a bare encoder) is refused, as `predict` refuses an untrained
    classifier, unless `allow_untrained`."""
    if output:
        check_output_file(output, "--output")
    where = None
    if input_file:
        texts = read_texts(input_file, text_column)[0]
        where = [f"{input_file} row {i + 1}" for i in range(len(texts))]
    if not texts:
        raise LmforgeError("no texts to fill", "give texts after the model, or --input FILE")
    model, tokenizer, missing = masked_lm.TASK.load_with_new_params(Path(model_dir))
    note = masked_lm.head_note(model, missing, str(model_dir))
    if note and not allow_untrained:
        raise LmforgeError(note.split(", so the perplexity")[0] + ": its fillers would be random",
                           "train it first (lmforge train with task: masked-lm), or pass --allow-untrained to look "
                           "at the untrained head anyway")
    if note:
        log.warning("%s Its predictions are not meaningful until it is trained (lmforge train with task: masked-lm).",
                    note.split(", so the perplexity")[0] + ".")
    model.to(inference_device())
    rows = fill_mask_with(model, tokenizer, list(texts), top_k=top_k, batch_size=batch_size, where=where)
    rows = with_ids(rows, read_ids(input_file) if input_file else None)
    if output:
        write_jsonl(output, rows)
    return rows
