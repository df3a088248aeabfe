"""User mistakes end with one line, exit code 2, and no traceback."""

import os
import subprocess
import sys

import pytest

from conftest import toy_sentiment_rows, write_csv
from lmforge.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    return code, err


def train_args(train, out, model, *extra):
    return ["train", "--model.name", str(model), "--data.train", str(train), "--output.output_dir", str(out),
            "--data.test", "null", "--train.max_steps", "1", "--no-progress", *extra]


def assert_user_error(code, err, *needles):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_missing_file(capsys, tmp_path, tiny_bert):
    code, err = run_cli(capsys, *train_args(tmp_path / "nope.csv", tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "not found", "nope.csv")


def test_unknown_extension(capsys, tmp_path, tiny_bert):
    p = tmp_path / "data.xlsx"
    p.write_text("x")
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "format", "data.format")


def test_misspelled_column(capsys, tmp_path, tiny_bert):
    p = write_csv(tmp_path / "d.csv", toy_sentiment_rows(20))
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert, "--data.text_column", "txt"))
    assert_user_error(code, err, "'txt'", "Did you mean 'text'", "available columns")


def test_no_text_column_lists_columns(capsys, tmp_path, tiny_bert):
    p = write_csv(tmp_path / "d.csv", [("a", "b")], header=("foo", "bar"))
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "foo, bar")


def test_header_only(capsys, tmp_path, tiny_bert):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n")
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "no data rows")


def test_empty_file(capsys, tmp_path, tiny_bert):
    p = tmp_path / "d.csv"
    p.write_text("")
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "empty")


def test_empty_text(capsys, tmp_path, tiny_bert):
    rows = toy_sentiment_rows(10)
    rows[3] = ("  ", "pos")
    p = write_csv(tmp_path / "d.csv", rows)
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "row 4", "empty")


def test_nan_label(capsys, tmp_path, tiny_bert):
    rows = toy_sentiment_rows(10)
    rows[6] = (rows[6][0], "")
    p = write_csv(tmp_path / "d.csv", rows)
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "row 7", "label")


def test_unseen_eval_label(capsys, tmp_path, tiny_bert):
    tr = write_csv(tmp_path / "tr.csv", toy_sentiment_rows(20))
    ev = write_csv(tmp_path / "ev.csv", [("good food", "neutral")] + toy_sentiment_rows(4))
    code, err = run_cli(capsys, *train_args(tr, tmp_path / "o", tiny_bert, "--data.eval", str(ev)))
    assert_user_error(code, err, "'neutral'", "never appear in the training data")


def test_one_class(capsys, tmp_path, tiny_bert):
    p = write_csv(tmp_path / "d.csv", [(t, "pos") for t, _ in toy_sentiment_rows(20)])
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "at least two classes")


def test_non_utf8_names_file_and_line(capsys, tmp_path, tiny_bert):
    p = tmp_path / "d.csv"
    p.write_bytes(b"text,label\ngood food,pos\ncaf\xe9 bad,neg\n")
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "d.csv line 3", "UTF-8")


def test_ragged_csv(capsys, tmp_path, tiny_bert):
    p = tmp_path / "d.csv"
    p.write_text("text,label\ngood,pos\nbad,neg,extra\n")
    code, err = run_cli(capsys, *train_args(p, tmp_path / "o", tiny_bert))
    assert_user_error(code, err, "line 3", "expected 2 fields")


def test_unknown_config_key(capsys, tmp_path, tiny_bert):
    code, err = run_cli(capsys, "train", "--train.learning_rat", "1e-4")
    assert_user_error(code, err, "train.learning_rat", "learning_rate")


def test_bad_value_type(capsys):
    code, err = run_cli(capsys, "train", "--train.num_train_epochs", "lots")
    assert_user_error(code, err, "train.num_train_epochs", "lots")


def test_finished_run_is_not_overwritten(capsys, tmp_path, tiny_bert, toy_csvs):
    train, _ = toy_csvs
    out = tmp_path / "o"
    assert main(train_args(train, out, tiny_bert)) == 0
    model_bytes = (out / "model" / "model.safetensors").read_bytes()
    capsys.readouterr()
    code, err = run_cli(capsys, *train_args(train, out, tiny_bert))
    assert_user_error(code, err, "finished run", "--overwrite")
    assert (out / "model" / "model.safetensors").read_bytes() == model_bytes
    assert main(train_args(train, out, tiny_bert, "--overwrite")) == 0


def test_hub_id_fails_fast_offline(capsys, tmp_path, toy_csvs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train, _ = toy_csvs
    code, err = run_cli(capsys, *train_args(train, tmp_path / "o", "some-org/some-model"))
    assert_user_error(code, err, "some-org/some-model", "HF_HUB_OFFLINE", "alias")


def test_missing_model_folder(capsys, tmp_path, toy_csvs):
    train, _ = toy_csvs
    code, err = run_cli(capsys, *train_args(train, tmp_path / "o", tmp_path / "no" / "such" / "model"))
    assert_user_error(code, err, "model folder not found")


def test_subprocess_exit_code_and_debug_traceback(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "lmforge.cli", "train", "--data.train", str(tmp_path / "missing.csv"),
           "--output.output_dir", str(tmp_path / "o")]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "error: data file not found" in p.stderr
    p = subprocess.run(cmd[:3] + ["--debug"] + cmd[3:], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and "Traceback" in p.stderr
