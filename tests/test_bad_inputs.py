"""A catalogue of malformed inputs: data files, configs and command-line arguments.

Each one must end with exit code 2, exactly one line that names the problem and the fix
(``error: ... — hint``), no traceback, and no run folder left behind that looks finished.
(tests/test_errors.py holds the first cases; this file adds the rest and the edge cases that
must work: a UTF-8 BOM, paths with spaces and non-ASCII characters, --allow-pickle.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from conftest import toy_sentiment_rows, write_csv
from lmforge.cli import main

CASES: dict[str, Callable] = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def base(train, model, out, *extra):
    return ["train", "--model.name", str(model), "--data.train", str(train), "--data.test", "null",
            "--output.output_dir", str(out), "--train.max_steps", "1", "--no-progress", *extra]


def good_csv(d: Path, n=40, name="train.csv") -> Path:
    return write_csv(d / name, toy_sentiment_rows(n))


def jsonl(d: Path, name: str, records) -> Path:
    p = d / name
    p.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return p


# ----------------------------------------------------------------------------------- data files
@case
def whitespace_only_csv(d, model, out):
    p = d / "t.csv"
    p.write_text("   \n\n  \n")
    return base(p, model, out), ("t.csv is empty", "header row")


@case
def empty_jsonl(d, model, out):
    p = d / "t.jsonl"
    p.write_text("\n\n")
    return base(p, model, out), ("t.jsonl is empty", "JSON object per line")


@case
def header_only_tsv(d, model, out):
    p = d / "t.tsv"
    p.write_text("text\tlabel\n")
    return base(p, model, out), ("no data rows",)


@case
def semicolon_delimiter(d, model, out):
    p = d / "t.csv"
    p.write_text("text;label\ngood food;pos\nbad food;neg\n")
    return base(p, model, out), ("single column", "semicolon")


@case
def tabs_in_a_csv(d, model, out):
    p = d / "t.csv"
    p.write_text("text\tlabel\ngood food\tpos\nbad food\tneg\n")
    return base(p, model, out), ("single column", "data.format: tsv")


@case
def ragged_csv_short_row(d, model, out):
    p = d / "t.csv"
    p.write_text("text,label,source\ngood,pos,web\nbad,neg\n")
    return base(p, model, out), ("line 3", "expected 3 fields like the header, found 2")


@case
def pretty_printed_json_in_jsonl(d, model, out):
    p = d / "t.jsonl"
    p.write_text(json.dumps([{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}], indent=2))
    return base(p, model, out), ("line 1", "not JSON lines")


@case
def jsonl_line_is_a_list(d, model, out):
    p = d / "t.jsonl"
    p.write_text('{"text": "good", "label": "pos"}\n["bad", "neg"]\n')
    return base(p, model, out), ("line 2", "expected a JSON object, got list")


@case
def invalid_json_array(d, model, out):
    p = d / "t.json"
    p.write_text('[{"text": "good", "label": "pos"},\n {"text": "bad" "label": "neg"}]')
    return base(p, model, out), ("t.json line 2", "invalid JSON")


@case
def single_50mb_line(d, model, out):
    p = d / "t.csv"
    with open(p, "w") as f:
        f.write("text,label\n")
        f.write("word " * (10 * 2 ** 20))  # 50 MB, no newline, no label
    return base(p, model, out), ("line 2", "MB", "split")


@case
def utf16_file(d, model, out):
    p = d / "t.csv"
    p.write_bytes("text,label\ngood,pos\nbad,neg\n".encode("utf-16"))
    return base(p, model, out), ("UTF-16", "UTF-8")


@case
def nul_bytes(d, model, out):
    p = d / "t.csv"
    p.write_bytes(b"text,label\ngood,pos\nba\x00d,neg\n")
    return base(p, model, out), ("line 3", "NUL byte")


@case
def latin1_jsonl(d, model, out):
    p = d / "t.jsonl"
    p.write_bytes(b'{"text": "good", "label": "pos"}\n{"text": "caf\xe9", "label": "neg"}\n')
    return base(p, model, out), ("t.jsonl line 2", "not valid UTF-8", "iconv")


@case
def nan_label_jsonl(d, model, out):
    rows = [{"text": t, "label": lab} for t, lab in toy_sentiment_rows(10)]
    p = d / "t.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]) + '{"text": "good", "label": NaN}\n')
    return base(p, model, out), ("row 5", "NaN label")


@case
def nan_string_label_csv(d, model, out):
    rows = toy_sentiment_rows(10)
    rows[2] = (rows[2][0], "nan")
    return base(write_csv(d / "t.csv", rows), model, out), ("row 3", "NaN label")


@case
def null_label_jsonl(d, model, out):
    p = jsonl(d, "t.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": None}])
    return base(p, model, out), ("row 2", "label")


@case
def mixed_label_types(d, model, out):
    p = jsonl(d, "t.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": 0},
                             {"text": "fine", "label": "pos"}])
    return base(p, model, out), ("mixes label types", "all strings or all integers")


@case
def missing_text_key_jsonl(d, model, out):
    p = jsonl(d, "t.jsonl", [{"text": "good", "label": "pos"}, {"label": "neg"}])
    return base(p, model, out), ("row 2", "empty or missing text")


@case
def unseen_test_label(d, model, out):
    tr = good_csv(d)
    te = write_csv(d / "te.csv", [("good food", "neutral")] + toy_sentiment_rows(4))
    return base(tr, model, out)[:-3] + ["--data.test", str(te), "--train.max_steps", "1", "--no-progress"], \
        ("'neutral'", "never appear in the training data")


@case
def one_class_jsonl(d, model, out):
    p = jsonl(d, "t.jsonl", [{"text": t, "label": 1} for t, _ in toy_sentiment_rows(12)])
    return base(p, model, out), ("label '1'", "at least two classes")


@case
def not_a_parquet_file(d, model, out):
    p = d / "t.parquet"
    p.write_bytes(b"this is not parquet at all\n" * 10)
    return base(p, model, out), ("not a readable parquet file",)


@case
def data_path_is_a_folder(d, model, out):
    (d / "folder").mkdir()
    return base(d / "folder", model, out), ("is a folder",)


@case
def label_column_missing(d, model, out):
    return base(good_csv(d), model, out, "--data.label_column", "stars"), ("'stars'", "available columns")


# ----------------------------------------------------------------------------------- models
@case
def model_path_is_a_file(d, model, out):
    f = d / "model.safetensors"
    f.write_bytes(b"x")
    return base(good_csv(d), f, out), ("is a file, not a folder",)


@case
def model_folder_without_config(d, model, out):
    (d / "m").mkdir()
    return base(good_csv(d), d / "m", out), ("has no config.json",)


@case
def pickled_weights_only(d, model, out):
    return base(good_csv(d), pickled_model(d, model), out), ("only pickled weights", "--allow-pickle")


@case
def trust_remote_code_in_config(d, model, out):
    return base(good_csv(d), model, out, "--model.trust_remote_code", "true"), \
        ("trust_remote_code", "--trust-remote-code")


@case
def max_length_above_model_limit(d, model, out):
    return base(good_csv(d), model, out, "--data.max_length", "4096"), ("above the model's limit", "at most 128")


# ----------------------------------------------------------------------------------- configs
@case
def zero_batch_size(d, model, out):
    return base(good_csv(d), model, out, "--train.per_device_train_batch_size", "0"), \
        ("'train.per_device_train_batch_size'", ">= 1")


@case
def negative_batch_size(d, model, out):
    return base(good_csv(d), model, out, "--train.per_device_train_batch_size", "-8"), \
        ("'train.per_device_train_batch_size'", ">= 1", "-8")


@case
def zero_accumulation(d, model, out):
    return base(good_csv(d), model, out, "--train.gradient_accumulation_steps", "0"), \
        ("gradient_accumulation_steps",)


@case
def validation_split_out_of_range(d, model, out):
    return base(good_csv(d), model, out, "--data.validation_split", "1.5"), ("validation_split", "> 0 and < 1")


@case
def eval_steps_missing(d, model, out):
    return base(good_csv(d), model, out, "--train.eval_strategy", "steps"), ("eval_steps",)


@case
def unknown_nan_policy(d, model, out):
    return base(good_csv(d), model, out, "--train.nan_policy", "ignore"), ("nan_policy", "'stop'")


@case
def yaml_not_a_mapping(d, model, out):
    c = d / "c.yaml"
    c.write_text("- task: classification\n")
    return ["train", str(c), "--no-progress"], ("must be a YAML mapping",)


@case
def yaml_syntax_error(d, model, out):
    c = d / "c.yaml"
    c.write_text("train:\n  learning_rate: [1e-4\n")
    return ["train", str(c), "--no-progress"], ("not valid YAML", "line")


@case
def config_not_utf8(d, model, out):
    c = d / "c.yaml"
    c.write_bytes(b"task: classification\n# caf\xe9\n")
    return ["train", str(c), "--no-progress"], ("not UTF-8",)


@case
def config_file_missing(d, model, out):
    return ["train", str(d / "nope.yaml"), "--no-progress"], ("config file not found",)


# ----------------------------------------------------------------------------------- output folders
@case
def output_inside_data_folder(d, model, out):
    data = d / "corpus"
    data.mkdir()
    good_csv(data)
    return base(data, model, data / "run"), ("inside the input data folder", "outside the data folder")


@case
def output_dir_is_a_file(d, model, out):
    f = d / "run.txt"
    f.write_text("x")
    return base(good_csv(d), model, f), ("is a file",)


@case
def unfinished_run_without_resume(d, model, out):
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"status": "failed"}))
    (out / "log.jsonl").write_text('{"step": 3, "loss": 1.0}\n')  # it trained: keep it for --resume
    return base(good_csv(d), model, out), ("unfinished run", "--resume")


# ----------------------------------------------------------------------------------- command line
@case
def override_without_value(d, model, out):
    return base(good_csv(d), model, out, "--train.learning_rate"), ("has no value", "VALUE")


@case
def stray_positional_argument(d, model, out):
    return base(good_csv(d), model, out, "oops"), ("unexpected argument 'oops'", "--section.key value")


@case
def resume_from_missing_checkpoint(d, model, out):
    return base(good_csv(d), model, out, "--resume", str(d / "nope")), ("not found", "--resume with no path")


@case
def resume_from_cut_off_checkpoint(d, model, out):
    ck = out / "checkpoints" / "step-3"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text("{}")
    return base(good_csv(d), model, out, "--resume", str(ck)), ("cannot be used", "COMPLETE")


@case
def predict_zero_batch_size(d, model, out):
    return ["predict", str(model), "good food", "--batch-size", "0"], ("'--batch-size'", "greater than or equal to 1")


@case
def eval_missing_model(d, model, out):
    return ["eval", str(d / "no-run"), "--data", str(good_csv(d))], ("not found", "check the path")


# ----------------------------------------------------------------------------------- values out of range (issue 17)
@case
def nan_learning_rate(d, model, out):
    return base(good_csv(d), model, out, "--train.learning_rate", "nan"), ("'train.learning_rate'", "finite")


@case
def infinite_learning_rate(d, model, out):
    return base(good_csv(d), model, out, "--train.learning_rate", "inf"), ("'train.learning_rate'", "finite")


@case
def seed_beyond_64_bits(d, model, out):
    return base(good_csv(d), model, out, "--train.seed", str(2**70)), ("'train.seed'", "64 bits")


@case
def seed_beyond_32_bits(d, model, out):
    return base(good_csv(d), model, out, "--train.seed", str(2**40)), ("'train.seed'", "<= 4294967295")


@case
def negative_max_steps(d, model, out):
    return base(good_csv(d), model, out, "--train.max_steps", "-5"), ("'train.max_steps'", ">= -1")


@case
def zero_eval_batch_size(d, model, out):
    return base(good_csv(d), model, out, "--train.per_device_eval_batch_size", "0"), \
        ("'train.per_device_eval_batch_size'", ">= 1")


@case
def negative_warmup_steps(d, model, out):
    return base(good_csv(d), model, out, "--train.warmup_steps", "-3"), ("'train.warmup_steps'", ">= 0")


@case
def zero_grad_norm(d, model, out):
    return base(good_csv(d), model, out, "--train.max_grad_norm", "0"), ("'train.max_grad_norm'", "> 0")


@case
def lora_dropout_of_one(d, model, out):
    return base(good_csv(d), model, out, "--peft.dropout", "1.0"), ("'peft.dropout'", "< 1")


@case
def dpo_negative_beta(d, model, out):
    return base(good_csv(d), model, out, "--dpo.beta", "-0.1"), ("'dpo.beta'", "> 0")


# ----------------------------------------------------------------------------------- the pickle promise (issue 17)
@case
def pickle_beside_an_unrelated_safetensors(d, model, out):
    m = pickled_model(d, model)
    (m / "extra_head.safetensors").write_bytes((m / "config.json").read_bytes()[:8])  # not the model's weights
    return base(good_csv(d), m, out), ("only pickled weights", "--allow-pickle")


@case
def predict_with_a_pickle_beside_an_unrelated_safetensors(d, model, out):
    m = pickled_model(d, model)
    (m / "other.safetensors").write_bytes(b"x")
    return ["predict", str(m), "a text", "--allow-untrained"], ("only pickled weights", "--allow-pickle")


# ----------------------------------------------------------------------------------- command line (issues 16, 17)
@case
def mistyped_command(d, model, out):
    return ["trian"], ("No such command 'trian'", "Did you mean 'train'", "lmforge --help")


@case
def bad_integer_option(d, model, out):
    return ["generate", str(model), "hi", "--max-new-tokens", "ten"], ("--max-new-tokens", "lmforge generate --help")


@case
def missing_argument(d, model, out):
    return ["predict"], ("Missing argument", "lmforge predict --help")


@case
def override_without_a_value(d, model, out):
    return ["eval", str(model), "--data.max_eval_samples"], ("has no value",)


@case
def predict_with_an_untrained_head(d, model, out):
    return ["predict", str(model), "a text"], ("no trained classification head", "--allow-untrained")


@case
def nan_temperature_option(d, model, out):
    return ["generate", str(model), "hi", "--temperature", "nan"], ("'--temperature'", "finite")


@case
def zero_max_new_tokens_option(d, model, out):
    return ["generate", str(model), "hi", "--max-new-tokens", "0"], ("'--max-new-tokens'", "greater than or equal to 1")


@case
def top_p_above_one_option(d, model, out):
    return ["chat", str(model), "--top-p", "1.5"], ("'--top-p'", "(0, 1]")


@case
def port_out_of_range_option(d, model, out):
    return ["serve", str(model), "--port", "70000"], ("'--port'", "65535")


@case
def seed_beyond_64_bits_option(d, model, out):
    return ["generate", str(model), "hi", "--seed", str(2**70)], ("'--seed'",)


@case
def zero_batch_size_option(d, model, out):
    return ["predict", str(model), "hi", "--batch-size", "0"], ("'--batch-size'",)


@case
def zero_trials_option(d, model, out):
    return ["sweep", "--param", "train.learning_rate=loguniform:1e-5:1e-3", "--trials", "0"], ("'--trials'",)


# ----------------------------------------------------------------------------------- output paths (issue 17)
@case
def output_dir_under_a_file(d, model, out):
    f = d / "a-file"
    f.write_text("mine")
    return base(good_csv(d), model, f / "run"), ("is under", "which is a file")


@case
def predict_output_is_a_folder(d, model, out):
    (d / "preds").mkdir()
    return ["predict", str(model), "--input", str(good_csv(d)), "-o", str(d / "preds"), "--allow-untrained"], \
        ("is a folder, not a file",)


@case
def predict_output_under_a_file(d, model, out):
    (d / "f").write_text("x")
    return ["predict", str(model), "hi", "-o", str(d / "f" / "p.jsonl"), "--allow-untrained"], ("which is a file",)


@case
def eval_output_is_a_folder(d, model, out):
    (d / "m").mkdir()
    return ["eval", str(model), "--data", str(good_csv(d)), "-o", str(d / "m")], ("is a folder, not a file",)


@case
def tokenizer_output_is_a_file(d, model, out):
    (d / "tok").write_text("my notes")
    (d / "c.txt").write_text("some text here\n" * 50)
    return ["tokenizer", "train", "--files", str(d / "c.txt"), "--vocab-size", "300", "-o", str(d / "tok")], \
        ("is a file, not a folder", "never replaces a file")


@case
def sweep_output_is_a_file(d, model, out):
    (d / "sw").write_text("x")
    cfg = d / "c.yaml"
    cfg.write_text(f"model: {{name: {model}}}\ndata: {{train: {good_csv(d)}}}\n")
    return ["sweep", str(cfg), "--param", "train.learning_rate=loguniform:1e-5:1e-3", "--trials", "1",
            "--output-dir", str(d / "sw")], ("is a file, not a folder",)


@case
def report_output_is_a_folder(d, model, out):
    (d / "r").mkdir()
    return ["report", str(d), "-o", str(d / "r")], ("is a folder, not a file",)


# ----------------------------------------------------------------------------------- data and model content (issue 17)
def _model_copy(d: Path, model: Path, name: str) -> Path:
    import shutil
    return Path(shutil.copytree(model, d / name))


@case
def duplicate_column_names(d, model, out):
    p = d / "dup.csv"
    p.write_text("text,text,label\na,b,pos\nc,d,neg\n")
    return base(p, model, out), ("'text' appears more than once",)


@case
def fifo_as_training_data(d, model, out):
    import os
    p = d / "pipe.csv"
    os.mkfifo(p)
    return base(p, model, out), ("not a regular file",)


@case
def non_utf8_command_line_text(d, model, out):
    return ["predict", str(model), "caf\udce9 great"], ("not valid UTF-8",)


@case
def config_json_not_json(d, model, out):
    m = _model_copy(d, model, "m")
    (m / "config.json").write_text('{"model_type": "bert", ')
    return base(good_csv(d), m, out), ("config.json is not valid JSON",)


@case
def config_json_unknown_model_type(d, model, out):
    m = _model_copy(d, model, "m")
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "model_type": "nosuchmodel"}))
    return base(good_csv(d), m, out), ("model_type 'nosuchmodel'",)


@case
def model_folder_without_weights(d, model, out):
    m = _model_copy(d, model, "m")
    (m / "model.safetensors").unlink()
    return base(good_csv(d), m, out), ("no weights",)


@case
def config_sizes_disagree_with_weights(d, model, out):
    m = _model_copy(d, model, "m")
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64, "intermediate_size": 128}))
    return base(good_csv(d), m, out), ("do not fit its config.json",)


@case
def predict_with_config_sizes_that_disagree(d, model, out):
    m = _model_copy(d, model, "m")
    cfg = json.loads((m / "config.json").read_text())
    (m / "config.json").write_text(json.dumps({**cfg, "hidden_size": 64, "intermediate_size": 128}))
    return ["predict", str(m), "hi", "--allow-untrained"], ("do not fit its config.json",)


@case
def predict_with_a_broken_config_json(d, model, out):
    m = _model_copy(d, model, "m")
    (m / "config.json").write_text("{")
    return ["predict", str(m), "hi"], ("config.json is not valid JSON",)


@case
def damaged_gzip_csv(d, model, out):
    p = d / "t.csv"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage")
    return base(p, model, out), ("damaged gzip",)


# ----------------------------------------------------------------------------------- late checks made early (issue 17)
@case
def sample_prompt_longer_than_the_context(d, model, out):
    test_causal_lm = pytest.importorskip("test_causal_lm")
    gpt = test_causal_lm.make_tiny(d / "gpt2", "gpt2")  # a context of 128 tokens
    (d / "c.txt").write_text("the food was good and the service was fine\n" * 40)
    return ["train", "--task", "causal-lm", "--model.name", str(gpt), "--data.train", str(d / "c.txt"),
            "--data.block_size", "32", "--output.output_dir", str(out), "--train.max_steps", "1", "--no-progress",
            "--data.sample_prompts", json.dumps(["the food " * 200])], ("data.sample_prompts", "context is 128")


@case
def metric_for_best_model_the_task_does_not_have(d, model, out):
    return base(good_csv(d), model, out, "--train.metric_for_best_model", "perplexity"), \
        ("metric_for_best_model 'perplexity'", "accuracy")


@case
def validation_split_too_small_for_the_labels(d, model, out):
    return base(good_csv(d, n=60), model, out, "--data.validation_split", "0.001"), \
        ("holds out 1 of 60 rows", "each label needs a held-out row")


@case
def unknown_attention_implementation(d, model, out):
    return base(good_csv(d), model, out, "--model.attn_implementation", "nosuch"), ("model.attn_implementation 'nosuch'",)


@case
def uninstalled_attention_implementation(d, model, out):
    return base(good_csv(d), model, out, "--model.attn_implementation", "flash_attention_2"), ("FlashAttention2",)


@case
def tokenizer_vocab_too_small_for_its_specials(d, model, out):
    (d / "c.txt").write_text("hello world\n" * 50)
    return ["tokenizer", "train", "--files", str(d / "c.txt"), "--type", "wordpiece", "--vocab-size", "3",
            "-o", str(d / "tok")], ("no room beside the 5 special tokens",)


@case
def sweep_range_with_infinity(d, model, out):
    cfg = d / "c.yaml"
    cfg.write_text(f"model: {{name: {model}}}\ndata: {{train: {good_csv(d)}}}\n")
    return ["sweep", str(cfg), "--param", "train.learning_rate=loguniform:1e-5:inf", "--trials", "1",
            "-o", str(d / "sw")], ("not a finite number",)


# ----------------------------------------------------------------------------------- the checks
def pickled_model(d: Path, model: Path) -> Path:
    import shutil

    import torch
    from safetensors.torch import load_file
    m = d / "pickled"
    shutil.copytree(model, m)
    sd = load_file(str(m / "model.safetensors"))
    (m / "model.safetensors").unlink()
    torch.save(sd, m / "pytorch_model.bin")
    return m


def looks_finished(out: Path) -> bool:
    if not out.exists():
        return False
    man = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").exists() else {}
    return man.get("status") == "finished" or (out / "model").exists() or (out / "metrics.json").exists()


def test_catalogue_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, tmp_path, tiny_bert, capsys):
    out = tmp_path / "run"
    args, needles = CASES[name](tmp_path, tiny_bert, out)
    existed = out.exists()
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    assert " — " in lines[0], f"no hint: {lines[0]}"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not looks_finished(out)
    if not existed:
        assert not out.exists(), f"a failed run left {sorted(p.name for p in out.iterdir())}"


# ----------------------------------------------------------------------------------- must work
def test_utf8_bom_header_is_read(tmp_path):
    from lmforge.data.sources import read_table
    p = tmp_path / "t.csv"
    p.write_bytes(b"\xef\xbb\xbftext,label\ngood,pos\nbad,neg\n")
    df = read_table(str(p))
    assert list(df.columns) == ["text", "label"] and df["label"].tolist() == ["pos", "neg"]
    j = tmp_path / "t.jsonl"
    j.write_bytes(b'\xef\xbb\xbf{"text": "good", "label": "pos"}\n')
    assert read_table(str(j))["text"].tolist() == ["good"]


def test_long_row_under_the_limit_is_read(tmp_path):
    """A 1 MB review is data, not a malformed file (the csv module's default field limit is 128 KB)."""
    from lmforge.data.sources import read_table
    p = tmp_path / "t.csv"
    p.write_text("text,label\n" + "word " * 200_000 + ",pos\nbad,neg\n")
    df = read_table(str(p))
    assert len(df) == 2 and len(df["text"][0]) == 1_000_000


def test_paths_with_spaces_and_unicode_work(tmp_path, tiny_bert, capsys):
    import shutil
    d = tmp_path / "my data ü" / "дані 数据"
    d.mkdir(parents=True)
    model = shutil.copytree(tiny_bert, tmp_path / "modèle tiny")
    train = write_csv(d / "train set é.csv", toy_sentiment_rows(40))
    out = tmp_path / "runs ✓" / "rün 1"
    code = main(base(train, model, out))
    assert code == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"
    assert (out / "model" / "model.safetensors").exists()


def test_a_users_file_in_the_way_of_an_output_is_never_moved(tmp_path, capsys):
    (tmp_path / "tok").write_text("my notes")
    (tmp_path / "c.txt").write_text("some text here\n" * 50)
    assert main(["tokenizer", "train", "--files", str(tmp_path / "c.txt"), "--vocab-size", "300",
                 "-o", str(tmp_path / "tok")]) == 2
    assert (tmp_path / "tok").read_text() == "my notes" and sorted(p.name for p in tmp_path.iterdir()) == ["c.txt", "tok"]


def test_a_failure_before_the_first_step_leaves_nothing_and_an_old_one_is_replaced(tmp_path, tiny_bert, monkeypatch,
                                                                                   capsys):
    from lmforge.train import run as run_mod
    out = tmp_path / "run"

    def broken(*a, **k):
        raise RuntimeError("a library failed while setting up")
    monkeypatch.setattr(run_mod, "assemble", broken)
    with pytest.raises(RuntimeError):
        from lmforge import api
        api.train(
            {"task": "classification", "model": {"name": str(tiny_bert)}, "data": {"train": str(good_csv(tmp_path))},
             "train": {"max_steps": 1}, "output": {"output_dir": str(out)}}, progress=False)
    assert not out.exists()
    monkeypatch.undo()
    out.mkdir()  # what an older lmforge left after an early error: a failed manifest, nothing trained
    (out / "manifest.json").write_text(json.dumps({"status": "failed", "error": "x"}))
    (out / "train.log").write_text("")
    assert main(base(good_csv(tmp_path), tiny_bert, out)) == 0, capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["status"] == "finished"


def test_gzip_csv_is_read_whatever_its_name(tmp_path):
    import gzip

    from lmforge.data.sources import read_table
    raw = b"text,label\ngood,pos\nbad,neg\n"
    for name in ("t.csv", "t.csv.gz"):
        (tmp_path / name).write_bytes(gzip.compress(raw))
        assert read_table(str(tmp_path / name))["label"].tolist() == ["pos", "neg"]


def test_empty_cells_of_a_batch_input_are_reported_and_skipped(tiny_cls_run, tmp_path, capsys):
    f = tmp_path / "in.csv"
    f.write_text('id,text\n1,great tasty\n2,\n3,"   "\n4,awful\n')
    assert main(["predict", str(tiny_cls_run), "--input", str(f)]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["id"] for r in rows] == [1, 2, 3, 4]
    assert [r.get("error") for r in rows] == [None, "empty text", "empty text", None]
    assert rows[0]["label"] is not None and rows[1]["text"] == ""


def test_pickled_weights_load_with_allow_pickle(tmp_path, tiny_bert, capsys):
    out = tmp_path / "run"
    code = main(base(good_csv(tmp_path), pickled_model(tmp_path, tiny_bert), out, "--allow-pickle"))
    assert code == 0, capsys.readouterr().err
    assert (out / "model" / "model.safetensors").exists()  # what lmforge writes is safetensors
