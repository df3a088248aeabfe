"""The front door: every command-line mistake is one line and exit 2; `lmforge init` configs train as written;
`lmforge config keys`; silent wrong answers refuse or detect; progress without a terminal; one output schema;
no broken links in the README and docs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import corpus_text, toy_sentiment_rows, write_csv

from lmforge import api
from lmforge.cli import app, main
from lmforge.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> dict:
    """name -> click command, for every command and subcommand of the CLI."""
    import typer.main
    group = typer.main.get_command(app)
    out = {}
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):
            for sub, c in cmd.commands.items():
                out[f"{name} {sub}"] = c
        else:
            out[name] = cmd
    return out


def _one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    cap = capsys.readouterr()
    assert code == 2, (argv, code, cap.err[-500:])
    assert "Traceback" not in cap.err and "Traceback" not in cap.out, argv
    lines = [x for x in cap.err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, cap.err)
    return lines[0]


def test_every_command_with_a_missing_argument_an_unknown_option_and_a_bad_value(capsys):
    commands = _commands()
    assert {"train", "predict", "eval", "generate", "init", "config keys", "tokenizer train"} <= set(commands)
    for name, cmd in commands.items():
        argv = name.split()
        required = [p for p in cmd.params if getattr(p, "required", False)]
        if required:
            line = _one_line_error(capsys, argv)
            assert "Missing" in line and f"lmforge {name} --help" in line, line
        filler = ["x"] * len([p for p in required if p.param_type_name == "argument"])
        for p in required:
            if p.param_type_name == "option":
                filler += [p.opts[0], "x"]
        line = _one_line_error(capsys, argv + filler + ["--no-such-option"])
        assert "no-such-option" in line, line
        ints = [p for p in cmd.params if p.param_type_name == "option" and isinstance(p.default, int)
                and not isinstance(p.default, bool)]
        for p in ints[:1]:
            line = _one_line_error(capsys, argv + filler + [p.opts[0], "ten"])
            assert "ten" in line or "integer" in line, line


def test_a_mistyped_command_and_bare_lmforge(capsys):
    line = _one_line_error(capsys, ["trian"])
    assert "Did you mean 'train'" in line
    line = _one_line_error(capsys, [])
    assert "no command given" in line and "train" in line and "lmforge --help" in line
    assert "no command given" in _one_line_error(capsys, ["config"])


@pytest.mark.parametrize("section", [None, "dpo", "data"])
def test_config_keys_lists_every_key_from_the_schema(section, capsys):
    from lmforge.config import Config
    assert main(["config", "keys"] + ([section] if section else []) + ["--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    want = []
    for sec in [section] if section else [k for k in Config.model_fields if k != "task"]:
        ann = Config.model_fields[sec].annotation
        cls = ann if hasattr(ann, "model_fields") else next(a for a in ann.__args__ if hasattr(a, "model_fields"))
        want += [f"{sec}.{k}" for k in cls.model_fields]
    got = [r["key"] for r in rows if r["key"] != "task"]
    assert got == want and all(r["doc"] for r in rows)
    assert _one_line_error(capsys, ["config", "keys", "trian"]).startswith("error: no config section 'trian'")


# ----------------------------------------------------------------------------------- init -> train
def _tiny_llama_chat(d: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmforge.tasks.chat_template import CHATML
    from lmforge.tokenizer import train_tokenizer
    words = "he saith unto them you are kind old thou art the of".split()
    texts = [" ".join(words[(i * 5 + j) % len(words)] for j in range(10)) for i in range(200)]
    t = train_tokenizer("byte-level-bpe", texts=texts, vocab_size=300, min_frequency=1,
                        special_tokens=["<|im_start|>", "<|im_end|>", "</s>"]).tokenizer
    t.eos_token = t.pad_token = "</s>"
    t.chat_template = CHATML
    t.save_pretrained(d)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(t), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 eos_token_id=t.eos_token_id)).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def task_inputs(tiny_bert, tmp_path_factory):
    """(model, data) for every task, tiny."""
    d = tmp_path_factory.mktemp("init")
    llama = _tiny_llama_chat(d / "llama")
    write_csv(d / "cls.csv", toy_sentiment_rows(80))
    (d / "corpus.txt").write_text(corpus_text())
    (d / "chat.jsonl").write_text("".join(json.dumps({"prompt": f"he saith {i}", "completion": "you are kind"}) + "\n"
                                          for i in range(40)))
    (d / "pairs.jsonl").write_text("".join(json.dumps({"prompt": f"he saith {i}", "chosen": "you are kind",
                                                       "rejected": "thou art old"}) + "\n" for i in range(40)))
    (d / "prompts.jsonl").write_text("".join(json.dumps({"prompt": f"what is {i} + 1?", "answer": str(i + 1)}) + "\n"
                                             for i in range(40)))
    return {"classification": (tiny_bert, d / "cls.csv"), "masked-lm": (tiny_bert, d / "corpus.txt"),
            "causal-lm": (llama, d / "corpus.txt"), "sft": (llama, d / "chat.jsonl"), "dpo": (llama, d / "pairs.jsonl"),
            "grpo": (llama, d / "prompts.jsonl")}


@pytest.mark.parametrize("task", ["classification", "causal-lm", "masked-lm", "sft", "dpo", "grpo"])
def test_init_writes_a_config_that_trains_as_written(task, task_inputs, tmp_path, capsys):
    model, data = task_inputs[task]
    cfg = tmp_path / "config.yaml"
    assert main(["init", task, "--model", str(model), "--data", str(data), "-o", str(cfg)]) == 0
    text = cfg.read_text()
    assert text.count("\n  # ") >= 10  # every key written comes with its doc
    raw = yaml.safe_load(text)
    assert raw["task"] == task and raw["model"]["name"] == str(model) and raw["data"]["train"] == str(data)
    # as written, but short: two steps into a folder of this test
    argv = ["train", str(cfg), "--no-progress", "--train.max_steps", "2", "--train.eval_strategy", "no",
            "--train.save_strategy", "no", "--output.output_dir", str(tmp_path / "run")]
    # (grpo: a random tiny model has no reward signal for the preflight to find; the preflight has its own tests)
    code = main(argv + (["--data.block_size", "64"] if task != "classification" else []) +
                (["--grpo.preflight_prompts", "0", "--grpo.num_generations", "2"] if task == "grpo" else []))
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "finished"
    # `lmforge train` ends by saying where the report is and what to run next
    assert "report.html" in out.err and "try it:" in out.err
    assert _one_line_error(capsys, ["init", task, "-o", str(cfg)]).endswith("add --force to replace it")


def test_init_refuses_an_unknown_task(capsys):
    assert "Did you mean 'sft'" in _one_line_error(capsys, ["init", "sfft"])


# ----------------------------------------------------------------------------------- silent wrong answers
def test_predict_refuses_a_model_without_a_trained_head(tiny_bert, capsys, tmp_path):
    line = _one_line_error(capsys, ["predict", str(tiny_bert), "a text"])
    assert "no trained classification head" in line and "--allow-untrained" in line
    assert main(["predict", str(tiny_bert), "a text", "--allow-untrained"]) == 0
    capsys.readouterr()


def test_predict_prints_the_same_records_as_it_writes(tiny_cls_run, tmp_path, capsys):
    texts = ["great tasty", "awful bland"]
    assert main(["predict", str(tiny_cls_run), *texts]) == 0
    shown = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert main(["predict", str(tiny_cls_run), *texts, "-o", str(tmp_path / "p.jsonl")]) == 0
    written = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert shown == written and list(shown[0]) == ["text", "label", "score", "probabilities"]


def test_known_pair_columns_are_detected(tiny_bert, tmp_path, capsys):
    rows = [(f"{a} food", f"{b} food", "same" if a == b else "different")
            for a, b in zip("good bad good bad good bad".split() * 8, "good good bad bad bad good".split() * 8)]
    f = write_csv(tmp_path / "nli.csv", rows, header=("premise", "hypothesis", "label"))
    from lmforge.data.labelled import read_labelled
    df = read_labelled(str(f), load_config(None, {"data": {"train": str(f)}}), "train")
    assert list(df["text_pair"][:2]) == ["good food", "good food"] and list(df["text"][:2]) == ["good food", "bad food"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"task": "classification", "model": {"name": str(tiny_bert)},
                                   "data": {"train": str(f)}, "output": {"output_dir": str(tmp_path / "run")}}))
    main(["doctor", str(cfg), "--no-probe"])
    assert "text column 'premise', text pair column 'hypothesis'" in capsys.readouterr().out


def test_resume_on_a_finished_run_refuses_and_says_how_to_continue(tiny_cls_run, capsys):
    cfg = tiny_cls_run / "config.yaml"
    line = _one_line_error(capsys, ["train", str(cfg), "--resume"])
    assert "finished run: there is nothing to resume" in line and f"--model.name {tiny_cls_run}/model" in line
    assert json.loads((tiny_cls_run / "manifest.json").read_text())["status"] == "finished"


def test_your_own_data_with_the_built_in_recipe_drops_its_data_settings(tmp_path):
    cfg = load_config(None, ["--data.train", "my.csv"])
    assert cfg.data.train == "my.csv" and cfg.data.test is None and cfg.data.max_length is None
    assert cfg.output.output_dir != load_config(None).output.output_dir
    assert load_config(None).data.test == "finefood:test"  # the recipe itself is unchanged


def test_doctor_accepts_the_overwrite_it_recommends(tiny_cls_run, capsys):
    main(["doctor", str(tiny_cls_run / "config.yaml"), "--no-probe"])
    assert "pass --overwrite" in capsys.readouterr().out
    main(["doctor", str(tiny_cls_run / "config.yaml"), "--no-probe", "--overwrite"])
    out = capsys.readouterr()
    assert "already holds a finished run" not in out.out and "has no value" not in out.err


# ----------------------------------------------------------------------------------- progress
def test_progress_without_a_terminal_is_a_line_per_logging_step(tiny_bert, tmp_path, capsys):
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(64))
    cfg = {"task": "classification", "model": {"name": str(tiny_bert)}, "data": {"train": str(train)},
           "train": {"max_steps": 4, "logging_steps": 2, "per_device_train_batch_size": 8, "eval_strategy": "no",
                     "save_strategy": "no"}, "output": {"output_dir": str(tmp_path / "run")}}
    res = api.train(cfg, progress=True)  # capsys: stderr is not a terminal
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("step ")]
    assert [x.split(" |")[0] for x in lines] == ["step 2/4", "step 4/4"], err
    assert all(re.search(r"loss \d+\.\d{4} \| lr .* tok/s .*eta", x) for x in lines)
    log = (res.run_dir / "train.log").read_text()
    assert "final eval: loss" in log


# ----------------------------------------------------------------------------------- docs
def test_relative_links_in_the_readme_and_docs_exist():
    broken = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(ROOT)} -> {target}")
    assert not broken, broken


def test_input_id_columns_are_carried_and_bad_fill_mask_rows_are_skipped(tiny_cls_run, tiny_bert, tmp_path, capsys):
    f = tmp_path / "in.csv"
    f.write_text("id,text\nr7,great tasty\nr9,awful bland\n")
    assert main(["predict", str(tiny_cls_run), "--input", str(f)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == ["r7", "r9"] and rows[0]["text"] == "great tasty"
    g = tmp_path / "masks.csv"
    g.write_text("id,text\n1,the [MASK] is good\n2,no mask here\n3,[MASK] food\n")
    assert main(["fill-mask", str(tiny_bert), "--input", str(g), "-o", str(tmp_path / "out.jsonl")]) == 0
    out = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["id"] for r in out] == [1, 2, 3]
    assert out[1]["error"].startswith("no mask token") and out[0]["masks"] and out[2]["filled"]


def test_the_python_api_prints_no_library_progress_bars(tiny_cls_run, capfd):
    from transformers.utils import logging as hf_logging
    hf_logging.enable_progress_bar()  # as in a fresh process
    api.predict(tiny_cls_run, ["great tasty"], progress=False)
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s]" not in err, err


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_in_page_links_of_the_readme_and_docs_have_their_heading():
    broken = []
    for md in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = md.read_text()
        anchors = {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
        for target, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", text):
            if "://" in target:
                continue
            doc = md if not target else md.parent / target
            names = anchors if doc == md else {_slug(h) for h in re.findall(r"^#+ (.+)$", doc.read_text(), flags=re.M)}
            if anchor not in names:
                broken.append(f"{md.relative_to(ROOT)} -> {target}#{anchor}")
    assert not broken, broken


def _measured_numbers(paragraph: str) -> list[str]:
    """The decimal numbers and ratios of a paragraph (1.4, 0.8410, 2.90x, 97%): the figures a measurement quotes."""
    return re.findall(r"(?<![\w.\-])(\d+\.\d+|\d+(?=x\b)|\d+(?=%))", paragraph)


def test_numbers_the_readme_quotes_come_from_the_results_file():
    """Every paragraph of the README that cites docs/results.md, and the first screen's `make demo` output, quotes
    only numbers that docs/results.md has (the record of every measurement): the two cannot drift apart."""
    readme, results = (ROOT / "README.md").read_text(), (ROOT / "docs" / "results.md").read_text()
    paragraphs = [p for p in re.split(r"\n\s*\n|\n(?=- )", readme) if "docs/results.md" in p]
    demo = readme[readme.index("The last lines of `make demo`"):readme.index("done: run folder runs/sentiment-minilm")]
    metrics_lines = "\n".join(x for x in demo.splitlines() if x.startswith(("INFO", "│")))
    missing = {}
    for p in paragraphs + [metrics_lines]:
        absent = [n for n in _measured_numbers(p) if n not in results]
        if absent:
            missing[p[:80]] = absent
    assert len(paragraphs) >= 8 and not missing, missing


def test_init_says_how_long_a_starter_took_as_written(capsys, tmp_path):
    from lmforge.starters import STARTERS
    for task, st in STARTERS.items():
        assert st.get("minutes"), f"the {task} starter has no measured time"
        assert main(["init", task]) == 0
        head = capsys.readouterr().out.splitlines()[1]
        assert head == (f"# As written it trained in {st['minutes']} min on 2 CPU cores (measured: docs/results.md); "
                        "`lmforge doctor` times a step on this machine.")
    assert main(["init", "sft", "--model", "my-model"]) == 0  # another model: the measurement does not apply
    assert "As written it trained" not in capsys.readouterr().out
    assert main(["init", "grpo", "-o", str(tmp_path / "g.yaml")]) == 0
    assert "As written it trained in" in capsys.readouterr().out  # said after "wrote ..."
