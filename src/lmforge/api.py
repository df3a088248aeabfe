"""The public Python API. The CLI only parses arguments and calls these.

    from lmforge import train, evaluate, predict
    result = train("examples/sentiment-minilm.yaml", overrides=["--train.max_steps", "20"])
    print(result.metrics["test"]["accuracy"])

`allow_pickle` / `trust_remote_code` are arguments here (the command line's --allow-pickle /
--trust-remote-code): a config file alone can never grant them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

from .catalog import config_keys, datasets, models, runs, starter_config  # noqa: F401 (the light half, re-exported)
from .config import Config, Permissions, SamplingParams, resolve_config  # noqa: F401 (SamplingParams: public)
from .data.pipeline import HELD_OUT
from .errors import LmforgeError
from .models.load import resolve_model_dir
from .models.push import push_folder
from .report import build_reports, format_duration
from .runtime import quiet_libraries
from .starters import STARTERS
from .tasks import get_task
from .tasks import task_of as _task_of
from .tokenizer import train_from_source
from .tools import doctor as _doctor
from .tools import export as _export
from .tools import sweep as _sweep
from .tools.launch import inside_launcher, launch
from .train import run as _run
from .train.evaluation import evaluate_split
from .train.progress import TrainProgress
from .train.recovery import latest_checkpoint as _latest_checkpoint
from .train.run import TrainResult
from .use import chat as _chat
from .use import classify as _classify
from .use import fill_mask as _fill_mask
from .use import generate as _generate
from .use import retrieve as _retrieve
from .use import score as _score
from .use import serve as _serve
from .use.generate_eval import generation_scores

log = logging.getLogger("lmforge")

ConfigLike = Union[str, Path, Config, dict, None]

__all__ = ["TrainResult", "train", "prepare", "evaluate", "predict", "generate", "fill_mask", "embed", "rerank", "score", "chat", "serve", "doctor",
           "sweep", "train_tokenizer", "push", "report", "runs", "models", "datasets", "task_of", "resolve_model_dir",
           "latest_checkpoint", "resolve_config", "launch", "inside_launcher", "quiet_libraries", "format_duration",
           "ServeLimits", "starter_config", "config_keys", "next_steps", "export"]


# ----------------------------------------------------------------------------------- train
def train(config: ConfigLike = None, overrides: Optional[Sequence[str]] = None,
          resume: Union[bool, str, Path] = False, overwrite: bool = False, progress: bool = True,
          callbacks: Optional[Sequence] = None, allow_pickle: bool = False,
          trust_remote_code: bool = False) -> TrainResult:
    """Train a model as the config says; returns the run folder and its final metrics.

    ``callbacks``: functions called with every log.jsonl record (on the main process).
    """
    quiet_libraries()
    cfg = resolve_config(config, overrides)
    if overwrite and not cfg.output.overwrite:
        cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"overwrite": True})})
    return _run.train(cfg, resume=resume, progress=progress, callbacks=callbacks,
                      permissions=Permissions(allow_pickle, trust_remote_code))


def prepare(config: ConfigLike = None, overrides: Optional[Sequence[str]] = None, progress: bool = True) -> dict:
    """Train the config's tokenizer (if asked) and tokenize its training data into the on-disk token
    cache, so that ``train`` with the same config starts at once (see lmforge.data.stream)."""
    quiet_libraries()
    cfg = resolve_config(config, overrides)
    return get_task(cfg.task).prepare(cfg, progress=progress)


def latest_checkpoint(run_dir: Union[str, Path]) -> Optional[Path]:
    """The newest complete checkpoint of a run folder (cut-off ones are skipped with a warning)."""
    return _latest_checkpoint(Path(run_dir))


def doctor(config: ConfigLike = None, overrides: Optional[Sequence[str]] = None, probe: bool = True,
           allow_pickle: bool = False, trust_remote_code: bool = False, console=None):
    """Check a config before training (prints a report; returns its problems, warnings and facts)."""
    return _doctor.run_doctor(config, overrides, probe=probe, console=console,
                              permissions=Permissions(allow_pickle, trust_remote_code))


def sweep(config: ConfigLike, params: Sequence[str], allow_pickle: bool = False, trust_remote_code: bool = False,
          **kwargs):
    """Hyper-parameter search: one run folder per trial (see lmforge.tools.sweep.sweep for the options)."""
    return _sweep.sweep(config, params, permissions=Permissions(allow_pickle, trust_remote_code), **kwargs)


def train_tokenizer(kind: str, **kwargs):
    """Train a tokenizer from files or a data source (see lmforge.tokenizer.train_from_source)."""
    quiet_libraries()
    return train_from_source(kind, **kwargs)


# ----------------------------------------------------------------------------------- use
def task_of(model: Union[str, Path]) -> str:
    """The task name of a saved model (run folder, model folder, adapter folder or alias)."""
    quiet_libraries()
    return _task_of(resolve_model_dir(model)).name


def evaluate(model: Union[str, Path], data: Optional[str] = None, batch_size: int = 64,
             overrides: Optional[Sequence[str]] = None, progress: bool = True, stride: Optional[int] = None,
             generate: bool = False, max_new_tokens: int = 64, task: Optional[str] = None) -> dict:
    """Metrics of a trained model (run or model folder) on a labelled file or built-in dataset; `stride`
    scores a causal LM in sliding windows (every token with up to block - stride tokens of context);
    `generate` adds exact match and chrF of greedy answers to conversations (causal-lm, sft); `task`
    evaluates the model as that task (e.g. a base causal LM as sft, on conversations). Without `data`, a run
    is evaluated on its own test set (else its eval set, else the eval rows it held out of its training data:
    `data="held-out"`, recomputed from the data and the seed)."""
    quiet_libraries()
    model_dir = resolve_model_dir(model)
    task = get_task(task) if task else _task_of(model_dir)
    data = data or _run_eval_data(model_dir, task)
    if data == HELD_OUT:
        overrides = _held_out_overrides(model_dir, overrides)
    options = {"stride": stride} if stride is not None else {}
    for name in options:
        if name not in task.eval_options:  # e.g. --stride (sliding windows) is causal-lm's alone
            raise LmforgeError(f"--{name} is not an option of {task.name} evaluation",
                               f"{task.name} takes: {', '.join('--' + o for o in task.eval_options) or 'no extra options'}")
    parts = task.eval_setup(model_dir, data, overrides, **options)
    with TrainProgress(enabled=progress) as bar:
        metrics = evaluate_split(parts.model, parts.eval, parts, batch_size, progress=bar, desc="eval")
    metrics["data"] = data
    if "confusion_matrix" in metrics and getattr(parts.model.config, "id2label", None):
        metrics["labels"] = [parts.model.config.id2label[i] for i in range(len(parts.model.config.id2label))]
    if generate:
        metrics.update(generation_scores(model_dir, task, data, overrides, max_new_tokens=max_new_tokens))
    return metrics


def _run_eval_data(model_dir: Path, task) -> str:
    """The test (else eval) set of the run a model folder belongs to, else the rows it held out of its training
    data; the hint names a built-in set of its task."""
    run_cfg = Path(model_dir).parent / "config.yaml"
    if run_cfg.exists():
        cfg = resolve_config(str(run_cfg))
        if cfg.data.test or cfg.data.eval:
            return cfg.data.test or cfg.data.eval
        if cfg.data.validation_split and cfg.data.train:
            log.info("no --data: evaluating the rows the run held out of its training data (data.validation_split "
                     "%g, seed %d, capped as the run capped them; recomputed, the same rows)",
                     cfg.data.validation_split, cfg.train.seed)
            return HELD_OUT
    builtin = STARTERS.get(task.name, {}).get("data")
    raise LmforgeError(f"no --data given, and {model_dir} is not from a run with a test or eval set",
                       "pass --data FILE" + (f", or a built-in {task.name} set such as "
                                             f"{builtin}:test" if builtin else ""))


def _held_out_overrides(model_dir: Path, overrides: Optional[Sequence[str]]) -> list[str]:
    """The run's own data format is kept to re-read its training data (an evaluation drops it otherwise)."""
    run_cfg = Path(model_dir).parent / "config.yaml"
    if not run_cfg.exists():
        raise LmforgeError("--data held-out needs a run folder (its config.yaml names the data it held rows out of)",
                           "pass --data FILE")
    fmt = resolve_config(str(run_cfg)).data.format
    return list(overrides or []) + (["--data.format", fmt] if fmt else [])


