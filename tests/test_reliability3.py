"""Reliability, round three (issue 31): what independent checks found -- one line, exit 2, for mistakes that
gave tracebacks or silently wrong results."""

from __future__ import annotations

import pytest
import yaml
from conftest import cls_config, toy_sentiment_rows, write_csv

from lmforge.cli import main


def test_fill_mask_refuses_an_untrained_head_like_predict(tiny_cls_run, capsys):
    assert main(["fill-mask", str(tiny_cls_run), "the food was [MASK]"]) == 2
    err = capsys.readouterr().err
    assert "no trained masked-LM head" in err and "--allow-untrained" in err
    assert main(["fill-mask", str(tiny_cls_run), "the food was [MASK]", "--allow-untrained"]) == 0


@pytest.mark.parametrize("args,words", [(["--num-processes", "-2"], "--num-processes"),
                                        (["--num-processes", "0"], "--num-processes")])
def test_bad_launcher_options_are_usage_errors(args, words, capsys):
    assert main(["train", *args]) == 2
    assert words in capsys.readouterr().err


def test_tokenizer_max_mb_must_be_positive(tmp_path, capsys):
    (tmp_path / "t.txt").write_text("some text\n" * 50)
    assert main(["tokenizer", "train", "--files", str(tmp_path / "t.txt"), "-o", str(tmp_path / "tok"),
                 "--max-mb", "-1"]) == 2
    assert "--max-mb" in capsys.readouterr().err and not (tmp_path / "tok").exists()


def test_runs_on_a_regular_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    assert main(["runs", str(tmp_path / "f.txt")]) == 2
    assert "is a file, not a folder of runs" in capsys.readouterr().err


def test_a_tokenizer_key_beside_a_pretrained_model_is_refused(tmp_path, tiny_bert, capsys):
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(20, 1))
    cfg = cls_config(train, train, tmp_path / "r", tiny_bert, max_steps=1)
    cfg["tokenizer"] = {"name": str(tmp_path / "empty")}
    (tmp_path / "empty").mkdir()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", str(tmp_path / "c.yaml")]) == 2
    assert "tokenizer.name is set, but model.name" in capsys.readouterr().err
