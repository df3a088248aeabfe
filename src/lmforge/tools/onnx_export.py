"""Writing a trained model as `model.onnx` with PyTorch's maintained exporter (`torch.onnx.export(dynamo=True)`,
which needs `onnxscript`).

Checked on this stack (torch 2.13, transformers 5.x): the dynamo exporter traces BERT classifiers and llama /
gpt2 causal LMs with dynamic batch and sequence axes, and ONNX Runtime reproduces PyTorch's logits to ~1e-7;
the older TorchScript exporter (`dynamo=False`) traced BERT's padding mask as a constant and was 1.6e-2 off on a
padded batch, so it is not used. Optimum is not needed.

What is exported:
- encoders (sequence classification, masked LM): input_ids, attention_mask (+ token_type_ids when the tokenizer
  makes them) -> logits;
- bare encoders (embedding models): the same inputs -> last_hidden_state (pooling and normalisation stay in
  lmforge, read from the folder's sentence-transformers files, which travel with the export);
- causal LMs (llama, gpt2, ...): input_ids, attention_mask, position_ids -> logits for every position, without a
  key/value cache (the model is traced with use_cache=False), so generation reruns the sequence each step.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from ..errors import LmforgeError

log = logging.getLogger("lmforge")
ENCODER_HEADS = ("ForSequenceClassification", "ForMaskedLM")
CAUSAL_HEADS = ("ForCausalLM", "LMHeadModel")


def kind_of(model) -> str:
    name = type(model).__name__
    if name.endswith(ENCODER_HEADS):
        return "encoder"
    if name.endswith(CAUSAL_HEADS):
        return "causal"
    if name.endswith("Model") and not getattr(model.config, "is_decoder", False) and \
            hasattr(model, "get_input_embeddings") and not hasattr(model, "lm_head"):
        return "hidden"
    raise LmforgeError(f"ONNX export covers sequence classifiers, masked LMs, embedding encoders and causal LMs; this "
                       f"model is {name}", "use --format safetensors")


class _Encoder(torch.nn.Module):
    def __init__(self, model, with_types: bool):
        super().__init__()
        self.model, self.with_types = model, with_types

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.with_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits


class _Hidden(_Encoder):
    def forward(self, input_ids, attention_mask, token_type_ids=None):
        extra = {"token_type_ids": token_type_ids} if self.with_types else {}
        return self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state


class _Causal(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).logits


def write_onnx(model, tokenizer, path: Path) -> dict:
    """Trace `model` (float32, eval) into `path`; returns what was exported (for export.json)."""
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's back end)
    except ImportError:
        raise LmforgeError("ONNX export needs onnx, onnxscript and onnxruntime, which are not installed",
                           "pip install 'lmforge[onnx]'") from None
    kind = kind_of(model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 8, 9, 10, 11]]) % model.config.vocab_size
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    output = "last_hidden_state" if kind == "hidden" else "logits"
    if kind in ("encoder", "hidden"):
        with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
        module = (_Hidden if kind == "hidden" else _Encoder)(model, with_types)
        names = ["input_ids", "attention_mask"]
        args = (ids, mask) + ((torch.zeros_like(ids),) if with_types else ())
        names += ["token_type_ids"] if with_types else []
    else:
        module, names = _Causal(model), ["input_ids", "attention_mask", "position_ids"]
        args = (ids, mask, (mask.cumsum(-1) - 1).clamp(min=0))
    shapes = {n: {0: batch, 1: seq} for n in names}
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1.8e9  # protobuf's 2 GB limit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            torch.onnx.export(module.eval(), args, str(path), input_names=names, output_names=[output],
                              dynamic_shapes=shapes, dynamo=True, external_data=big, verbose=False)
        except Exception as e:  # the exporter's own error, shortened to its first line
            raise LmforgeError(f"torch.onnx could not export this {type(model).__name__}: "
                               f"{str(e).strip().splitlines()[0][:200]}", "use --format safetensors") from None
    return {"kind": kind, "inputs": names, "outputs": [output], "dynamic_axes": ["batch", "sequence"],
            "kv_cache": False, "exporter": f"torch.onnx (dynamo) {torch.__version__}", "bytes": path.stat().st_size}