def predict(model: Union[str, Path], texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
            output: Optional[str] = None, batch_size: int = 64, text_column: Optional[str] = None,
            text_pair_column: Optional[str] = None, progress: bool = True,
            allow_untrained: bool = False) -> list[dict]:
    """Label + class probabilities per text (classification models). A model whose classification head was never
    trained is refused (its labels would be random) unless `allow_untrained`."""
    quiet_libraries()
    return _classify.classify(resolve_model_dir(model), texts=texts, input_file=input_file, output=output,
                              batch_size=batch_size, text_column=text_column, text_pair_column=text_pair_column,
                              progress=progress, allow_untrained=allow_untrained)


def generate(model: Union[str, Path], prompts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
             output: Optional[str] = None, **kwargs) -> list[dict]:
    """Continuations of prompts by a causal LM (run, folder or alias): greedy, or sampling with
    temperature / top_k / top_p; see lmforge.use.generate.generate for every option."""
    quiet_libraries()
    return _generate.generate(str(model), prompts=prompts, input_file=input_file, output=output, **kwargs)


def fill_mask(model: Union[str, Path], texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
              output: Optional[str] = None, top_k: int = 5, batch_size: int = 32,
              text_column: Optional[str] = None, allow_untrained: bool = False) -> list[dict]:
    """Top-k fillers (token, score) at every mask of each text, for a masked LM run, folder or alias."""
    quiet_libraries()
    return _fill_mask.fill_mask(resolve_model_dir(model), texts=texts, input_file=input_file, output=output,
                                top_k=top_k, batch_size=batch_size, text_column=text_column,
                                allow_untrained=allow_untrained)


