"""`lmforge export RUN_OR_MODEL --format safetensors|gguf|onnx [--dtype ...] [--quantize ...] [-o OUT]`.

- safetensors: a plain Hugging Face folder (a LoRA run merged into its base first), dtype float32, bfloat16 or
  float16;
- gguf: one `.gguf` file for llama.cpp / Ollama / LM Studio (llama-family and gpt2 causal LMs), f32, f16, q8_0 or
  q4_0, tokenizer and chat template in its metadata (tools/gguf_export.py);
- onnx: `model.onnx` + config + tokenizer for ONNX Runtime (classifiers, masked LMs, causal LMs without a KV
  cache; tools/onnx_export.py). lmforge predict / fill-mask / generate / serve accept the folder.

Every export is then loaded back by an independent reader (transformers alone for safetensors, transformers'
GGUF loader for gguf, ONNX Runtime for onnx) and run on a few held-out inputs (the run's eval or test data when
it has a file, else fixed texts) next to the model as lmforge loads it. Measured: max |logit difference| (and
relative to the largest logit), top-1 agreement over all positions, and for causal LMs the greedy continuations
of a few prompts (and, for GGUF, whether its tokenizer encodes the texts to the same ids). All of it goes to
`OUT/export.json` and the model card. A parity outside the tolerance of the format (TOLERANCES) is an error
(exit 2) unless `--no-verify`.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from ..config import load_config
from ..errors import LmforgeError
from ..fs import atomic_dir, check_output_dir
from ..models.load import resolve_model_dir
from ..models.onnx_model import is_onnx_dir, load_onnx
from ..tasks import embedding, task_of
from ..train.recovery import previous_run
from ..use.inputs import read_texts
from . import gguf_export, onnx_export

log = logging.getLogger("lmforge")

FORMATS = ("safetensors", "gguf", "onnx")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (max |logit diff| allowed, or None; max |logit diff| / max |logit| allowed, or None; min top-1 agreement);
# exact precisions must also give identical greedy continuations
TOLERANCES = {"float32": (1e-4, None, 1.0), "f32": (1e-4, None, 1.0), "onnx": (1e-4, None, 1.0),
              "float16": (None, 0.01, 0.98), "f16": (None, 0.01, 0.98), "bfloat16": (None, 0.05, 0.9),
              "q8_0": (None, 0.05, 0.95), "q4_0": (None, 0.3, 0.8)}
EXACT = ("float32", "f32", "onnx")
FIXED_TEXTS = ["The food was good and the service was fine.", "And God said, Let there be light.",
               "Paris is the capital of France.", "I would not buy this again."]
PROMPTS = ["The capital of France is", "Once upon a time"]
NEW_TOKENS = 16


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
        res = model(**inputs)  # logits, or an embedding model's last hidden state
        logits = (res.logits if getattr(res, "logits", None) is not None else res.last_hidden_state).float()[0]
        out.append(logits[None] if logits.dim() == 1 else logits)  # (positions, classes): one row for a classifier
    return out


@torch.no_grad()
def _greedy(model, tokenizer, prompts: list[str]) -> list[list[int]]:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    outs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
        outs.append(gen[0, ids.shape[1]:].tolist())
    return outs


def parity(reference, exported, tokenizer, texts: list[str], causal: bool = False) -> dict:
    """Max |logit difference|, the largest logit, top-1 agreement over all positions and (causal LMs) the greedy
    continuations of a few prompts, of two models on the texts."""
    a, b = _logits(reference, tokenizer, texts), _logits(exported, tokenizer, texts)
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    scale = max(float(x.abs().max()) for x in a)
    same = sum(int((x.argmax(-1) == y.argmax(-1)).sum()) for x, y in zip(a, b))
    positions = sum(x.shape[0] for x in a)
    out = {"texts": len(texts), "positions": positions, "max_abs_logit_diff": diff, "max_abs_logit": scale,
           "relative_diff": diff / max(scale, 1e-12), "top1_agreement": same / positions}
    if causal:
        prompts = PROMPTS + [" ".join(t.split()[:6]) for t in texts[:2]]
        ref, got = _greedy(reference, tokenizer, prompts), _greedy(exported, tokenizer, prompts)
        agree = [sum(1 for _ in _same_prefix(r, g)) / max(len(r), 1) for r, g in zip(ref, got)]
        out["greedy"] = {"prompts": len(prompts), "new_tokens": NEW_TOKENS,
                         "identical": sum(r == g for r, g in zip(ref, got)),
                         "prefix_agreement": sum(agree) / len(agree),
                         "examples": [{"prompt": p, "trained": tokenizer.decode(r), "exported": tokenizer.decode(g)}
                                      for p, r, g in list(zip(prompts, ref, got))[:2]]}
    return out


def _same_prefix(a: list[int], b: list[int]):
    for x, y in zip(a, b):
        if x != y:
            return
        yield x


def judge(report: dict) -> tuple[bool, str]:
    """Whether the parity is inside the tolerance of the export's precision, and the reason when not."""
    p, precision = report["parity"], report["precision"]
    max_abs, max_rel, min_top1 = TOLERANCES[precision]
    if max_abs is not None and p["max_abs_logit_diff"] > max_abs:
        return False, f"max |logit difference| {p['max_abs_logit_diff']:.3g}, allowed {max_abs:g} for {precision}"
    if max_rel is not None and p["relative_diff"] > max_rel:
        return False, (f"max |logit difference| is {p['relative_diff']:.1%} of the largest logit, allowed "
                       f"{max_rel:.0%} for {precision}")
    if p["top1_agreement"] < min_top1:
        return False, f"top-1 agreement {p['top1_agreement']:.1%}, required {min_top1:.0%} for {precision}"
    greedy = p.get("greedy")
    if greedy and precision in EXACT and greedy["identical"] < greedy["prompts"]:
        return False, f"{greedy['prompts'] - greedy['identical']} greedy continuation(s) differ"
    return True, ""


