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

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import LmforgeError

ARCHES = ("llama", "gpt2", "qwen2", "qwen3")
ROPE_ARCHES = ("llama", "qwen2", "qwen3")  # the hparams these share (qwen: no permutation, rotate-half rope)
QUANTS = ("f32", "f16", "q8_0", "q4_0")
# GPT-2's split regex (the byte-level pre-tokenizer's built-in one), llama.cpp's "gpt-2" preset
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

def _gguf():
    import gguf
    return gguf


def gguf_arch(model_type: str):
    gguf = _gguf()
    return {"llama": gguf.MODEL_ARCH.LLAMA, "gpt2": gguf.MODEL_ARCH.GPT2, "qwen2": gguf.MODEL_ARCH.QWEN2,
            "qwen3": gguf.MODEL_ARCH.QWEN3}[model_type]


def check_supported(model, quant: str) -> None:
    """Refuse, in one line and before any file is written, what this writer does not map: a file that llama.cpp
    would load wrong is never written."""
    config = model.config
    arch = getattr(config, "model_type", "?")
    if arch not in ARCHES:
        raise LmforgeError(f"GGUF export covers causal LMs of the {', '.join(ARCHES)} architectures; this model "
                           f"is {arch}", "use --format safetensors (any model) or --format onnx")
    if quant not in QUANTS:
        raise LmforgeError(f"--quantize {quant} is not one of {', '.join(QUANTS)}")
    if arch in ROPE_ARCHES:
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise LmforgeError(f"GGUF export of a {arch} model with {rope.get('rope_type', 'scaled')} rope scaling "
                               "is not written", "use --format safetensors and llama.cpp's convert_hf_to_gguf.py")
        if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
            raise LmforgeError(f"GGUF export of a {arch} model with sliding-window attention is not written",
                               "use --format safetensors and llama.cpp's convert_hf_to_gguf.py")
        if getattr(config, "partial_rotary_factor", 1.0) not in (None, 1, 1.0):
            raise LmforgeError(f"GGUF export of a {arch} model with partial rotary embeddings is not written",
                               "use --format safetensors")
    if arch == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise LmforgeError("GGUF export of a llama model with bias terms is not written", "use --format safetensors")
    if arch in ("qwen2", "qwen3") and getattr(config, "mlp_bias", False):
        raise LmforgeError(f"GGUF export of a {arch} model with MLP biases is not written", "use --format safetensors")


PRE_TABLE = Path(__file__).with_name("gguf_pre_tokenizers.json")  # llama.cpp's table (benchmarks/gguf_pre_table.py)


def _gpt2_split(tokenizer_json: dict) -> bool:
    """The pre-tokenizer is GPT-2's own byte-level split (ByteLevel with its built-in regex, or that regex as an
    explicit Split before a regex-free ByteLevel): what llama.cpp's "gpt-2" preset implements."""
    pre = tokenizer_json.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [s.get("type") for s in steps]
    if types == ["ByteLevel"]:
        return steps[0].get("use_regex", True)
    return types == ["Split", "ByteLevel"] and (steps[0].get("pattern") or {}).get("Regex") == GPT2_REGEX \
        and not steps[1].get("use_regex", True)


@dataclass
class PreTokenizer:
    name: str  # tokenizer.ggml.pre
    how: str  # how it was chosen: llama.cpp's hash table, GPT-2's split, or --gguf-pre
    hash: str  # sha256 of the token ids of llama.cpp's probe text, as its converter computes it


