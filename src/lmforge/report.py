"""What a run leaves to read: metrics.json, loss.png and the model card."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from .runfolder import LogWriter, write_json


def plot_losses(run_dir: Path, out: Optional[Path] = None) -> Optional[Path]:
    """Train and eval loss against step, with the learning rate on a second axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = LogWriter(Path(run_dir) / "log.jsonl").read()
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    lrs = [(r["step"], r["lr"]) for r in rows if "lr" in r]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs), color="tab:gray", alpha=0.5, linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate", color="tab:gray")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    lines = ax.get_legend_handles_labels()
    if lrs:
        l2 = ax2.get_legend_handles_labels()
        lines = (lines[0] + l2[0], lines[1] + l2[1])
    ax.legend(*lines, loc="upper right")
    ax.set_title(Path(run_dir).name)
    fig.tight_layout()
    out = out or Path(run_dir) / "loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def _fmt(v) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(cfg, metrics: dict, summary: dict, notes: list[str]) -> str:
    """A Hugging Face style model card (YAML front matter, then the facts of the run)."""
    front = {
        "library_name": "transformers",
        "base_model": cfg.model.name,
        "pipeline_tag": {"classification": "text-classification", "causal-lm": "text-generation",
                         "masked-lm": "fill-mask"}[cfg.task],
        "datasets": [x for x in (cfg.data.train, cfg.data.eval, cfg.data.test) if x],
        "tags": ["lmforge", cfg.task],
        "license": "other",
    }
    final = metrics.get("test") or metrics.get("eval") or {}
    front["model-index"] = [{"name": Path(cfg.output.output_dir or "model").name, "results": [{
        "task": {"type": front["pipeline_tag"]},
        "metrics": [{"type": k, "value": round(v, 6)} for k, v in final.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)]}]}]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {Path(cfg.output.output_dir or 'model').name}", "",
             f"A `{cfg.task}` model fine-tuned with lmforge from `{cfg.model.name}`.", "",
             "## Intended use", "",
             {"classification": "Classify texts into the labels seen in training: "
                                + ", ".join(map(str, summary.get("labels", []))) + ".",
              "causal-lm": "Generate text in the style of the training corpus.",
              "masked-lm": "Fill masked words, or serve as an encoder adapted to the training domain."}[cfg.task],
             "", "## Training data", ""]
    for key in ("train", "eval", "test"):
        src = getattr(cfg.data, key)
        if src:
            lines.append(f"- {key}: `{src}` ({summary.get(f'{key}_rows', '?')} rows)")
    if "label_counts" in summary:
        lines.append(f"- label counts (train): {summary['label_counts']}")
    lines += ["", "## Hyper-parameters", "", "```yaml", yaml.safe_dump(cfg.train.model_dump(), sort_keys=False).strip(),
              "```", "", "## Results", "", "| split | metric | value |", "|---|---|---|"]
    for split in ("before", "eval", "test"):
        for k, v in (metrics.get(split) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                lines.append(f"| {split} | {k} | {_fmt(v)} |")
    lines += ["", "## Limitations", "",
              "Trained on a small dataset for a short time; check it on your own data before relying on it. "
              "Metrics are measured on the evaluation data named above only."]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_metrics(run_dir: Path, metrics: dict) -> None:
    write_json(Path(run_dir) / "metrics.json", metrics)
