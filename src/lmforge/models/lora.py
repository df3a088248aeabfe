"""LoRA fine-tuning on peft: train small low-rank updates instead of every weight.

    peft:
      r: 8                  # rank of each update
      alpha: 16             # updates are scaled by alpha / r
      dropout: 0.05
      target_modules: null  # default per architecture: bert/roberta query,value; gpt2 c_attn; llama q_proj,v_proj
      merge: true           # also write model/: base + adapter merged, a plain transformers model

    lmforge train examples/sentiment-minilm-lora.yaml
    lmforge predict runs/<name>/adapter "great food"     # an adapter folder works wherever a model does

The run folder gets ``adapter/`` (peft's adapter_config.json + adapter_model.safetensors, the
tokenizer, and model_config.json with the task's labels) and, with ``merge: true``, ``model/``.
Newly initialised modules (a classifier head) are trained in full and saved with the adapter.

The training loop sees the plain transformers model with LoRA layers injected (peft mutates it in
place), so checkpoints hold the full state and resume exactly; the PeftModel wrapper is kept
here to write the adapter and to merge at the end.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from transformers import AutoConfig, GenerationConfig

from ..config import Config, Permissions
from ..errors import LmforgeError
from ..fs import atomic_dir
from .load import check_weights_safe
from .onnx_model import is_onnx_dir, load_onnx
from .zoo import MODELS

log = logging.getLogger("lmforge")

ADAPTER_CONFIG = "adapter_config.json"
MODEL_CONFIG = "model_config.json"  # the fine-tuned model's config (labels, ...); not config.json, see load_model

# Used when peft has no default for a model type (its table covers bert, roberta, gpt2, llama, ...).
EXTRA_TARGETS = {"distilbert": ["q_lin", "v_lin"], "modernbert": ["Wqkv"]}


def default_targets(model) -> Any:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as table
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return table.get(model_type) or EXTRA_TARGETS.get(model_type) or "all-linear"


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


@dataclass
class LoraState:
    peft_model: Any
    trainable: int
    total: int
    target_modules: Any
    modules_to_save: list[str]


def count(model: torch.nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def added_token_rows(model, ids: list[int]) -> Optional[dict]:
    """What LoRA must train and save for tokens added to the vocabulary (a chat template's <|im_start|> and
    <|im_end|>): their rows of the input embeddings (PEFT's trainable tokens, which also follow a tied output
    layer) and, when the output layer is not tied, the whole output layer (else the model could never learn to
    write them). Without it the new rows stay random, and the adapter does not fit the base model."""
    if not ids:
        return None
    names = {id(m): n for n, m in model.named_modules()}
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    emb_name = names[id(emb)].rsplit(".", 1)[-1]
    tied = out is not None and out.weight is emb.weight
    return {"trainable_token_indices": {emb_name: list(ids)},
            "modules_to_save": [] if tied or out is None else [names[id(out)].rsplit(".", 1)[-1]]}


def apply(cfg: Config, parts, log=log) -> LoraState:
    """Inject LoRA layers into ``parts.model`` in place; only they (and new modules) stay trainable."""
    from peft import LoraConfig, get_peft_model

    pc = cfg.peft
    if not cfg.model.name:
        raise LmforgeError("peft (LoRA) needs a pretrained model: model.name is not set",
                           "LoRA adapts pretrained weights; train a from_config model in full (remove the peft block)")
    model = parts.model
    targets = pc.target_modules or default_targets(model)
    # Newly initialised modules (a classification head, a resized embedding) would stay random if
    # frozen: train them in full and save them with the adapter.
    new_modules = sorted({n.rsplit(".", 1)[0] for n in parts.new_param_names if "." in n})
    to_save = pc.modules_to_save if pc.modules_to_save is not None else new_modules
    token_rows = added_token_rows(model, parts.added_token_ids)
    if token_rows and pc.modules_to_save is None:
        to_save = sorted(set(to_save) | set(token_rows["modules_to_save"]))
    conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())  # GPT-2 stores weights transposed
    lcfg = LoraConfig(r=pc.r, lora_alpha=pc.alpha, lora_dropout=pc.dropout, target_modules=targets,
                      modules_to_save=to_save or None, fan_in_fan_out=conv1d,
                      trainable_token_indices=token_rows["trainable_token_indices"] if token_rows else None)
    try:
        peft_model = get_peft_model(model, lcfg)
    except ValueError as e:
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise LmforgeError(f"peft.target_modules {targets!r} do not fit this model: {str(e).splitlines()[0][:200]}",
                           f"linear layers of this model: {', '.join(names[:20])} (or use 'all-linear')") from None
    inner = peft_model.base_model.model  # the same module object, LoRA layers injected
    if cfg.train.gradient_checkpointing and hasattr(inner, "enable_input_require_grads"):
        inner.enable_input_require_grads()  # frozen embeddings would cut the graph at a checkpoint
    parts.model = inner
    # head_learning_rate applies to the trainable copies of the new modules
    names = [n for n, p in inner.named_parameters() if p.requires_grad]
    parts.new_param_names = {n for n in names if ".modules_to_save." in n}
    trainable, total = count(inner)
    log.info("LoRA r=%d alpha=%g on %s%s: %s trainable of %s parameters (%.2f%%)", pc.r, pc.alpha,
             targets if isinstance(targets, str) else ", ".join(targets),
             f" (+ full {', '.join(to_save)})" if to_save else "", f"{trainable:,}", f"{total:,}",
             100.0 * trainable / max(1, total))
    return LoraState(peft_model, trainable, total, targets if isinstance(targets, str) else list(targets), list(to_save))


def save(state: LoraState, run_dir: Path, tokenizer, card: str, merge: bool) -> None:
    """Write adapter/ and, with merge, model/ (main process, after training)."""
    pm = state.peft_model
    config = pm.base_model.model.config

    def write_adapter(d: Path):
        pm.save_pretrained(d, safe_serialization=True)
        tokenizer.save_pretrained(d)
        (d / MODEL_CONFIG).write_text(config.to_json_string())
        gc = getattr(pm.base_model.model, "generation_config", None)
        if gc is not None:  # e.g. a chat run's end-of-turn stop token: commands loading the adapter read it
            gc.save_pretrained(d)
        (d / "README.md").write_text(card)
    atomic_dir(Path(run_dir) / "adapter", write_adapter)
    if merge:
        merged = pm.merge_and_unload()  # folds B @ A * alpha / r into the base weights; modules_to_save -> plain

        def write_model(d: Path):
            merged.save_pretrained(d, safe_serialization=True)
            tokenizer.save_pretrained(d)
            (d / "README.md").write_text(card)
        atomic_dir(Path(run_dir) / "model", write_model)


def base_path(adapter_dir: Path) -> str:
    cfg = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text())
    base = cfg.get("base_model_name_or_path")
    if not base:
        raise LmforgeError(f"{adapter_dir}/{ADAPTER_CONFIG} does not name its base model",
                           "set base_model_name_or_path in it to the base model's folder")
    if base in MODELS:
        return str(MODELS[base].locate())
    if not Path(base).exists():
        if os.environ.get("HF_HUB_OFFLINE") or "/" not in base or base.startswith(("/", ".")):
            raise LmforgeError(f"the adapter in {adapter_dir} needs its base model {base}, which is not there",
                               f"put the base model back at {base}, or edit base_model_name_or_path "
                               f"in {adapter_dir}/{ADAPTER_CONFIG}")
    return base


def load_model(auto_cls, model_dir: Path, merge: bool = True, permissions: Permissions = Permissions(), **kwargs):
    """``auto_cls.from_pretrained(model_dir)``, where model_dir may also be an lmforge/peft adapter folder.

    An adapter is loaded onto its base model (with the fine-tuned config: labels) and, by default,
    merged for plain-speed inference.
    """
    model_dir = Path(model_dir)
    safe_only = {} if permissions.allow_pickle else {"use_safetensors": True}  # never torch.load unless allowed
    if is_onnx_dir(model_dir):  # lmforge export --format onnx: ONNX Runtime behind the same interface
        return load_onnx(model_dir, output_loading_info=bool(kwargs.get("output_loading_info")))
    if not is_adapter_dir(model_dir):
        check_weights_safe(str(model_dir), permissions)
        try:
            return auto_cls.from_pretrained(str(model_dir), **safe_only, **kwargs)
        except RuntimeError as e:
            if "mismatch" not in str(e):
                raise
            raise LmforgeError(f"the weights in {model_dir} do not fit its config.json (tensors of other shapes)",
                               "use the config.json the weights were saved with") from None
    from peft import PeftModel

    base = base_path(model_dir)
    check_weights_safe(base, permissions)
    extra = dict(kwargs)
    if (model_dir / MODEL_CONFIG).exists():
        extra["config"] = model_config(model_dir)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()
    check_weights_safe(str(model_dir), permissions)  # the adapter's own weights too
    vocab = getattr(extra.get("config"), "vocab_size", None)
    if vocab is not None:  # the run may have grown the vocabulary: load the base as it is, then grow it
        extra["config"] = copy.deepcopy(extra["config"])
        extra["config"].vocab_size = AutoConfig.from_pretrained(base).vocab_size
    loaded = auto_cls.from_pretrained(base, **safe_only, **extra)
    model, info = loaded if extra.get("output_loading_info") else (loaded, None)
    if vocab is not None and vocab != model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(vocab)  # the added rows come from the adapter (trainable tokens)
    if (model_dir / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(str(model_dir))
    model = PeftModel.from_pretrained(model, str(model_dir))
    model = model.merge_and_unload() if merge else model
    if info is not None:  # the adapter carries the trained new modules: nothing is left uninitialised
        return model, {**info, "missing_keys": []}
    return model


def model_config(model_dir: Path):
    """The transformers config of a model folder or of an adapter folder (its fine-tuned config)."""
    if is_adapter_dir(model_dir) and (Path(model_dir) / MODEL_CONFIG).exists():
        d = json.loads((Path(model_dir) / MODEL_CONFIG).read_text())
        return AutoConfig.for_model(d.pop("model_type"), **d)
    return AutoConfig.from_pretrained(str(model_dir))


def model_config_dict(model_dir: Path) -> dict:
    """config.json of a model folder, or model_config.json of an adapter folder."""
    for name in ("config.json", MODEL_CONFIG):
        f = Path(model_dir) / name
        if f.exists():
            try:
                return json.loads(f.read_text())
            except ValueError:
                return {}
    return {}


@contextmanager
def adapters_disabled(model: torch.nn.Module) -> Iterator[int]:
    """The model with its injected LoRA layers (and modules_to_save copies) switched off: the base model,
    without a second copy in memory. Yields how many layers were switched."""
    layers = [m for m in model.modules() if hasattr(m, "_disable_adapters")]
    saved = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield len(layers)
    finally:
        for m, was in zip(layers, saved):
            m._disable_adapters = was
