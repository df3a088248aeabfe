"""Command line: parses arguments, calls lmforge's public API, maps errors to exit codes.

    lmforge train [CONFIG.yaml] [--section.key value ...] [--overwrite] [--resume [CHECKPOINT]]
    lmforge predict RUN_OR_MODEL "a text" ... | --input file.csv --output preds.jsonl
    lmforge eval RUN_OR_MODEL --data test.csv
"""

from __future__ import annotations

import json
import logging
import os
from typing import List, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from ..config import SamplingParams, build_config, parse_overrides
from ..errors import LmforgeError
from ..fs import check_output_file, write_json
from ..runtime import quiet_libraries
from .app import _api, app  # noqa: E402 - the Typer app and the lazy api, shared with configs_and_runs
from .usage import (  # the one error path and the option checks
    ABORTS,
    EXITS,
    STATE,
    USAGE_ERRORS,
    _at_least_0,
    _check_argv,
    _positive,
    _probability,
    _usage_error,
    console,
)


def _setup_logging(quiet: bool) -> None:
    logger = logging.getLogger("lmforge")
    if not any(isinstance(h, RichHandler) for h in logger.handlers):
        handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    quiet_libraries()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors.")):
    STATE["debug"] = debug or bool(os.environ.get("LMFORGE_DEBUG"))
    _setup_logging(quiet)