def pre_tokenizer(tokenizer, tokenizer_json: dict, override: Optional[str] = None) -> PreTokenizer:
    """The pre-tokenizer name the way llama.cpp's converter picks it: the sha256 of the tokenizer's ids on
    llama.cpp's probe text (digits, whitespace runs, code, emoji, non-Latin scripts), looked up in llama.cpp's
    table. A hash it does not know is a byte-level BPE trained here with GPT-2's split (llama.cpp's "gpt-2"), or
    a one-line refusal naming the hash; `override` (--gguf-pre) names it outright."""
    table = json.loads(PRE_TABLE.read_text())
    chk = hashlib.sha256(str(tokenizer.encode(table["probe"])).encode()).hexdigest()
    if override:
        return PreTokenizer(override, "--gguf-pre", chk)
    if chk in table["hashes"]:
        return PreTokenizer(table["hashes"][chk], "llama.cpp's hash table", chk)
    if _gpt2_split(tokenizer_json):
        return PreTokenizer("gpt-2", "GPT-2's byte-level split (a hash llama.cpp's table does not list)", chk)
    raise LmforgeError(f"llama.cpp does not know this tokenizer's pre-tokenizer (probe hash {chk}), so it would split "
                       "text differently from training", "pass --gguf-pre NAME (a llama.cpp pre-tokenizer name, e.g. "
                       "llama-bpe, qwen2, smollm) if you know which split it uses, or export --format safetensors")


def _add_tokenizer(writer, tokenizer, tok_dir: Path, n_vocab: int, pre: PreTokenizer) -> dict:
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
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre.name)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_token_merges(merges)
    # special ids, add_bos / add_eos and the chat template exactly as llama.cpp's converter writes them: with the
    # gguf package's own SpecialVocab, which its converter uses too
    special = gguf.SpecialVocab(str(tok_dir), load_merges=False, n_vocab=n_vocab)
    special.add_to_gguf(writer, quiet=True)
    if not special.chat_template and getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)
    ids = {kind: special.special_token_ids.get(kind) for kind in ("bos", "eos", "unk", "pad", "sep", "cls", "mask")}
    probe = tokenizer("a")["input_ids"]  # what encoding adds, where tokenizer_config.json does not say
    adds = {"bos": bool(probe) and ids["bos"] is not None and probe[0] == ids["bos"],
            "eos": bool(probe) and ids["eos"] is not None and probe[-1] == ids["eos"]}
    for kind, value in adds.items():
        if kind not in special.add_special_token:
            getattr(writer, f"add_add_{kind}_token")(value)
    adds_bos = bool(special.add_special_token.get("bos", adds["bos"]))
    return {"model": "gpt2", "pre": pre.name, "pre_chosen_by": pre.how, "pre_hash": pre.hash,
            "tokens": len(tokenizer), "padding_rows": pad_rows,
            "merges": len(merges), "chat_template": bool(getattr(tokenizer, "chat_template", None)),
            "add_bos": adds_bos, **{f"{k}_id": v for k, v in ids.items() if v is not None}}


def _add_hparams(writer, config) -> None:
    """The hyper-parameters llama.cpp reads, written as its converter writes them (convert_hf_to_gguf.py's
    TextModel / LlamaModel / Qwen2Model set_gguf_parameters): the head size whenever the config names one."""
    if config.model_type in ROPE_ARCHES:
        rope = getattr(config, "rope_parameters", None) or {}
        head_dim = getattr(config, "head_dim", None)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_context_length(config.max_position_embeddings)
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
        writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
        writer.add_layer_norm_rms_eps(config.rms_norm_eps)
        if head_dim is not None:  # llama.cpp assumes hidden / heads otherwise (wrong for e.g. Qwen3-0.6B)
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        if config.model_type == "llama":
            writer.add_vocab_size(config.vocab_size)
            writer.add_rope_dimension_count(head_dim or config.hidden_size // config.num_attention_heads)
    else:  # gpt2
        writer.add_block_count(config.n_layer)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
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
    names = gguf.get_tensor_name_map(gguf_arch(config.model_type), config.num_hidden_layers)
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


def write_gguf(model, tokenizer, tok_dir: Path, path: Path, quant: str, name: str,
               pre: Optional[PreTokenizer] = None) -> dict:
    """Write `model` (+ tokenizer from `tok_dir`) to `path`; returns what went in (for export.json)."""
    gguf = _gguf()
    check_supported(model, quant)
    config = model.config
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf_arch(config.model_type)])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    _add_hparams(writer, config)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quant]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    n_vocab = model.get_input_embeddings().weight.shape[0]
    if pre is None:
        pre = pre_tokenizer(tokenizer, json.loads((tok_dir / "tokenizer.json").read_text()))
    tok_info = _add_tokenizer(writer, tokenizer, tok_dir, n_vocab, pre)
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