def embed(model: Union[str, Path], texts: Optional[Sequence[str]] = None, input_file: Optional[str] = None,
          output: Optional[str] = None, batch_size: int = 32, text_column: Optional[str] = None,
          dimensions: Optional[int] = None) -> list[dict]:
    """{text, embedding} per text with an embedding run, model folder or alias (any sentence-transformers folder);
    `dimensions` keeps the leading ones (matryoshka)."""
    quiet_libraries()
    return _retrieve.embed(resolve_model_dir(model), texts=texts, input_file=input_file, output=output,
                           batch_size=batch_size, text_column=text_column, dimensions=dimensions)


def rerank(model: Union[str, Path], query: str, documents: Optional[Sequence[str]] = None,
           documents_file: Optional[str] = None, top_n: Optional[int] = None, output: Optional[str] = None,
           text_column: Optional[str] = None, batch_size: int = 32, allow_untrained: bool = False) -> list[dict]:
    """Documents ranked by a reranker's relevance score for the query, best first: {index, relevance_score,
    document}."""
    quiet_libraries()
    return _retrieve.rerank(resolve_model_dir(model), query, documents=documents, documents_file=documents_file,
                            top_n=top_n, output=output, text_column=text_column, batch_size=batch_size,
                            allow_untrained=allow_untrained)


def score(model: Union[str, Path], texts: Optional[Sequence] = None, input_file: Optional[str] = None,
          output: Optional[str] = None, batch_size: int = 16, allow_untrained: bool = False) -> list[dict]:
    """Rewards of texts or conversations (message lists) from a reward run or model folder: {text | messages,
    score}."""
    quiet_libraries()
    return _score.score(resolve_model_dir(model), texts=texts, input_file=input_file, output=output,
                        batch_size=batch_size, allow_untrained=allow_untrained)


def chat(model: Union[str, Path], input_stream=None, output=None, **kwargs) -> list[dict]:
    """A multi-turn chat with a causal LM or sft run over a text stream (default: the terminal); see
    lmforge.use.chat.chat for the options."""
    quiet_libraries()
    return _chat.chat(str(model), input_stream=input_stream, output=output, **kwargs)


def serve(model: Union[str, Path], host: str = "127.0.0.1", port: int = 8000, limits=None,
          allow_untrained: bool = False) -> None:
    """Serve a model over HTTP until interrupted (see lmforge.use.serve)."""
    _serve.serve(model, host=host, port=port, limits=limits, allow_untrained=allow_untrained)


ServeLimits = _serve.Limits


# ----------------------------------------------------------------------------------- look
def push(run: Union[str, Path], repo_id: str, private: bool = False) -> str:
    """Upload a run's model folder (model, tokenizer, model card) to the Hugging Face Hub; returns its URL."""
    return push_folder(run, repo_id, private=private)


def report(runs: Sequence[str], output: Optional[str] = None) -> Path:
    """Rebuild a run's report.html, or write a page comparing several runs; returns the page's path."""
    return build_reports(runs, output)


def next_steps(result: TrainResult) -> list[str]:
    """What to do with a finished run: look at its report, try it, evaluate it, serve it."""
    run = str(result.run_dir)
    task = get_task(result.config.task)
    out = [f"report:  {run}/report.html   (lmforge report {run} --open)"]
    if task.try_command:
        out.append("try it:  " + task.try_command.format(run=run))
    data = result.config.data.test or result.config.data.eval or "FILE"
    out.append(f"eval:    lmforge eval {run} --data {data}")
    out.append(f"serve:   lmforge serve {run}")
    return out


# ----------------------------------------------------------------------------------- configs
def export_verdict(report: dict) -> str:
    """The one-line verification summary of an export's export.json ("verified: top-1 100% ...")."""
    return _export.verdict_line(report)


def export(model: Union[str, Path], fmt: str = "safetensors", output: Optional[str] = None,
           dtype: Optional[str] = None, verify: bool = True, quantize: Optional[str] = None,
           gguf_pre: Optional[str] = None) -> Path:
    """Export a run or model folder (a LoRA run merged) as a plain folder, checked against the trained model
    (export.json); see lmforge.tools.export."""
    quiet_libraries()
    return _export.export(str(model), fmt, output, dtype, verify, quantize, gguf_pre)
