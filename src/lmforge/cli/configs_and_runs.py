"""Commands about configs and finished runs: init, config keys, models, datasets, report, runs, push, export."""

from __future__ import annotations

import json
import os
import webbrowser
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import LmforgeError
from ..fs import check_output_file, write_text
from .app import _api, _catalog, app
from .usage import console


@app.command()
def init(task: str = typer.Argument(..., help="classification, causal-lm, masked-lm, sft or dpo."),
         model: Optional[str] = typer.Option(None, "--model", "-m", help="Model alias, folder or Hub id (default: the task's built-in one)."),
         data: Optional[str] = typer.Option(None, "--data", "-d", help="Training data file or built-in dataset (default: the task's built-in one)."),
         output: Optional[str] = typer.Option(None, "--output", "-o", help="Write the config to this file (default: print it)."),
         force: bool = typer.Option(False, "--force", help="Replace the --output file if it exists.")):
    """Write a commented starter config for a task, which `lmforge train` accepts as written."""
    text = _catalog().starter_config(task, model, data, config_path=output)
    if output is None:
        print(text, end="")
        return
    if Path(output).exists() and not force:
        raise LmforgeError(f"{output} exists", "choose another --output, or add --force to replace it")
    check_output_file(output, "--output")
    write_text(output, text)
    took = next((x for x in text.splitlines()[:3] if x.startswith("# As written it trained in")), None)
    print(f"wrote {output}: task {task}; next: lmforge doctor {output}, then lmforge train {output}" +
          (f"\n{took[2:]}" if took else ""))


config_app = typer.Typer(no_args_is_help=False, help="Config keys: `lmforge config keys [SECTION]`.")
app.add_typer(config_app, name="config")


@config_app.command("keys")
def config_keys_cmd(section: Optional[str] = typer.Argument(None, help="One section (model, data, train, ...)."),
                    as_json: bool = typer.Option(False, "--json", help="JSON lines instead of a table.")):
    """Every config key with its type, default and doc (from the schema)."""
    rows = _catalog().config_keys(section)
    if as_json:
        for r in rows:
            print(json.dumps(r, default=str))
        return
    for r in rows:
        print(f"{r['key']}  ({r['type']}, default {json.dumps(r['default'], default=str)})")
        if r["doc"]:
            print(f"    {r['doc']}")


@app.command()
def models():
    """List the built-in model aliases."""
    for alias in _catalog().models():
        print(f"{alias.name:16s} {alias.description}  [{', '.join(alias.tasks)}] (pip: {alias.package})")


@app.command()
def datasets():
    """List the built-in datasets."""
    for name, (desc, _) in _catalog().datasets().items():
        print(f"{name:12s} {desc}")


@app.command()
def report(runs: List[str] = typer.Argument(..., help="One run folder, or several to compare."),
           output: Optional[str] = typer.Option(None, "--output", "-o",
                                                help="Where to write (default: RUN/report.html, or compare.html)."),
           open_browser: bool = typer.Option(False, "--open", help="Open the page in a web browser.")):
    """Rebuild a run's report.html (and loss.png); with several runs, write a page comparing them."""
    out = _api().report(runs, output)
    console.print(f"[green]wrote[/green] {out}")
    if open_browser:
        webbrowser.open(out.resolve().as_uri())


@app.command("runs")
def runs_cmd(folder: str = typer.Argument("runs", help="Folder holding run folders."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table.")):
    """List runs: task, model, data, status (finished / running / crashed / failed), best metric, duration."""
    catalog = _catalog()
    rows = catalog.runs(folder)
    if as_json:
        for r in rows:
            print(json.dumps(r, default=str))
        return
    if not rows:
        console.print(f"no runs in {folder}")
        return
    colors = {"finished": "green", "running": "yellow", "crashed": "red", "failed": "red", "interrupted": "magenta"}
    table = Table(title=f"runs in {folder}")
    for col in ("run", "task", "model", "data", "status", "best", "duration", "started"):
        table.add_column(col, justify="right" if col in ("best", "duration") else "left",
                         overflow="fold", no_wrap=col in ("status", "best", "duration", "started", "task"))
    for r in rows:
        best = f"{r['best_metric']} {r['best']:.4f}" if isinstance(r["best"], (int, float)) else "-"
        c = colors.get(r["status"], "white")
        name = os.path.relpath(r["run"], folder) if not os.path.relpath(r["run"], folder).startswith("..") else r["run"]
        table.add_row(name, r["task"], r["model"], r["data"], f"[{c}]{r['status']}[/{c}]", best,
                      catalog.format_duration(r["duration_s"]), (r["started"] or "")[5:16].replace("T", " "))
    Console(width=max(120, Console().width)).print(table)


@app.command()
def push(run: str = typer.Argument(..., help="Run folder (its model/) or model folder."),
         repo_id: str = typer.Option(..., "--repo-id", help="Hub repository: your-name/model-name."),
         private: bool = typer.Option(False, "--private", help="Create the repository as private.")):
    """Upload a trained model (weights, tokenizer, model card) to the Hugging Face Hub."""
    url = _api().push(run, repo_id, private=private)
    console.print(f"[green]pushed[/green] {run} to {url}")


@app.command()
def export(model: str = typer.Argument(..., help="Run folder or model folder (a LoRA run is merged into its base)."),
           fmt: str = typer.Option("safetensors", "--format", "-f", help="safetensors, gguf or onnx."),
           output: Optional[str] = typer.Option(None, "--output", "-o", help="Folder to write (default: MODEL-export-FORMAT)."),
           dtype: Optional[str] = typer.Option(None, "--dtype", help="safetensors: float32 (default), bfloat16 or float16."),
           quantize: Optional[str] = typer.Option(None, "--quantize", "-q", help="gguf: f32, f16 (default), q8_0 or q4_0."),
           no_verify: bool = typer.Option(False, "--no-verify", help="Keep an export whose parity check fails."),
           gguf_pre: Optional[str] = typer.Option(None, "--gguf-pre", help="gguf: llama.cpp's pre-tokenizer name, for a tokenizer its hash table does not know.")):
    """Export a trained model as a plain folder and check it answers like the trained one (OUT/export.json)."""
    out = _api().export(model, fmt, output, dtype, verify=not no_verify, quantize=quantize, gguf_pre=gguf_pre)
    report = json.loads((out / "export.json").read_text())
    p = report["parity"]
    greedy = p.get("greedy")
    console.print(f"exported {report['format']} ({report['precision']}) to {out} in {report['export_s']:.1f} s "
                  f"(export.json)", markup=False)
    console.print(_api().export_verdict(report) + f" on {p['positions']} positions of {p['texts']} held-out inputs"
                  + (f", greedy continuations identical {greedy['identical']}/{greedy['prompts']}" if greedy else "")
                  + ("" if report["verified"] else " (kept: --no-verify)"), markup=False)
