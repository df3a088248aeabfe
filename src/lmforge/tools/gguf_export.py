"""Writing a trained causal LM as one GGUF file, the format llama.cpp, Ollama and LM Studio read.

Tensor names come from the `gguf` package's own maps (`gguf.get_tensor_name_map`), not a table kept here. Two
layout changes match what llama.cpp's converter does and what transformers' GGUF loader undoes:
- llama: the query and key projections are permuted from the half-split rotary layout of Hugging Face to the
  interleaved one of llama.cpp (per head, or per key/value head for the keys);
- gpt2: its Conv1D weights are stored (in, out) and are transposed to (out, in).
A tied output projection is not written (llama.cpp then uses the token embedding, as transformers does).

Quantization: 1-D tensors (norms, biases) stay f32 as in llama.cpp; 2-D weights become f16, q8_0 or q4_0
(a weight whose rows are not a multiple of the 32-value block falls back to f16). With q4_0 the token
embedding and the output projection are kept at q8_0, the same protection llama.cpp's quantizer gives them.

The tokenizer goes into the metadata the way llama.cpp reads it: a byte-level BPE ("gpt2" model) with its
tokens, token types, merges, special ids, whether a BOS is added, the pre-tokenizer name and the chat template.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from ..errors import LmforgeError

ARCHES = ("llama", "gpt2")
QUANTS = ("f32", "f16", "q8_0", "q4_0")
# the pre-tokenizer name llama.cpp keys its split regex on, by the tokenizer.json pre_tokenizer it matches
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def _gguf():
    import gguf
    return gguf


def check_supported(model, quant: str) -> None:
    arch = getattr(model.config, "model_type", "?")
    if arch not in ARCHES:
        raise LmforgeError(f"GGUF export covers causal LMs of the {' and '.join(ARCHES)} architectures; this model "
                           f"is {arch}", "use --format safetensors (any model) or --format onnx")
    if quant not in QUANTS:
        raise LmforgeError(f"--quantize {quant} is not one of {', '.join(QUANTS)}")
    rope = getattr(model.config, "rope_parameters", None) or {}
    if arch == "llama" and rope.get("rope_type", "default") != "default":
        raise LmforgeError(f"GGUF export of a llama model with {rope.get('rope_type')} rope scaling is not written",
                           "use --format safetensors and llama.cpp's convert_hf_to_gguf.py")
    if arch == "llama" and (getattr(model.config, "attention_bias", False) or getattr(model.config, "mlp_bias", False)):
        raise LmforgeError("GGUF export of a llama model with bias terms is not written", "use --format safetensors")


def _pre_tokenizer_name(tokenizer_json: dict) -> tuple[str, bool]:
    """llama.cpp's name for this pre-tokenizer, and whether it was recognised."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") for s in steps]
    if types == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2", True  # llama.cpp's name (the tokenizer *model* is "gpt2"; as a pre-tokenizer it is refused)
    if types == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm", True
    if types and types[0] == "Split":
        regex = (steps[0].get("pattern") or {}).get("Regex", "")
        if regex == LLAMA3_REGEX:
            return "llama-bpe", True
        if regex == GPT2_REGEX:
            return "gpt-2", True
    return "gpt-2", False