def _split_resume(extra: list[str]) -> tuple[list[str], object]:
    """Take ``--resume [PATH]`` out of the override list."""
    out, resume, i = [], False, 0
    while i < len(extra):
        if extra[i] == "--resume":
            if i + 1 < len(extra) and not extra[i + 1].startswith("--"):
                resume, i = extra[i + 1], i + 2
            else:
                resume, i = True, i + 1
            continue
        if extra[i].startswith("--resume="):
            resume = extra[i].split("=", 1)[1] or True
            i += 1
            continue
        out.append(extra[i])
        i += 1
    parse_overrides(out)  # a malformed override is a usage error, said before anything loads
    return out, resume


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context,
          config: Optional[str] = typer.Argument(None, help="YAML config; none = the built-in default recipe."),
          overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished run in output_dir."),
          allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) model weights."),
          trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the Hub."),
          no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
          num_processes: Optional[int] = typer.Option(None, "--num-processes", min=1, help="Launch N processes (GPUs, or CPU processes) with accelerate."),
          accelerate_config: Optional[str] = typer.Option(None, "--accelerate-config", help="accelerate config file (DDP/FSDP/DeepSpeed, several machines); see examples/accelerate/.")):
    """Train a model. Extra --section.key value pairs override the config; --resume [CKPT] continues a run."""
    api = _api()
    if config and config.startswith("--"):
        ctx.args.insert(0, config)
        config = None
    overrides, resume = _split_resume(list(ctx.args))
    if ((num_processes or 1) > 1 or accelerate_config) and not api.inside_launcher():
        api.resolve_config(config, overrides)  # a config mistake: one error here, not one per process
        args = ([config] if config else []) + list(ctx.args) + [flag for flag, on in (
            ("--overwrite", overwrite), ("--allow-pickle", allow_pickle), ("--trust-remote-code", trust_remote_code),
            ("--no-progress", no_progress)) if on]
        raise typer.Exit(api.launch(args, num_processes, accelerate_config, debug=STATE["debug"]))
    try:
        result = api.train(config, overrides=overrides, resume=resume, overwrite=overwrite, progress=not no_progress,
                           allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    except KeyboardInterrupt as e:  # typer would swallow the message: print it here
        _print_interrupted(e)
        raise typer.Exit(130)
    if os.environ.get("RANK", "0") != "0":  # several processes: the summary once, from the main one
        return
    _print_metrics(result.metrics)
    console.print(f"[green]done[/green]: run folder {result.run_dir}")
    for line in api.next_steps(result):
        console.print("  " + line, markup=False, highlight=False, soft_wrap=True)


def _print_interrupted(e: BaseException) -> None:
    msg = getattr(e, "message", None) or str(e)
    hint = getattr(e, "hint", None)
    console.print("interrupted" + (f": {msg}" if msg else "") + (f" — {hint}" if hint else ""),
                  markup=False, highlight=False, soft_wrap=True)


def _print_metrics(metrics: dict) -> None:
    from ..metrics import TABLE_METRICS, notes_for, shown
    table = Table(title="metrics")
    table.add_column("metric")
    splits = [s for s in ("before", "eval", "test") if metrics.get(s)]
    for s in splits:
        table.add_column(s, justify="right")
    names = [k for k in shown(TABLE_METRICS, [metrics[s] for s in splits]) if any(k in metrics[s] for s in splits)]
    for k in names:
        table.add_row(k, *[f"{metrics[s][k]:.4f}" if isinstance(metrics[s].get(k), float) else "-" for s in splits])
    Console().print(table)
    bs = metrics.get("before_sample")
    if bs and metrics.get("before"):
        console.print(f"  before: a seeded sample of {bs['items']:,} of the {bs['of']:,} eval items "
                      "(train.before_eval_max_samples)", markup=False, highlight=False, soft_wrap=True)
    for k, note in notes_for(names):  # what the less common metrics mean, under the table
        console.print(f"  {k}: {note}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def predict(model: str = typer.Argument(..., help="Run folder or model folder."),
            texts: Optional[List[str]] = typer.Argument(None, help="Texts to classify."),
            input: Optional[str] = typer.Option(None, "--input", "-i", help="csv/tsv/jsonl/txt file of texts."),
            output: Optional[str] = typer.Option(None, "--output", "-o", help="Write predictions as jsonl."),
            text_column: Optional[str] = typer.Option(None, "--text-column"),
            text_pair_column: Optional[str] = typer.Option(None, "--text-pair-column"),
            batch_size: int = typer.Option(64, "--batch-size", min=1),
            allow_untrained: bool = typer.Option(False, "--allow-untrained", help="Run a model whose classification head was never trained (random labels).")):
    """Classify texts: label and probabilities per row (the same JSON on stdout and in --output)."""
    api = _api()
    if not texts and not input:
        raise LmforgeError("nothing to predict", "give texts after the model, or --input FILE")
    if batch_size <= 0:
        raise LmforgeError(f"--batch-size must be positive, got {batch_size}", "pass --batch-size 1 or more")
    rows = api.predict(model, texts=texts or None, input_file=input, output=output, batch_size=batch_size,
                       text_column=text_column, text_pair_column=text_pair_column, allow_untrained=allow_untrained)
    if output:
        console.print(f"wrote {len(rows)} predictions to {output}")
    else:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))


@app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_cmd(ctx: typer.Context, model: str = typer.Argument(..., help="Run folder or model folder."),
             data: Optional[str] = typer.Option(None, "--data", "-d", help="Labelled file or built-in dataset (e.g. finefood:test); default: the run's own test set (else eval set)."),
             batch_size: int = typer.Option(64, "--batch-size", min=1),
             stride: Optional[int] = typer.Option(None, "--stride", min=1, help="causal-lm: score in sliding windows N tokens apart (context for every token)."),
             generate: bool = typer.Option(False, "--generate", help="causal-lm/sft: greedy answers to the conversations, scored by exact match and chrF."),
             max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1, help="With --generate: tokens per answer at most."),
             task: Optional[str] = typer.Option(None, "--task", help="Evaluate as this task (e.g. a base causal LM as sft); default: the model's."),
             output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the metrics as JSON."),
             as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON (the same as --output writes) instead of a table.")):
    """Metrics of a trained model on a labelled dataset (default: the run's own test set)."""
    if ctx.args:  # --section.key value overrides: a mistake is reported before any model is loaded
        build_config(parse_overrides(list(ctx.args)), "command-line overrides")
    if output:
        check_output_file(output, "--output")  # before the evaluation, not after it
    api = _api()
    metrics = api.evaluate(model, data, batch_size=batch_size, overrides=list(ctx.args) or None, stride=stride,
                           generate=generate, max_new_tokens=max_new_tokens, task=task)
    if output:
        write_json(output, metrics)
    if as_json:
        print(json.dumps(metrics, indent=1, default=str))
        return
    _print_eval(metrics)