def verdict_line(report: dict) -> str:
    """One line saying what the parity check found and against which tolerance."""
    p, precision = report["parity"], report["precision"]
    max_abs, max_rel, min_top1 = TOLERANCES[precision]
    diff = (f"max |Δlogit| {p['max_abs_logit_diff']:.2g} ≤ tolerance {max_abs:g}" if max_abs is not None else
            f"max |Δlogit| {p['relative_diff']:.1%} of the largest logit ≤ tolerance {max_rel:.0%}")
    head = "verified" if report.get("verified") else "NOT verified"
    return f"{head}: top-1 {p['top1_agreement']:.0%} (≥ {min_top1:.0%}), {diff}"


def _check_options(fmt: str, dtype: Optional[str], quantize: Optional[str]) -> str:
    """The export's precision name, after refusing option pairs that do not fit the format."""
    if fmt not in FORMATS:
        raise LmforgeError(f"export format '{fmt}' is not one of {', '.join(FORMATS)}")
    if quantize is not None and fmt != "gguf":
        raise LmforgeError(f"--quantize is for --format gguf, not {fmt}", "use --dtype for safetensors")
    if fmt == "gguf":
        if dtype not in (None, "float32"):
            raise LmforgeError("--dtype is for --format safetensors", "use --quantize f32|f16|q8_0|q4_0 with gguf")
        if (quantize or "f16") not in gguf_export.QUANTS:
            raise LmforgeError(f"--quantize {quantize} is not one of {', '.join(gguf_export.QUANTS)}")
        return quantize or "f16"
    if fmt == "onnx":
        if dtype not in (None, "float32"):
            raise LmforgeError(f"ONNX export writes float32 only, not {dtype}")
        return "onnx"
    if (dtype or "float32") not in DTYPES:
        raise LmforgeError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    return dtype or "float32"



