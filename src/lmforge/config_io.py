"""The config's serialization: YAML files, `--section.key value` overrides, nested merges. Knows
nothing of the schema (config.py), so the schema module stays the one place that lists the keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import LmforgeError


def parse_value(raw: str) -> Any:
    """YAML typing for a command-line value, plus '3e-4' as a float (YAML 1.1 reads it as text)."""
    if raw == "":
        return ""
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".en") else int(value)
        except ValueError:
            return value
    return value


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``['--train.lr', '3e-4', '--data.eval=x.csv']`` -> nested dict with YAML-typed values."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise LmforgeError(f"unexpected argument '{arg}'", "overrides look like --section.key value")
        key = arg[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise LmforgeError(f"override '{arg}' has no value", f"write {arg} VALUE")
            raw = args[i + 1]
            i += 1
        i += 1
        value = parse_value(raw)
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise LmforgeError(f"override '{arg}' conflicts with another override")
        node[parts[-1]] = value
    return out


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.exists():
        raise LmforgeError(f"config file not found: {p}", "check the path, or run `lmforge train` with no config for the default recipe")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise LmforgeError(f"{p} is not valid YAML{where}: {getattr(e, 'problem', e)}", "fix the YAML syntax") from None
    except UnicodeDecodeError as e:
        raise LmforgeError(f"{p} is not UTF-8 text (byte {e.start})", "save the config as UTF-8") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmforgeError(f"{p} must be a YAML mapping (key: value), got {type(data).__name__}",
                           "write sections as `train:` / `data:` keys at the top level, not a list")
    return data
