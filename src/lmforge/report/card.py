"""The Hugging Face model card a run leaves next to its model, and the base-model facts it cites."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from ..data.pipeline import sources_of
from ..metrics import notes_for
from ..models.zoo import MODELS
from ..runtime import looks_like_path
from ..tasks import get_task
from .runs import _scalar

# Built-in aliases -> (the Hub id the weights came from, its license), for the model card.
BASE_MODELS = {"minilm-l6": ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0"),
               "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")}


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def _base_model_facts(cfg) -> tuple[Optional[str], Optional[str]]:
    """(Hub id or name of the base model, its license if its own model card says)."""
    name = cfg.model.name
    if not name:
        return None, None
    if name in BASE_MODELS:  # known: no need to locate (which may convert weights)
        return BASE_MODELS[name]
    hub, license_ = None, None
    try:
        folder = Path(MODELS[name].locate()) if name in MODELS else Path(name).expanduser()
        card = folder / "README.md"
        if card.exists():
            text = card.read_text(encoding="utf-8", errors="replace")
            if text.startswith("---"):
                front = yaml.safe_load(text.split("---", 2)[1]) or {}
                license_ = front.get("license") or license_
        if hub is None and not looks_like_path(name) and not folder.exists():
            hub = name  # a Hub id
    except Exception:
        pass
    return hub or name, license_ if isinstance(license_, str) else None


def _dataset_names(cfg) -> list[str]:
    """Dataset names for the front matter: built-in names and Hub ids as given, files by file name
    (a card may be published; a local path would leak the author's directory layout)."""
    out = []
    for src in [s.path for spec in (cfg.data.train, cfg.data.eval, cfg.data.test) for s in sources_of(spec)]:
        p = Path(src).expanduser()
        name = p.name if p.exists() or "/" in src and Path(src).suffix else src.split(":")[0]
        if name not in out:
            out.append(name)
    return out


def model_card(cfg, metrics: dict, summary: dict, notes: list[str]) -> str:
    """A Hugging Face model card: YAML front matter (license, base_model, datasets, metrics,
    model-index), then intended use, how to use, training data, hyper-parameters, results and limitations."""
    task = get_task(cfg.task)
    name = Path(cfg.output.output_dir or "model").name
    base, base_license = _base_model_facts(cfg)
    tr = metrics.get("train") or {}
    lines = ["---", _front_matter(cfg, task, name, base, base_license, metrics), "---", "",
             f"# {name}", "",
             f"A `{task.name}` model fine-tuned with [lmforge](https://pypi.org/project/lmforge/) from "
             f"`{base or 'a model built from a config'}`"
             + (f" for {tr['steps']} optimizer steps ({tr.get('epochs', '?')} epochs)." if tr.get("steps") else "."), "",
             "## Intended use", "", task.intended_use(summary),
             "", "## How to use", "", "```python", *_usage(task, f"{cfg.output.output_dir or '.'}/model"),
             "```", "", "or try it in a browser: `lmforge serve " + str(cfg.output.output_dir or "RUN") + "`.",
             "", "## Training data", ""]
    lines += _data_lines(cfg, summary)
    hp = {"model": {k: v for k, v in cfg.model.model_dump().items() if v not in (None, False)},
          "data": {k: v for k, v in cfg.data.model_dump(exclude_defaults=True).items() if k not in ("train", "eval", "test")},
          "train": cfg.train.model_dump()}
    lines += ["", "## Hyper-parameters", "", "```yaml", yaml.safe_dump(hp, sort_keys=False).strip(), "```", ""]
    if tr:
        lines += ["Training took " + f"{tr.get('runtime_s', '?')} s at {tr.get('tokens_per_s', '?')} tokens/s "
                  f"(peak memory {tr.get('peak_mem_mb', '?')} MB).", ""]
    lines += _results_lines(metrics) + _limitation_lines(summary)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _front_matter(cfg, task, name: str, base: Optional[str], base_license: Optional[str], metrics: dict) -> str:
    license_ = getattr(cfg.output, "license", None) or base_license or "other"
    final_split = "test" if metrics.get("test") else "eval"
    final = metrics.get(final_split) or {}
    scalars = {k: v for k, v in final.items() if _scalar(v) and k != "n_examples"}
    datasets = _dataset_names(cfg)
    front = {
        "license": license_,
        "base_model": base or "none (trained from scratch)",
        "library_name": task.library_name,
        "pipeline_tag": task.pipeline_tag,
        "datasets": datasets,
        "metrics": list(scalars),
        "tags": ["lmforge", task.name],
    }
    front["model-index"] = [{"name": name, "results": [{
        "task": {"type": task.pipeline_tag, "name": task.name},
        "dataset": {"name": datasets[-1] if datasets else "unknown", "type": datasets[-1] if datasets else "unknown",
                    "split": final_split},
        "metrics": [{"type": k, "value": round(v, 6), "name": f"{final_split} {k}"} for k, v in scalars.items()]}]}]
    return yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip()


def _usage(task, model_dir: str) -> list[str]:
    """The model card's code lines: the task's own (usage_code), else a transformers pipeline and its example."""
    if task.usage_code:
        return task.usage_code.format(model=model_dir).splitlines()
    return ["from transformers import pipeline", f"pipe = pipeline(\"{task.pipeline_tag}\", model=\"{model_dir}\")",
            task.usage_example]


def _data_lines(cfg, summary: dict) -> list[str]:
    lines = []
    for key in ("train", "eval", "test"):
        src = getattr(cfg.data, key)
        if src:
            lines.append(f"- {key}: `{src}` ({summary.get(f'{key}_rows', '?')} rows)")
    if not cfg.data.eval and summary.get("eval_rows"):
        lines.append(f"- eval: {summary['eval_rows']} rows held out from the training data "
                     f"({100 * cfg.data.validation_split:.0f}%, seed {cfg.train.seed})")
    if "label_counts" in summary:
        lines.append("- label counts (train): " + ", ".join(f"`{k}` {v}" for k, v in summary["label_counts"].items()))
    if "mean_tokens" in summary:
        lines.append(f"- mean length {summary['mean_tokens']:.1f} tokens; max_length {summary.get('max_length', '?')}"
                     + (f"; {100 * summary['truncated_train_share']:.1f}% of train rows truncated"
                        if "truncated_train_share" in summary else ""))
    return lines


def _results_lines(metrics: dict) -> list[str]:
    splits = [s for s in ("before", "eval", "test") if metrics.get(s)]
    lines = ["## Results", ""]
    if not splits:
        return lines + ["No evaluation data was given, so there are no held-out metrics."]
    keys: list[str] = []
    for s in splits:
        keys += [k for k, v in metrics[s].items() if _scalar(v) and k != "n_examples" and k not in keys]
    lines += ["| metric | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    lines += [f"| {k} | " + " | ".join(_fmt(metrics[s].get(k, "-")) for s in splits) + " |" for k in keys]
    notes = notes_for(keys)
    if notes:
        lines += [""] + [f"- `{k}`: {n}" for k, n in notes]
    sizes = ", ".join(f"{s} {metrics[s]['n_examples']}" for s in splits if "n_examples" in metrics[s])
    bs = metrics.get("before_sample") or {}
    before = (f"`before` is the model before fine-tuning, measured on a seeded sample of {bs.get('items')} of "
              f"the {bs.get('of')} eval items (train.before_eval_max_samples)." if bs else
              "`before` is the model before fine-tuning, measured on the eval data.")
    return lines + ["", before + (f" Examples per split: {sizes}." if sizes else "")]


def _limitation_lines(summary: dict) -> list[str]:
    lines = ["", "## Limitations", "",
             "Trained on a small dataset for a short time; check it on your own data before relying on it. "
             "Metrics are measured on the evaluation data named above only, and inherit its biases."]
    counts = summary.get("label_counts") or {}
    if counts and max(counts.values()) > 2 * max(1, min(counts.values())):
        lines.append(f"The training labels are imbalanced ({min(counts.values())} to {max(counts.values())} "
                     "examples per label): rare labels are likely recognised less well.")
    if summary.get("truncated_train_share", 0) > 0.05:
        lines.append(f"{100 * summary['truncated_train_share']:.0f}% of the training texts were cut at "
                     f"{summary.get('max_length')} tokens; longer inputs are truncated the same way.")
    return lines