def _write(fmt: str, precision: str, trained, tokenizer, model_dir: Path, tmp: Path, pre=None) -> dict:
    """Write the export's files into tmp; returns the format's own facts for export.json."""
    card = model_dir / "README.md"  # the model card travels with the weights
    if card.exists():
        (tmp / "README.md").write_text(card.read_text())
    if fmt != "gguf":
        for name in embedding.ST_FILES:  # an embedding model's pooling travels with it
            src = model_dir / name
            if src.is_dir():
                shutil.copytree(src, tmp / name)
            elif src.is_file():
                shutil.copy2(src, tmp / name)
    if fmt == "safetensors":
        saved = trained if precision == "float32" else copy.deepcopy(trained).to(DTYPES[precision])
        saved.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return {"files": ["model.safetensors"]}
    if fmt == "onnx":
        facts = onnx_export.write_onnx(trained, tokenizer, tmp / "model.onnx")
        trained.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"files": ["model.onnx"], "onnx": facts}
    name = model_dir.parent.name if model_dir.name in ("model", "adapter") else model_dir.name
    with tempfile.TemporaryDirectory() as tok_dir:
        tokenizer.save_pretrained(tok_dir)
        facts = gguf_export.write_gguf(trained, tokenizer, Path(tok_dir), tmp / f"{name}-{precision}.gguf",
                                       precision, name, pre)
    return {"files": [f"{name}-{precision}.gguf"], "gguf": facts}


def _reload(fmt: str, out: Path, report: dict, task, trained) -> tuple:
    """The export read back by an independent reader: (model, the tokenizer it brings or None)."""
    if fmt == "safetensors":
        return task.auto_class.from_pretrained(str(out), dtype=torch.float32).eval(), None
    if fmt == "onnx":
        return load_onnx(out), None
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()  # its per-tensor de-quantizing bar
    gguf_file = report["files"][0]
    # transformers' GGUF reader does not map gpt2's n_positions nor qwen3's head size (llama.cpp reads them as
    # context_length and attention.key_length, which tests/test_gguf_llama_cpp.py checks against its converter)
    extra = {"n_positions": trained.config.n_positions} if trained.config.model_type == "gpt2" else {}
    if getattr(trained.config, "head_dim", None) is not None and trained.config.model_type != "gpt2":
        extra["head_dim"] = trained.config.head_dim
    # the GGUF reader's own per-tensor bar is a plain tqdm that no setting reaches (TQDM_DISABLE is read when tqdm
    # is imported): its module's tqdm is swapped for a pass-through while it reads
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    bar = gguf_utils.tqdm
    gguf_utils.tqdm = lambda iterable, *args, **kwargs: iterable
    try:
        model = AutoModelForCausalLM.from_pretrained(str(out), gguf_file=gguf_file, dtype=torch.float32, **extra)
        return model.eval(), AutoTokenizer.from_pretrained(str(out), gguf_file=gguf_file)
    finally:
        gguf_utils.tqdm = bar


def _card_line(report: dict) -> str:
    p = report["parity"]
    line = (f"\n\n## Export\n\nExported by `lmforge export` as {report['format']} ({report['precision']}); parity "
            f"with the trained model on {p['texts']} held-out inputs: max |logit difference| "
            f"{p['max_abs_logit_diff']:.2e} ({p['relative_diff']:.2%} of the largest logit), top-1 agreement "
            f"{p['top1_agreement']:.1%} of {p['positions']} positions")
    if "greedy" in p:
        line += f", greedy continuations identical for {p['greedy']['identical']} of {p['greedy']['prompts']} prompts"
    return line + ".\n"


def _check_output_outside_runs(out: Path) -> None:
    """An export never goes inside a run folder's checkpoints/, model/ or adapter/ (resume deletes and rewrites
    checkpoints; model/ is what the run's commands load)."""
    out = out.expanduser().resolve()
    for parent in out.parents:
        if (parent / "manifest.json").exists() or (parent / "config.yaml").exists() and (parent / "log.jsonl").exists():
            inside = out.relative_to(parent).parts[0]
            if inside in ("checkpoints", "model", "adapter"):
                raise LmforgeError(f"-o {out} is inside the run folder {parent}'s {inside}/, which lmforge writes "
                                   "and replaces", f"export next to the run instead, e.g. -o {parent}-export")


def _run_state(model_dir: Path) -> Optional[str]:
    """The recorded state of the run a model folder belongs to; a run still training is refused."""
    state = previous_run(Path(model_dir).parent)
    if state is None:
        return None
    if state["status"] == "alive":
        raise LmforgeError(f"the run {Path(model_dir).parent} is still training (pid {state.get('pid')})",
                           "wait until it finishes, or export one of its checkpoints/step-N folders")
    if state["status"] in ("failed", "interrupted", "crashed"):
        log.warning("the run %s %s: exporting what %s holds", Path(model_dir).parent,
                    {"failed": "failed", "interrupted": "was interrupted", "crashed": "ended without a clean exit"}
                    [state["status"]], model_dir)
    return state["status"]