def _add_tokenizer(writer, tokenizer, tok_dir: Path, n_vocab: int) -> dict:
    """Vocabulary, merges, special ids and chat template as llama.cpp reads them; returns what was written."""
    gguf = _gguf()
    data = json.loads((tok_dir / "tokenizer.json").read_text()) if (tok_dir / "tokenizer.json").exists() else {}
    model = data.get("model", {})
    if model.get("type") != "BPE" or (data.get("decoder") or {}).get("type") != "ByteLevel":
        raise LmforgeError("GGUF export writes byte-level BPE tokenizers (GPT-2, SmolLM, Llama 3, Qwen style); this "
                           f"tokenizer is {model.get('type', 'not a fast tokenizer')}",
                           "use --format safetensors")
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if len(tokens) > n_vocab:
        raise LmforgeError(f"the tokenizer has {len(tokens)} tokens but the model's embedding only {n_vocab} rows")
    added = tokenizer.added_tokens_decoder  # id -> AddedToken
    types = []
    for i in range(len(tokens)):
        tok = added.get(i)
        types.append(gguf.TokenType.NORMAL if tok is None else
                     gguf.TokenType.CONTROL if tok.special else gguf.TokenType.USER_DEFINED)
    pad_rows = n_vocab - len(tokens)  # embedding rows past the tokenizer: placeholders, as llama.cpp writes
    tokens += [f"[PAD{i}]" for i in range(len(tokens), n_vocab)]
    types += [gguf.TokenType.UNUSED] * pad_rows
    pre, known = _pre_tokenizer_name(data)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_token_merges(merges)
    ids = {"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "unk": tokenizer.unk_token_id,
           "pad": tokenizer.pad_token_id}
    for kind, value in ids.items():
        if value is not None:
            getattr(writer, {"unk": "add_unk_token_id", "pad": "add_pad_token_id"}.get(kind, f"add_{kind}_token_id"))(
                int(value))
    probe = tokenizer("a")["input_ids"]
    adds_bos = bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id
    writer.add_add_bos_token(adds_bos)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
    return {"model": "gpt2", "pre": pre, "pre_recognised": known, "tokens": len(tokenizer), "padding_rows": pad_rows,
            "merges": len(merges), "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "add_bos": adds_bos, **{f"{k}_id": v for k, v in ids.items()}}


def _add_hparams(writer, config) -> None:
    if config.model_type == "llama":
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        rope = getattr(config, "rope_parameters", None) or {}
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        writer.add_rope_dimension_count(head_dim)
        writer.add_vocab_size(config.vocab_size)
    else:  # gpt2
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(config.layer_norm_epsilon)


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Hugging Face's half-split rotary rows -> llama.cpp's interleaved pairs, per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tensors(model):
    """(gguf name, float32 numpy array) for each tensor the file holds."""
    gguf = _gguf()
    config = model.config
    arch = gguf.MODEL_ARCH.LLAMA if config.model_type == "llama" else gguf.MODEL_ARCH.GPT2
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    for name, tensor in model.state_dict().items():
        if name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")):
            continue  # buffers, not weights
        if tied and name == "lm_head.weight":
            continue
        data = tensor.detach().float().cpu()
        if config.model_type == "llama" and name.endswith("q_proj.weight"):
            data = _permute(data, config.num_attention_heads)
        elif config.model_type == "llama" and name.endswith("k_proj.weight"):
            data = _permute(data, config.num_key_value_heads or config.num_attention_heads)
        elif config.model_type == "gpt2" and name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            data = data.t()
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise LmforgeError(f"the gguf package has no name for tensor {name} of this {config.model_type} model",
                               "use --format safetensors")
        yield new, data.contiguous().numpy()


def _encode(name: str, data: np.ndarray, quant: str):
    """(array to write, its GGML type or None for plain float) under the requested quantization."""
    gguf = _gguf()
    if data.ndim < 2 or quant == "f32":
        return data.astype(np.float32), None, "f32"
    if quant == "f16":
        return data.astype(np.float16), None, "f16"
    qtype = gguf.GGMLQuantizationType.Q8_0 if quant == "q8_0" or name.startswith(("token_embd", "output.")) \
        else gguf.GGMLQuantizationType.Q4_0
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return data.astype(np.float16), None, "f16"
    return gguf.quants.quantize(data, qtype), qtype, qtype.name.lower()


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


def write_gguf(model, tokenizer, tok_dir: Path, path: Path, quant: str, name: str) -> dict:
    """Write `model` (+ tokenizer from `tok_dir`) to `path`; returns what went in (for export.json)."""
    gguf = _gguf()
    check_supported(model, quant)
    config = model.config
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA if config.model_type == "llama"
                                                         else gguf.MODEL_ARCH.GPT2])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _add_hparams(writer, config)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quant]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    tok_info = _add_tokenizer(writer, tokenizer, tok_dir, n_vocab)
    # a chat run stops at its end-of-turn token as well as at EOS (generation_config.eos_token_id is a list):
    # llama.cpp reads that token as tokenizer.ggml.eot_token_id
    gc_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra = [int(i) for i in (gc_eos if isinstance(gc_eos, list) else []) if i != tokenizer.eos_token_id]
    if extra:
        writer.add_eot_token_id(extra[0])
    tok_info["eot_id"] = extra[0] if extra else None
    kinds: Counter = Counter()
    for tname, data in _gguf_tensors(model):
        encoded, qtype, kind = _encode(tname, data, quant)
        kinds[kind] += 1
        writer.add_tensor(tname, encoded, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    return {"architecture": config.model_type, "quantize": quant, "tensor_types": dict(kinds),
            "tokenizer": tok_info, "bytes": path.stat().st_size}
