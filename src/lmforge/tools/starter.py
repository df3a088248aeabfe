"""`lmforge init TASK` (a commented starter config) and `lmforge config keys [SECTION]` (every key, from the schema).

Both read the config schema (config.py: each key's type, default and docstring), so they cannot drift from
what `lmforge train` accepts; a test trains from every task's starter config as written.
"""

from __future__ import annotations

import typing
from typing import Any, Optional

import yaml
from pydantic import BaseModel

from ..config import Config, build_config
from ..errors import LmforgeError, did_you_mean
from ..starters import SCALE_UP, STARTERS

# The keys a starter config writes out, per section (the rest keep their defaults: `lmforge config keys`).
COMMON = {
    "model": ["name"],
    "data": ["train", "eval", "test", "validation_split", "max_train_samples", "max_eval_samples"],
    "train": ["num_train_epochs", "max_steps", "learning_rate", "per_device_train_batch_size",
              "gradient_accumulation_steps", "lr_scheduler_type", "warmup_ratio", "weight_decay", "eval_strategy",
              "eval_steps", "save_strategy", "logging_steps", "seed"],
    "output": ["output_dir", "overwrite"],
}
SECTION_ORDER = ("model", "data", "dpo", "grpo", "embedding", "reranker", "reward", "distill", "train", "output")


def _section_class(name: str) -> type[BaseModel]:
    ann = Config.model_fields[name].annotation
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    return next(a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel))


def sections() -> list[str]:
    return [k for k in Config.model_fields if k != "task"]


def type_name(ann: Any) -> str:
    origin = typing.get_origin(ann)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in typing.get_args(ann))
    if origin is typing.Union:
        parts = [type_name(a) for a in typing.get_args(ann) if a is not type(None)]
        return " | ".join(parts) + (" (optional)" if type(None) in typing.get_args(ann) else "")
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(ann))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(ann, "__name__", str(ann))


def config_keys(section: Optional[str] = None) -> list[dict]:
    """[{key, type, default, doc}] of every key (of one section)."""
    names = sections()
    if section is not None and section not in names:
        raise LmforgeError(f"no config section '{section}'.{did_you_mean(section, names)}",
                           f"sections: {', '.join(names)}")
    out = []
    if section is None:
        out.append({"key": "task", "type": type_name(Config.model_fields["task"].annotation),
                    "default": Config.model_fields["task"].default, "doc": Config.model_fields["task"].description})
    for sec in [section] if section else names:
        cls = _section_class(sec)
        for key, f in cls.model_fields.items():
            out.append({"key": f"{sec}.{key}", "type": type_name(f.annotation), "default": f.default,
                        "doc": " ".join((f.description or "").split())})
    return out


def _yaml_value(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True).strip()
    return text[:-4].strip() if text.endswith("\n...") else text.removesuffix("...").strip()


def _doc(text: Optional[str], width: int = 100) -> list[str]:
    words, lines, cur = " ".join((text or "").split()).split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return lines + ([cur] if cur else [])


def starter_config(task: str, model: Optional[str] = None, data: Optional[str] = None,
                   output_dir: Optional[str] = None, config_path: Optional[str] = None) -> str:
    """A commented YAML config for `task` that `lmforge train` accepts as written; `config_path`: the file it
    is written to (named in its first lines' commands)."""
    if task not in STARTERS:
        raise LmforgeError(f"unknown task '{task}'.{did_you_mean(task, STARTERS)}", f"tasks: {', '.join(STARTERS)}")
    st = STARTERS[task]
    name = model or st["model"]
    values = {sec: dict(v) for sec, v in st.get("values", {}).items()}
    values.setdefault("model", {})["name"] = name
    values.setdefault("data", {})["train"] = data or st["data"]
    values.setdefault("output", {})["output_dir"] = output_dir or f"runs/{task}-{name.rstrip('/').split('/')[-1]}"
    what = st["about"]
    path = config_path or f"my-{task}.yaml"
    lines = [f"# lmforge starter config: task {task} — {what}." +
             ("" if config_path else f" Save it as {path} (lmforge init {task} -o {path}).")]
    took = st.get("minutes")
    if took and not model and not data:  # measured with the built-in model and data only
        lines.append(f"# As written it trained in {took} min on 2 CPU cores (measured: docs/results.md); "
                     "`lmforge doctor` times a step on this machine.")
    lines += [f"#   lmforge doctor {path}     # check data, tokenizer, memory and time before training",
              f"#   lmforge train {path}",
              "# Every key: `lmforge config keys [SECTION]`. Keys not written here keep their defaults.",
              f"task: {task}"]
    for sec in SECTION_ORDER:
        keys = COMMON.get(sec, []) + st.get("keys", {}).get(sec, [])
        if not keys:
            continue
        cls = _section_class(sec)
        lines += ["", f"{sec}:  # {' '.join((Config.model_fields[sec].description or '').split())}"]
        for key in keys:
            f = cls.model_fields[key]
            value = values.get(sec, {}).get(key, f.default)
            for doc in _doc(f.description):
                lines.append(f"  # {doc}")
            note = SCALE_UP.get(f"{sec}.{key}") if key in values.get(sec, {}) else None
            lines.append(f"  {key}: {_yaml_value(value)}" + (f"  # {note}" if note else ""))
    lines += ["", "# LoRA instead of training every weight: uncomment (see `lmforge config keys peft`).",
              "# peft: {r: 8, alpha: 16, dropout: 0.05}", ""]
    text = "\n".join(lines)
    build_config(yaml.safe_load(text), "the starter config")  # what we write is valid, or we fail here
    return text