def _print_eval(metrics: dict) -> None:
    """Each metric once, then the confusion matrix and the generated samples when there are some."""
    table = Table(title=f"metrics on {metrics.get('data', 'the data')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        table.add_row(k, f"{v:,}" if isinstance(v, int) else f"{v:.4f}")
    out = Console()
    out.print(table)
    if metrics.get("confusion_matrix"):
        labels = metrics.get("labels") or [str(i) for i in range(len(metrics["confusion_matrix"]))]
        cm = Table(title="confusion matrix (rows: true label, columns: predicted)")
        cm.add_column("")
        for lab in labels:
            cm.add_column(str(lab), justify="right")
        for lab, row in zip(labels, metrics["confusion_matrix"]):
            cm.add_row(str(lab), *[f"{x:,}" for x in row])
        out.print(cm)
    for g in metrics.get("generations") or []:
        out.print(f"prompt: {g['prompt'][:200]}\n  answer:    {g['completion'][:200]}\n  reference: {g['reference'][:200]}",
                  markup=False, highlight=False)


tokenizer_app = typer.Typer(no_args_is_help=False, help="Train tokenizers (BPE, byte-level BPE, WordPiece, Unigram).")
app.add_typer(tokenizer_app, name="tokenizer")


def _take_lists(args: list[str], names: tuple[str, ...]) -> dict[str, list[str]]:
    """``--files a b --special-tokens x y`` -> {"--files": [a, b], ...}: each list runs to the next option."""
    out: dict[str, list[str]] = {n: [] for n in names}
    current = None
    for arg in args:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            if name not in names:
                raise LmforgeError(f"unknown option '{name}'", "see `lmforge tokenizer train --help`")
            current = name
            if value:
                out[name].append(value)
        elif current is None:
            raise LmforgeError(f"unexpected argument '{arg}'", "text files go after --files")
        else:
            out[current].append(arg)
    return out


@tokenizer_app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tokenizer_train(
        ctx: typer.Context,
        data: Optional[str] = typer.Option(None, "--data", help="A data source as a config names it (kjv, x.jsonl, a folder)."),
        type: str = typer.Option("byte-level-bpe", "--type", help="bpe | byte-level-bpe | wordpiece | unigram"),
        vocab_size: int = typer.Option(8000, "--vocab-size", min=2, help="Vocabulary size, special tokens included."),
        min_frequency: int = typer.Option(2, "--min-frequency", min=1, help="Minimum count of a merged pair / piece."),
        output: str = typer.Option(..., "--output", "-o", help="Folder to write; AutoTokenizer.from_pretrained loads it."),
        lowercase: Optional[bool] = typer.Option(None, "--lowercase/--no-lowercase", help="Default: only wordpiece lowercases."),
        max_mb: Optional[float] = typer.Option(None, "--max-mb", callback=_positive, help="Train on the first N MB only."),
        text_column: Optional[str] = typer.Option(None, "--text-column", help="Text column of a csv/jsonl/parquet --data."),
        no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar.")):
    """Train a tokenizer: --files A.txt B.txt ... or --data SOURCE; extra --special-tokens X Y ... are added."""
    api = _api()
    lists = _take_lists(list(ctx.args), ("--files", "--special-tokens"))
    files = lists["--files"]
    if files and data:
        raise LmforgeError("give either --files or --data, not both")
    cfg = None
    if data:
        cfg = build_config({"data": {"train": data, "text_column": text_column}}, "command line")
    res = api.train_tokenizer(type, source=data, files=files or None, cfg=cfg, vocab_size=vocab_size,
                            min_frequency=min_frequency, special_tokens=lists["--special-tokens"], lowercase=lowercase,
                            max_bytes=int(max_mb * 1e6) if max_mb else None, output=output, progress=not no_progress)
    console.print(res.summary_text(), markup=False, highlight=False, soft_wrap=True)
    console.print(f"[green]done[/green]: tokenizer in {res.path} (AutoTokenizer.from_pretrained({str(res.path)!r}))")


@app.command("fill-mask")
def fill_mask_cmd(model: str = typer.Argument(..., help="Run folder, model folder or alias of a masked LM."),
                  texts: Optional[List[str]] = typer.Argument(None, help="Texts with [MASK] (or <mask>)."),
                  input: Optional[str] = typer.Option(None, "--input", "-i", help="txt (one text a line), csv, jsonl."),
                  output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results as jsonl."),
                  top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="Candidates per mask."),
                  text_column: Optional[str] = typer.Option(None, "--text-column"),
                  batch_size: int = typer.Option(32, "--batch-size", min=1),
                  allow_untrained: bool = typer.Option(False, "--allow-untrained", help="Fill with an MLM head that was never trained (random fillers).")):
    """Fill the masks of texts: top-k tokens with probabilities per mask."""
    api = _api()
    if not texts and not input:
        raise LmforgeError("nothing to fill", 'give texts after the model ("The [MASK] rose.") or --input FILE')
    if top_k <= 0 or batch_size <= 0:
        raise LmforgeError("--top-k and --batch-size must be positive")
    rows = api.fill_mask(model, texts=texts or None, input_file=input, output=output, top_k=top_k,
                         batch_size=batch_size, text_column=text_column, allow_untrained=allow_untrained)
    if output:
        console.print(f"wrote {len(rows)} results to {output}")
        return
    for r in rows:  # the same records as --output writes
        print(json.dumps(r, ensure_ascii=False))


@app.command()
def generate(model: str = typer.Argument(..., help="Run folder, model folder or alias of a causal LM."),
             prompts: Optional[List[str]] = typer.Argument(None, help="Prompts to continue."),
             input: Optional[str] = typer.Option(None, "--input", "-i", help="Prompts: txt (one a line), jsonl, csv."),
             output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the results as jsonl."),
             max_new_tokens: int = typer.Option(50, "--max-new-tokens", "-n", min=1, help="Tokens to generate at most."),
             temperature: Optional[float] = typer.Option(None, "--temperature", "-t", callback=_at_least_0, help="Sample at this temperature (default: greedy)."),
             top_k: Optional[int] = typer.Option(None, "--top-k", "-k", min=0, help="Sample from the k most likely tokens."),
             top_p: Optional[float] = typer.Option(None, "--top-p", callback=_probability, help="Sample from the smallest set with this probability."),
             repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty", callback=_positive, help="> 1 discourages repeats."),
             num_return_sequences: int = typer.Option(1, "--num-return-sequences", min=1, max=64, help="Samples per prompt."),
             seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**63 - 1, help="Seed for sampling (same seed, same text)."),
             chat: bool = typer.Option(False, "--chat", help="Wrap each prompt in the tokenizer's chat template."),
             prompt_column: Optional[str] = typer.Option(None, "--prompt-column", help="Column of --input tables."),
             no_stream: bool = typer.Option(False, "--no-stream", help="Print whole results instead of streaming."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON records (the same as --output writes) instead of text.")):
    """Continue prompts with a causal LM; tokens stream to the terminal as they come (text; --json for records)."""
    api = _api()
    stream = not no_stream and not output and not as_json and num_return_sequences == 1
    sampling = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              repetition_penalty=repetition_penalty, num_return_sequences=num_return_sequences,
                              seed=seed)
    rows = api.generate(model, prompts=prompts or None, input_file=input, output=output, sampling=sampling,
                        chat=chat, stream=stream, prompt_column=prompt_column)
    if output:
        console.print(f"wrote {len(rows)} generations to {output}")
    elif as_json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    elif not stream:  # text, as streaming prints it; several samples of a prompt each under a header
        for r in rows:
            if num_return_sequences > 1:
                print(f"--- sample {r['sequence'] + 1}/{num_return_sequences} of {r['prompt'][:60]!r}")
            print(r["prompt"] + r["completion"])


@app.command()
def chat(model: str = typer.Argument(..., help="Run folder, model folder or alias of a causal LM with a chat template."),
         system: Optional[str] = typer.Option(None, "--system", help="System message."),
         max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Tokens per reply at most."),
         temperature: Optional[float] = typer.Option(None, "--temperature", "-t", callback=_at_least_0, help="Sample at this temperature (default: greedy)."),
         top_p: Optional[float] = typer.Option(None, "--top-p", callback=_probability, help="Sample from the smallest set with this probability."),
         seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**63 - 1, help="Seed for sampling.")):
    """Chat with a model in the terminal (or through a pipe, one turn per line); /reset, /system TEXT, /exit."""
    _api().chat(model, system=system,
                sampling=SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def doctor(ctx: typer.Context,
           config: Optional[str] = typer.Argument(None, help="YAML config; none = the built-in default recipe."),
           allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) model weights."),
           trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the Hub."),
           no_probe: bool = typer.Option(False, "--no-probe", help="Skip the 3-step timing probe."),
           overwrite: bool = typer.Option(False, "--overwrite", help="Check as `train --overwrite` would run (a finished run in output_dir is replaced).")):
    """Check a config before training: config, data, tokenizer, memory, time per step, offline files."""
    if config and config.startswith("--"):
        ctx.args.insert(0, config)
        config = None
    overrides, _ = _split_resume(list(ctx.args))
    if overwrite:
        overrides += ["--output.overwrite", "true"]
    report = _api().doctor(config, overrides, probe=not no_probe, allow_pickle=allow_pickle,
                           trust_remote_code=trust_remote_code)
    if report.problems:
        raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def prepare(ctx: typer.Context, config: str = typer.Argument(..., help="YAML config (causal-lm)."),
            no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar.")):
    """Tokenize a config's training data into the on-disk token cache; `lmforge train` then starts at once."""
    parse_overrides(list(ctx.args))
    api = _api()
    res = api.prepare(config, overrides=list(ctx.args) or None, progress=not no_progress)
    s = res["splits"]["train"]
    how = ("already prepared: cache hit, nothing tokenized" if s["cache_hit"] else
           f"tokenized in {s['build_seconds']:.1f} s ({s['mb_per_s']:.1f} MB/s)")
    print(f"train: {s['tokens']:,} tokens, {s['documents']:,} documents, {s['bytes'] / 1e6:,.1f} MB; {how}")
    print(f"cache: {s['path']}")
    print(f"time: {res['seconds']:.1f} s (tokenizer {res['tokenizer_seconds']:.1f} s, vocab {res['vocab_size']:,})")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def sweep(ctx: typer.Context,
          config: Optional[str] = typer.Argument(None, help="YAML config; none = the built-in default recipe."),
          param: List[str] = typer.Option(..., "--param", "-p", help="section.key=loguniform:LO:HI | uniform:LO:HI | int:LO:HI | choice:A,B,..."),
          trials: int = typer.Option(10, "--trials", min=1, help="Number of trials."),
          metric: str = typer.Option("eval.loss", "--metric", help="What to optimise: eval.<metric> or test.<metric>."),
          direction: Optional[str] = typer.Option(None, "--direction", help="maximize or minimize (default: from the metric)."),
          output_dir: Optional[str] = typer.Option(None, "--output-dir", "-o", help="Sweep folder (default runs/sweep-...); reuse it to add trials."),
          pruner: str = typer.Option("median", "--pruner", help="median (stop trials below the median) or none."),
          seed: Optional[int] = typer.Option(None, "--seed", min=0, max=2**32 - 1, help="Sampler seed (default: train.seed)."),
          allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow pickled (.bin) model weights."),
          trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow model code from the Hub.")):
    """Hyper-parameter search (Optuna): one run folder per trial, a summary table and best_config.yaml."""
    if config and config.startswith("--"):
        ctx.args.insert(0, config)
        config = None
    parse_overrides(list(ctx.args))
    if pruner not in ("median", "none"):
        raise LmforgeError(f"--pruner must be median or none, got '{pruner}'")
    res = _api().sweep(config, param, trials=trials, metric=metric, direction=direction, output_dir=output_dir,
                       overrides=list(ctx.args) or None, pruner=pruner, seed=seed, allow_pickle=allow_pickle,
                       trust_remote_code=trust_remote_code)
    table = Table(title=f"sweep {res.sweep_dir}")
    cols = [c for c in (res.rows[0] if res.rows else {}) if c != "run_dir"]
    for c in cols:
        table.add_column(c, justify="right")
    for r in res.rows:
        table.add_row(*[("-" if r[c] is None else f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c])) for c in cols])
    Console().print(table)
    if res.best_run_dir:
        console.print(f"[green]best[/green]: {res.best_run_dir} ({metric} {res.best_value:.4f}); "
                      f"config in {res.sweep_dir / 'best_config.yaml'}")
    else:
        console.print("no trial finished")


