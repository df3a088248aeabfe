"""`lmforge export RUN_OR_MODEL --format safetensors [--dtype float32|bfloat16|float16] [-o OUT]`.

Writes a plain Hugging Face folder (a LoRA run merged into its base first) and proves it answers like the
trained model: the exported folder is loaded back with transformers alone and run on a few held-out inputs
(the run's eval or test data when it has a file, else fixed texts) next to the model as lmforge loads it; the
max absolute logit difference and the top-1 agreement go to `OUT/export.json` and the model card. A parity
outside the tolerance of the dtype is an error (exit 2) unless `--no-verify`.

GGUF and ONNX are not written yet (issue 18).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Optional

import torch

from ..config import load_config
from ..errors import LmforgeError
from ..fs import atomic_dir, check_output_dir
from ..models.load import resolve_model_dir
from ..tasks import task_of
from ..use.inputs import read_texts

log = logging.getLogger("lmforge")

FORMATS = ("safetensors",)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# max |logit difference| allowed against the fp32 model, per exported dtype
TOLERANCE = {"float32": 1e-4, "bfloat16": 0.25, "float16": 0.05}
FIXED_TEXTS = ["The food was good and the service was fine.", "And God said, Let there be light.",
               "Paris is the capital of France.", "I would not buy this again."]


def probe_texts(model_dir: Path, n: int = 4) -> list[str]:
    """A few held-out texts: the first rows of the run's eval (else test) file, else fixed texts."""
    run_cfg = Path(model_dir).parent / "config.yaml"
    if run_cfg.exists():
        cfg = load_config(run_cfg)
        for source in (cfg.data.eval, cfg.data.test):
            if source and Path(source).is_file():
                try:
                    texts = [t for t in read_texts(source)[0] if t.strip()][:n]
                    if texts:
                        return texts
                except LmforgeError:
                    pass
    return FIXED_TEXTS[:n]


@torch.no_grad()
def _logits(model, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    out = []
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=128)
        inputs = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        out.append(model(**inputs).logits.float()[0])
    return out


def parity(reference, exported, tokenizer, texts: list[str]) -> dict:
    """Max |logit difference| and top-1 agreement of two models on the texts."""
    a, b = _logits(reference, tokenizer, texts), _logits(exported, tokenizer, texts)
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    agree = [bool((x.argmax(-1) == y.argmax(-1)).all()) for x, y in zip(a, b)]
    return {"texts": len(texts), "max_abs_logit_diff": diff, "top1_agreement": sum(agree) / len(agree)}


def export(model: str, fmt: str = "safetensors", output: Optional[str] = None, dtype: str = "float32",
           verify: bool = True) -> Path:
    if fmt not in FORMATS:
        raise LmforgeError(f"export format '{fmt}' is not available", f"formats: {', '.join(FORMATS)} (GGUF and "
                                                                         "ONNX are not written yet)")
    if dtype not in DTYPES:
        raise LmforgeError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    model_dir = resolve_model_dir(model)
    out = check_output_dir(output or f"{Path(model).expanduser().as_posix().rstrip('/')}-export-{fmt}",
                           "export folder")
    if out.exists() and any(out.iterdir()):
        raise LmforgeError(f"export folder {out} is not empty", "choose another -o, or remove it first")
    task = task_of(model_dir)
    trained, tokenizer = task.load_for_use(model_dir, allow_untrained=True)  # LoRA: merged into its base
    trained.float().eval()

    def write(tmp: Path) -> None:
        saved = trained if dtype == "float32" else copy.deepcopy(trained).to(DTYPES[dtype])
        saved.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        card = model_dir / "README.md"  # the model card travels with the weights
        if card.exists():
            (tmp / "README.md").write_text(card.read_text())
    atomic_dir(out, write)
    report = {"format": fmt, "dtype": dtype, "source": str(model_dir), "task": task.name}
    reloaded = task.auto_class.from_pretrained(str(out), dtype=torch.float32).eval()  # transformers alone
    report["parity"] = parity(trained, reloaded, tokenizer, probe_texts(model_dir))
    ok = report["parity"]["max_abs_logit_diff"] <= TOLERANCE[dtype] and report["parity"]["top1_agreement"] == 1.0
    report["verified"] = ok
    (out / "export.json").write_text(json.dumps(report, indent=1))
    card = out / "README.md"
    if card.exists():
        p = report["parity"]
        card.write_text(card.read_text() + f"\n\n## Export\n\nExported by `lmforge export` as {fmt} ({dtype}); "
                        f"parity with the trained model on {p['texts']} held-out inputs: max |logit difference| "
                        f"{p['max_abs_logit_diff']:.2e}, top-1 agreement {p['top1_agreement']:.0%}.\n")
    log.info("exported %s to %s: max |logit difference| %.2e, top-1 agreement %.0f%% on %d inputs", model_dir, out,
             report["parity"]["max_abs_logit_diff"], 100 * report["parity"]["top1_agreement"], report["parity"]["texts"])
    if verify and not ok:
        raise LmforgeError(f"the export in {out} does not answer like the trained model (max |logit difference| "
                           f"{report['parity']['max_abs_logit_diff']:.3g}, allowed {TOLERANCE[dtype]:g} for {dtype})",
                           "see export.json; pass --no-verify to keep it anyway")
    return out
