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


def _tokenizer(texts: list[str], eos: str):
    """A byte-level BPE trained on `texts`, with `eos` as its only special token and its eos, no chat template."""
    from lmforge.tokenizer import train_tokenizer
    tok = train_tokenizer("byte-level-bpe", texts=texts, vocab_size=300, min_frequency=1,
                          special_tokens=[eos]).tokenizer
    tok.eos_token = eos
    return tok


def _base_gpt2(tmp_path):
    """A GPT-2-like base model folder without a chat template (its eos is <|endoftext|>)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    tok = _tokenizer([f"thou art kind {i} and he saith unto them" for i in range(200)], "<|endoftext|>")
    d = tmp_path / "base"
    tok.save_pretrained(d)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=128,
                               eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)).save_pretrained(d)
    return d


def _chat_rows(path, n, empty=False):
    import json
    rows = [{"messages": [{"role": "user", "content": f"say {i}"},
                          {"role": "assistant", "content": "" if empty else f"ok {i}"}]} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_a_chat_run_on_a_base_model_stops_at_its_end_of_turn_everywhere(tmp_path, one_thread):
    import json

    from transformers import AutoTokenizer, GenerationConfig

    from lmforge import api
    base = _base_gpt2(tmp_path)
    cfg = {"task": "sft", "model": {"name": str(base)}, "data": {"train": _chat_rows(tmp_path / "c.jsonl", 40)},
           "train": {"max_steps": 2, "per_device_train_batch_size": 4, "eval_strategy": "no", "save_strategy": "no"},
           "output": {"output_dir": str(tmp_path / "run")}}
    run = api.train(cfg, progress=False).run_dir
    tok = AutoTokenizer.from_pretrained(run / "model")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    eos = GenerationConfig.from_pretrained(run / "model").eos_token_id
    assert im_end in eos and tok.eos_token_id in eos  # chat, serve and generate read this
    # the GGUF export stops there too (its end-of-turn token id is written)
    out = api.export(str(run), "gguf", str(tmp_path / "g"), verify=False)
    facts = json.loads((out / "export.json").read_text())
    assert facts["gguf"]["tokenizer"]["eot_id"] == im_end


def test_chat_data_that_cannot_teach_anything_warns(tmp_path, one_thread, caplog):
    import logging

    from lmforge import api
    base = _base_gpt2(tmp_path)
    cfg = {"task": "sft", "model": {"name": str(base)}, "data": {"train": _chat_rows(tmp_path / "e.jsonl", 20, True)},
           "train": {"max_steps": 1, "per_device_train_batch_size": 4, "eval_strategy": "no", "save_strategy": "no"},
           "output": {"output_dir": str(tmp_path / "run")}}
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        api.train(cfg, progress=False)
    assert "every assistant reply" in caplog.text and "is empty" in caplog.text


def test_a_chat_template_that_raises_is_one_line(tmp_path, capsys):
    from lmforge.tasks.chat_template import render_with_mask
    from lmforge.errors import LmforgeError
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(_base_gpt2(tmp_path))
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(LmforgeError, match="refused a conversation with roles system, user, assistant: System role not supported"):
        render_with_mask(tok, [{"role": "system", "content": "x"}, {"role": "user", "content": "y"},
                               {"role": "assistant", "content": "z"}])


@pytest.mark.parametrize("tie", [True, False])
def test_an_adapter_only_lora_chat_run_that_grew_the_vocabulary_loads_everywhere(tie, tmp_path, one_thread):
    """A LoRA sft run on a base without a chat template adds <|im_start|> / <|im_end|>: their embedding rows are
    trained and saved with the adapter (and the output layer when it is not tied), so generate, export
    (safetensors and onnx) and the adapter folder itself all load, and answer alike."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from lmforge import api
    from lmforge.config import SamplingParams
    tok = _tokenizer([f"say {i} ok {i}" for i in range(200)], "</s>")
    base = tmp_path / "base"
    tok.save_pretrained(base)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                                 tie_word_embeddings=tie, eos_token_id=tok.eos_token_id)).save_pretrained(base)
    cfg = {"task": "sft", "model": {"name": str(base)}, "data": {"train": _chat_rows(tmp_path / "c.jsonl", 40)},
           "peft": {"r": 4, "alpha": 8, "merge": False},
           "train": {"max_steps": 3, "per_device_train_batch_size": 4, "eval_strategy": "no", "save_strategy": "no",
                     "learning_rate": 1e-2},
           "output": {"output_dir": str(tmp_path / "run")}}
    run = api.train(cfg, progress=False).run_dir
    assert (run / "adapter").exists() and not (run / "model").exists()
    im_end = len(tok) + 1  # the second token ChatML added
    assert im_end in GenerationConfig.from_pretrained(run / "adapter").eos_token_id
    prompt = [{"role": "user", "content": "say 3"}]
    a = api.generate(str(run / "adapter"), [prompt], sampling=SamplingParams(max_new_tokens=6), chat=True)
    exported = api.export(str(run), "safetensors", str(tmp_path / "st"))
    b = api.generate(str(exported), [prompt], sampling=SamplingParams(max_new_tokens=6), chat=True)
    assert a[0]["completion"] == b[0]["completion"]
    api.export(str(run), "onnx", str(tmp_path / "onnx"))  # verified against the merged adapter model


def test_a_half_written_last_log_line_does_not_stop_a_resume(tmp_path, tiny_bert, monkeypatch, one_thread):
    from test_resume import assert_same_run, crashed_then_resumed
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(64, 1))

    def cfg(out):
        return cls_config(train, train, out, tiny_bert, max_steps=8, per_device_train_batch_size=8,
                          save_strategy="steps", save_steps=3, eval_strategy="no")
    def torn(run):
        with open(run / "log.jsonl", "a") as f:
            f.write('{"step": 6, "loss": 0.69')  # the process was killed in the middle of a line
    ref, run = crashed_then_resumed(cfg, tmp_path, monkeypatch, 5, before_resume=torn)
    assert_same_run(ref, run)


def test_a_schedule_that_keeps_the_rate_near_zero_and_a_very_long_run_are_warned(tmp_path, tiny_bert, caplog,
                                                                                   one_thread):
    import logging

    from lmforge import api
    from lmforge.train import loop
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(40, 1))
    cfg = cls_config(train, train, tmp_path / "r", tiny_bert, max_steps=3, warmup_steps=1000, eval_strategy="no")
    with caplog.at_level(logging.WARNING, logger="lmforge"):
        api.train(cfg, progress=False)
    assert "keeps the rate below 1% of train.learning_rate for" in caplog.text
    caplog.clear()
    from types import SimpleNamespace
    with caplog.at_level(logging.WARNING, logger="lmforge"):  # what step 2 of a 3,000-step run at 3 s a step says
        loop.Trainer._warn_if_long(SimpleNamespace(total_steps=3000, step=2), 3.0)
    assert "the remaining 2,998 steps take about 2.5 h here" in caplog.text