@app.command()
def serve(model: str = typer.Argument(..., help="Run folder, model folder or built-in alias."),
          host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 exposes it to the network."),
          port: int = typer.Option(8000, "--port", "-p", min=1, max=65535, help="TCP port."),
          max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Cap on max_new_tokens per request."),
          max_chars: int = typer.Option(8000, "--max-chars", min=1, help="Cap on characters per text."),
          max_queue: int = typer.Option(16, "--max-queue", min=1, help="Requests that may wait for the model; more get 503."),
          allow_untrained: bool = typer.Option(False, "--allow-untrained", help="Serve a classifier whose head was never trained (random labels).")):
    """Serve a model over HTTP: JSON endpoints (/v1/classify, /v1/generate, /v1/fill-mask) and a web page at /."""
    api = _api()
    for name, v in (("--max-new-tokens", max_new_tokens), ("--max-chars", max_chars), ("--max-queue", max_queue)):
        if v <= 0:
            raise LmforgeError(f"{name} must be positive, got {v}")
    api.serve(model, host=host, port=port, limits=api.ServeLimits(
        max_new_tokens=max_new_tokens, max_chars=max_chars, max_body_bytes=max(64 * 1024, 8 * max_chars),
        max_queue=max_queue), allow_untrained=allow_untrained)


from . import configs_and_runs  # noqa: E402, F401 - registers init, config keys, models, datasets, report, runs, push
from . import scoring  # noqa: E402, F401 - registers embed, rerank, score


def main(argv: Optional[list[str]] = None) -> int:
    try:
        _check_argv(argv)
        rv = app(args=argv, standalone_mode=False, prog_name="lmforge")
        return rv if isinstance(rv, int) else 0  # typer returns the code of typer.Exit / an interrupt
    except LmforgeError as e:
        if STATE["debug"]:
            console.print_exception()
        msg = f"error: {e.message}" + (f" — {e.hint}" if e.hint else "")
        console.print(msg, markup=False, highlight=False, soft_wrap=True)
        return e.exit_code
    except EXITS as e:
        return e.exit_code
    except USAGE_ERRORS as e:
        return _usage_error(e, argv)
    except ABORTS:
        console.print("aborted")
        return 130
    except KeyboardInterrupt as e:
        _print_interrupted(e)
        return 130