def export(model: str, fmt: str = "safetensors", output: Optional[str] = None, dtype: Optional[str] = None,
           verify: bool = True, quantize: Optional[str] = None, gguf_pre: Optional[str] = None) -> Path:
    precision = _check_options(fmt, dtype, quantize)
    model_dir = resolve_model_dir(model)
    if is_onnx_dir(model_dir):
        raise LmforgeError(f"{model_dir} is already an ONNX export", "export from the run folder it came from")
    out = check_output_dir(output or f"{Path(model).expanduser().as_posix().rstrip('/')}-export-{fmt}",
                           "export folder")
    if out.exists() and any(out.iterdir()):
        raise LmforgeError(f"export folder {out} is not empty", "choose another -o, or remove it first")
    _check_output_outside_runs(out)
    run_status = _run_state(model_dir)
    task = task_of(model_dir)
    trained, tokenizer = task.load_for_use(model_dir, allow_untrained=True)  # LoRA: merged into its base
    trained.float().eval()
    pre = None
    if gguf_pre is not None and fmt != "gguf":
        raise LmforgeError("--gguf-pre is for --format gguf")
    if fmt == "gguf":
        gguf_export.check_supported(trained, precision)  # before any file is written
        with tempfile.TemporaryDirectory() as tok_dir:
            tokenizer.save_pretrained(tok_dir)
            pre = gguf_export.pre_tokenizer(tokenizer, json.loads((Path(tok_dir) / "tokenizer.json").read_text()),
                                            gguf_pre)
    started = time.perf_counter()
    report = {"format": fmt, "precision": precision, "source": str(model_dir), "task": task.name,
              "run_status": run_status}
    log.info("export: writing %s (%s)%s", fmt, precision,
             " — the ONNX exporter traces the whole model, a few minutes for a 100M+ model" if fmt == "onnx" else "")
    try:
        atomic_dir(out, lambda tmp: report.update(_write(fmt, precision, trained, tokenizer, model_dir, tmp, pre)))
    except OSError as e:  # a read-only or full disk: one line, nothing half-written left (atomic_dir)
        raise LmforgeError(f"cannot write the export to {out}: {e.strerror or e}",
                           "choose a writable -o with room for the model") from None
    report["export_s"] = round(time.perf_counter() - started, 2)
    log.info("export: written in %.1f s; reading it back with an independent reader to compare with the trained "
             "model", report["export_s"])
    reloaded, own_tokenizer = _reload(fmt, out, report, task, trained)
    texts = probe_texts(model_dir)
    causal = type(trained).__name__.endswith(onnx_export.CAUSAL_HEADS)
    report["parity"] = parity(trained, reloaded, tokenizer, texts, causal=causal)
    if own_tokenizer is not None:  # the GGUF's own tokenizer, as llama.cpp-side readers rebuild it
        # the held-out texts, the prompts and llama.cpp's own probe (digits, whitespace runs, code, emoji, scripts)
        probe = json.loads(gguf_export.PRE_TABLE.read_text())["probe"]
        same = [own_tokenizer(t)["input_ids"] == tokenizer(t)["input_ids"] for t in texts + PROMPTS + [probe]]
        report["parity"]["tokenizer_agreement"] = sum(same) / len(same)
    report["verified"], reason = judge(report)
    (out / "export.json").write_text(json.dumps(report, indent=1))
    card = out / "README.md"
    if card.exists():
        card.write_text(card.read_text() + _card_line(report))
    p = report["parity"]
    log.info("exported %s to %s: max |logit difference| %.2e, top-1 agreement %.1f%% on %d inputs", model_dir, out,
             p["max_abs_logit_diff"], 100 * p["top1_agreement"], p["texts"])
    if verify and not report["verified"]:
        raise LmforgeError(f"the export in {out} does not answer like the trained model ({reason})",
                           "see export.json; pass --no-verify to keep it anyway")
    return out
