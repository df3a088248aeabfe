"""An ONNX folder written by `lmforge export --format onnx`, run in ONNX Runtime behind the small part of the
transformers model interface lmforge's predict, fill-mask, generate and serve use.

The folder holds `model.onnx` (inputs input_ids, attention_mask [, token_type_ids | position_ids]; output
logits, or last_hidden_state for an embedding model; batch and sequence axes dynamic), the model's config.json, the tokenizer, and export.json. The forward
pass runs in ONNX Runtime on CPU; tokenisation and the small post-processing (softmax, top-k) stay in lmforge.

Causal LMs are exported without a key/value cache, so `generate` here reruns the whole sequence for each new
token (greedy only): fine for short answers from small models, quadratic in the length for long ones.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import LmforgeError

ONNX_FILE = "model.onnx"


def is_onnx_dir(path) -> bool:
    p = Path(path)
    return (p / ONNX_FILE).is_file() and not any((p / w).exists() for w in ("model.safetensors",
                                                                            "model.safetensors.index.json"))


def session(path: Path):
    try:
        import onnxruntime as ort
    except ImportError:
        raise LmforgeError(f"{path} is an ONNX model and ONNX Runtime is not installed",
                           "pip install 'lmforge[onnx]' (onnx, onnxruntime, onnxscript)") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxModel:
    """Callable like a transformers model: `model(input_ids=..., attention_mask=...).logits` (a torch tensor)."""

    def __init__(self, model_dir: Path, config):
        self.model_dir = Path(model_dir)
        self.config = config
        self.session = session(self.model_dir / ONNX_FILE)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)  # device queries: always CPU
        self.training = False

    # the bits of nn.Module lmforge touches at inference
    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def float(self):
        return self

    def to(self, device=None, *args, **kwargs):
        if device is not None and torch.device(device).type != "cpu":
            raise LmforgeError("an ONNX model runs in ONNX Runtime on the CPU here", "serve the run folder for a GPU")
        return self

    def parameters(self):
        yield self._anchor

    @property
    def device(self):
        return torch.device("cpu")

    def __call__(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None, **_):
        ids = input_ids if isinstance(input_ids, torch.Tensor) else torch.as_tensor(input_ids)
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self.input_names:
            feeds["token_type_ids"] = torch.zeros_like(ids) if token_type_ids is None else token_type_ids
        if "position_ids" in self.input_names:
            feeds["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0) if position_ids is None else position_ids
        arrays = {k: np.ascontiguousarray(v.detach().cpu().numpy().astype(np.int64)) for k, v in feeds.items()}
        name = self.session.get_outputs()[0].name  # logits, or an embedding model's last_hidden_state
        (out,) = self.session.run([name], arrays)
        return SimpleNamespace(**{name: torch.from_numpy(out)})

    forward = __call__

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 20, eos_token_id=None,
                 pad_token_id=None, streamer=None, do_sample: bool = False, **kwargs):
        """Greedy decoding over left-padded prompts (no key/value cache: the sequence is rerun each step)."""
        if do_sample or kwargs.get("num_return_sequences", 1) > 1:
            raise LmforgeError("an ONNX causal LM generates greedily only here",
                               "drop --temperature/--top-k/--top-p, or use the run folder")
        ids = input_ids.clone()
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask.clone()
        eos = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or [])
        pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
        done = torch.zeros(ids.shape[0], dtype=torch.bool)
        if streamer is not None:
            streamer.put(ids)
        for _ in range(max_new_tokens):
            nxt = self(input_ids=ids, attention_mask=mask).logits[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            if streamer is not None:
                streamer.put(nxt)
            done |= torch.tensor([int(t) in eos for t in nxt])
            if bool(done.all()):
                break
        if streamer is not None:
            streamer.end()
        return ids


def load_onnx(model_dir: Path, output_loading_info: bool = False):
    from transformers import AutoConfig, GenerationConfig
    model = OnnxModel(model_dir, AutoConfig.from_pretrained(str(model_dir)))
    model.generation_config = GenerationConfig.from_model_config(model.config)
    return (model, {"missing_keys": []}) if output_loading_info else model
