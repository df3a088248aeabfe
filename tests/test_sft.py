"""Chat / instruction fine-tuning: the trained positions are exactly the assistant contents and their
end-of-turn tokens under several chat templates (none with generation tags); every data shape gives the
same conversation; a packed block's loss is the sum of its conversations' losses; a dataset with nothing
to train on is one line, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from lmforge.config import SamplingParams
from lmforge import api
from lmforge.cli import main
from lmforge.config import build_config
from lmforge.data.chat import read_conversations
from lmforge.errors import LmforgeError
from lmforge.tasks import sft
from lmforge.tasks.causal_lm import make_collate
from lmforge.tasks.chat_template import CHATML, render_with_mask
from lmforge.tasks.lm_loss import CausalLMLoss
from lmforge.tokenizer import train_tokenizer

LLAMA3 = ("{{ '<|begin_of_text|>' }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
          "'<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
PLAIN = ("{% for m in messages %}{% if m['role'] == 'user' %}{{ '### User: ' + m['content'] + '\n' }}"
         "{% elif m['role'] == 'system' %}{{ m['content'] + '\n\n' }}"
         "{% else %}{{ '### Assistant: ' + m['content'] + '</s>\n' }}{% endif %}{% endfor %}"
         "{% if add_generation_prompt %}{{ '### Assistant: ' }}{% endif %}")
SPECIALS = ["<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|eot_id|>", "</s>"]
CONV = [{"role": "system", "content": "You rewrite old English."},
        {"role": "user", "content": "Thou art kind."},
        {"role": "assistant", "content": "You are kind."},
        {"role": "user", "content": "And he saith unto them"},
        {"role": "assistant", "content": "And he says to them"}]


def texts() -> list[str]:
    words = "thou art kind you are and he saith says unto to them old english rewrite the of a".split()
    return [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) for i in range(200)]


@pytest.fixture(scope="module")
def tok():
    t = train_tokenizer("byte-level-bpe", texts=texts(), vocab_size=400, min_frequency=1,
                        special_tokens=SPECIALS).tokenizer
    t.eos_token = "</s>"
    return t


def _runs(ids, trained, tokenizer) -> list[str]:
    """The decoded text of each contiguous run of trained tokens."""
    out, cur = [], []
    for i, on in zip(ids, trained):
        if on:
            cur.append(i)
        elif cur:
            out.append(tokenizer.decode(cur)), cur.clear()
    if cur:
        out.append(tokenizer.decode(cur))
    return out


@pytest.mark.parametrize("template,eot", [(CHATML, "<|im_end|>"), (LLAMA3, "<|eot_id|>"), (PLAIN, "</s>")])
def test_trained_tokens_are_the_assistant_turns_and_their_end(tok, template, eot):
    tok.chat_template = template
    r = render_with_mask(tok, CONV, "assistant")
    assert r.method == "prefix"
    assert _runs(r.ids, r.trained, tok) == ["You are kind." + eot, "And he says to them" + eot]
    untrained = tok.decode([i for i, on in zip(r.ids, r.trained) if not on])
    for m in CONV:
        if m["role"] != "assistant":
            assert m["content"] in untrained
    last = render_with_mask(tok, CONV, "last")
    assert _runs(last.ids, last.trained, tok) == ["And he says to them" + eot]
    assert all(render_with_mask(tok, CONV, "all").trained)


def test_a_template_that_is_not_prefix_stable_falls_back_to_search(tok):
    # the last message is rendered differently (no end marker), as some templates do for generation
    tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
                         "{% if not loop.last %}{{ '<|im_end|>\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<|im_end|>\n<|im_start|>assistant\n' }}{% endif %}")
    r = render_with_mask(tok, CONV, "assistant")
    assert r.method == "search"
    assert _runs(r.ids, r.trained, tok) == ["You are kind.<|im_end|>", "And he says to them"]


SHAPES = {
    "messages.jsonl": [{"messages": [{"role": "user", "content": "Thou art kind."},
                                     {"role": "assistant", "content": "You are kind."}]}],
    "sharegpt.jsonl": [{"conversations": [{"from": "human", "value": "Thou art kind."},
                                          {"from": "gpt", "value": "You are kind."}]}],
    "alpaca.jsonl": [{"instruction": "Thou art", "input": "kind.", "output": "You are kind."}],
    "pc.jsonl": [{"prompt": "Thou art kind.", "completion": "You are kind."}],
}


def test_every_data_shape_gives_the_same_conversation(tmp_path):
    cfg = build_config({"task": "sft"})
    got = {}
    for name, rows in SHAPES.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        got[name] = read_conversations(str(tmp_path / name), cfg)
    want = [[{"role": "user", "content": "Thou art kind."}, {"role": "assistant", "content": "You are kind."}]]
    assert got["messages.jsonl"] == got["sharegpt.jsonl"] == got["pc.jsonl"] == want
    assert got["alpaca.jsonl"] == [[{"role": "user", "content": "Thou art\n\nkind."},
                                    {"role": "assistant", "content": "You are kind."}]]
    # csv: the messages column as JSON text; parquet keeps the lists
    import pandas as pd
    pd.DataFrame({"messages": [json.dumps(SHAPES["messages.jsonl"][0]["messages"])]}).to_csv(tmp_path / "m.csv")
    assert read_conversations(str(tmp_path / "m.csv"), cfg) == want
    pd.DataFrame(SHAPES["messages.jsonl"]).to_parquet(tmp_path / "m.parquet")
    assert read_conversations(str(tmp_path / "m.parquet"), cfg) == want


def test_a_list_in_a_text_column_names_the_chat_formats(tmp_path):
    (tmp_path / "chat.jsonl").write_text(json.dumps(SHAPES["messages.jsonl"][0]) + "\n")
    cfg = build_config({"task": "causal-lm", "data": {"text_column": "messages"}})
    from lmforge.data.corpus import read_corpus
    with pytest.raises(LmforgeError, match="task: sft") as e:
        read_corpus(str(tmp_path / "chat.jsonl"), cfg)
    assert "holds a list, not text" in e.value.message
    with pytest.raises(LmforgeError, match="role 'robot'"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"messages": [{"role": "robot", "content": "x"}]}) + "\n")
        read_conversations(str(tmp_path / "bad.jsonl"), build_config({"task": "sft"}))


@pytest.fixture(scope="module")
def tiny_chat_model(tok, tmp_path_factory):
    """A 2-layer GPT-2 folder with the test tokenizer and ChatML."""
    from transformers import GPT2Config, GPT2LMHeadModel
    d = tmp_path_factory.mktemp("tiny-chat")
    tok.chat_template = CHATML
    tok.pad_token = tok.eos_token
    tok.save_pretrained(d)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=256,
                               resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, bos_token_id=tok.eos_token_id,
                               eos_token_id=tok.eos_token_id)).save_pretrained(d)
    return d


def test_packed_block_loss_is_the_sum_of_its_conversations(tok, tiny_chat_model):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_model).eval()
    t = AutoTokenizer.from_pretrained(tiny_chat_model)
    convs = [CONV, CONV[1:3], [{"role": "user", "content": "unto them"}, {"role": "assistant", "content": "to them"}]]
    enc = sft.encode_conversations(convs, t, 256, "assistant")
    packed = sft.to_rows(enc, 256, "pack")
    assert len(packed) == 1  # all three fit one block
    loss = CausalLMLoss(attention="position_ids", chunked=False)
    with torch.no_grad():
        together = float(loss(model, make_collate(t.pad_token_id, "pack")(packed.take([0]))))
        alone = sum(float(CausalLMLoss(attention="attention_mask", chunked=False)(
            model, make_collate(t.pad_token_id, "truncate")([row]))) for row in sft.to_rows(enc, 256, "truncate").rows)
    assert together == pytest.approx(alone, rel=1e-5)
    batch = make_collate(t.pad_token_id, "pack")(packed.take([0]))
    assert batch["n_items"] == sum(sum(x[1:]) for x in enc.trained)  # exactly the trained tokens are targets


def _chat_jsonl(path, n: int, with_reply: bool = True):
    rows = []
    for i in range(n):
        msgs = [{"role": "user", "content": f"Thou art kind {i % 7}."}]
        if with_reply:
            msgs.append({"role": "assistant", "content": f"You are kind {i % 7}."})
        rows.append({"messages": msgs})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _sft_config(data, model, out, **train):
    tr = {"max_steps": 12, "learning_rate": 3e-3, "per_device_train_batch_size": 4, "seed": 1, "logging_steps": 1,
          "eval_strategy": "steps", "eval_steps": 6, "save_strategy": "no"}
    tr.update(train)
    return {"task": "sft", "model": {"name": str(model)}, "data": {"train": str(data), "block_size": 64},
            "train": tr, "output": {"output_dir": str(out)}}


def test_sft_trains_on_the_assistant_turns(tiny_chat_model, tmp_path, capsys):
    data = _chat_jsonl(tmp_path / "chat.jsonl", 80)
    res = api.train(_sft_config(data, tiny_chat_model, tmp_path / "run"), progress=False)
    m = res.metrics
    assert m["eval"]["loss"] < m["before"]["loss"] - 0.5
    assert m["eval"]["n_tokens"] > 0 and res.config.task == "sft"
    summary = json.loads((res.run_dir / "manifest.json").read_text())["data_summary"]
    assert summary["trained_tokens"] < summary["train_tokens"] and summary["mask_method"] == ["prefix"]
    # the report shows the first example with its trained tokens highlighted
    trained = [t for t, on in summary["mask_preview"] if on]
    assert trained and all(t.endswith("<|im_end|>") and t.startswith("You are kind") for t in trained)
    page = (res.run_dir / "report.html").read_text()
    assert "<mark class='trained'>You are kind" in page
    samples = [json.loads(x) for x in (res.run_dir / "log.jsonl").read_text().splitlines() if '"samples"' in x]
    assert samples and {"prompt", "completion", "reference"} <= set(samples[-1]["samples"][0])
    # the run's model answers `lmforge eval` on new conversations, over the trained tokens
    again = api.evaluate(res.run_dir, str(data), progress=False)
    assert again["loss"] < m["before"]["loss"]
    # doctor shows the trained tokens of the first example
    (tmp_path / "c.yaml").write_text(json.dumps(_sft_config(data, tiny_chat_model, tmp_path / "d")))
    assert main(["doctor", str(tmp_path / "c.yaml"), "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert "trained:" in out and "[[You are kind" in out and "<|im_end|>]]" in out


def test_a_dataset_with_nothing_to_train_on_exits_2(tiny_chat_model, tmp_path, capsys):
    data = _chat_jsonl(tmp_path / "users.jsonl", 20, with_reply=False)
    (tmp_path / "c.yaml").write_text(json.dumps(_sft_config(data, tiny_chat_model, tmp_path / "run")))
    assert main(["train", str(tmp_path / "c.yaml"), "--no-progress"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "none of the" in err and "has a token to train on" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_sft_with_lora(tiny_chat_model, tmp_path):
    data = _chat_jsonl(tmp_path / "chat.jsonl", 40)
    cfg = _sft_config(data, tiny_chat_model, tmp_path / "run", learning_rate=1e-2)
    cfg["peft"] = {"r": 4, "alpha": 8, "target_modules": ["c_attn"]}
    res = api.train(cfg, progress=False)
    assert (res.run_dir / "adapter" / "adapter_config.json").exists()
    assert res.metrics["eval"]["loss"] < res.metrics["before"]["loss"]


def test_chat_answers_two_turns_through_a_pipe(tiny_chat_model, tmp_path):
    import io
    import subprocess
    import sys

    from lmforge.tasks import causal_lm
    from lmforge.tasks.generation import generate_texts
    out = io.StringIO()
    msgs = api.chat(tiny_chat_model, input_stream=io.StringIO("Thou art kind.\n/system Be brief.\nunto them\n"),
                    output=out, sampling=SamplingParams(max_new_tokens=8))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant"] and msgs[0]["content"] == "Be brief."
    model, tok = causal_lm.TASK.load_for_use(tiny_chat_model)
    want = generate_texts(model, tok, [msgs[:2]], SamplingParams(max_new_tokens=8))[0][0]  # greedy: the same reply
    assert msgs[2]["content"] == want and want in out.getvalue()
    expected = io.StringIO()
    two = api.chat(tiny_chat_model, input_stream=io.StringIO("Thou art kind.\nAnd he saith\n"), output=expected,
                   sampling=SamplingParams(max_new_tokens=6))
    assert [m["role"] for m in two] == ["user", "assistant", "user", "assistant"]
    p = subprocess.run([sys.executable, "-m", "lmforge.cli", "chat", str(tiny_chat_model), "--max-new-tokens", "6"],
                       input="Thou art kind.\nAnd he saith\n", capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout == expected.getvalue()  # both replies streamed, each followed by a newline


def test_openai_client_gets_a_completion_and_a_stream(tiny_chat_model):
    openai = pytest.importorskip("openai")
    from test_serve import Live

    from lmforge.tasks import causal_lm
    from lmforge.tasks.generation import generate_texts
    live = Live(tiny_chat_model)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{live.port}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [tiny_chat_model.name]
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Thou art kind."}]
        res = client.chat.completions.create(model="x", messages=messages, max_tokens=8, seed=1)
        model, tok = causal_lm.TASK.load_for_use(tiny_chat_model)
        want = generate_texts(model, tok, [messages], SamplingParams(max_new_tokens=8))[0][0]  # greedy, as the server is
        assert res.choices[0].message.role == "assistant" and res.choices[0].message.content == want
        assert res.usage.completion_tokens > 0 and res.usage.prompt_tokens > 5
        pieces = [c.choices[0].delta.content or "" for c in
                  client.chat.completions.create(model="x", messages=messages, max_tokens=8, stream=True)]
        assert "".join(pieces) == want and len(pieces) >= 3  # role, pieces..., the end
        with pytest.raises(openai.UnprocessableEntityError):  # a 4xx, never a 500
            client.chat.completions.create(model="x", messages=[{"role": "robot", "content": "x"}])
    finally:
        live.stop()


def test_batched_greedy_generation_equals_one_at_a_time(tiny_chat_model):
    from lmforge.tasks import causal_lm
    from lmforge.tasks.generation import generate_greedy_batched, generate_texts
    model, tok = causal_lm.TASK.load_for_use(tiny_chat_model)
    prompts = ["thou", "And he saith unto them that the", "kind", "old english rewrite of a verse"] + \
        [[{"role": "user", "content": "Thou art kind."}], CONV[:4]]
    one = [generate_texts(model, tok, [p], SamplingParams(max_new_tokens=10))[0][0] for p in prompts]
    assert generate_greedy_batched(model, tok, prompts, max_new_tokens=10, batch_size=4) == one
    assert generate_greedy_batched(model, tok, prompts, max_new_tokens=10, batch_size=1) == one


def test_eval_generate_scores_exact_match_and_chrf(tiny_chat_model, tmp_path, capsys):
    import sacrebleu

    from lmforge.tasks import causal_lm
    from lmforge.tasks.generation import generate_texts
    run = api.train(_sft_config(_chat_jsonl(tmp_path / "chat.jsonl", 40), tiny_chat_model, tmp_path / "run",
                                max_steps=4, eval_strategy="no"), progress=False).run_dir
    model, tok = causal_lm.TASK.load_for_use(run / "model")
    users = ["Thou art kind.", "And he saith unto them", "unto them"]
    own = [generate_texts(model, tok, [[{"role": "user", "content": u}]], SamplingParams(max_new_tokens=8))[0][0] for u in users]
    refs = [own[0], own[1], "something else entirely"]  # two answers the model gives, one it does not
    rows = [{"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": r}]}
            for u, r in zip(users, refs)]
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = api.evaluate(run, str(tmp_path / "eval.jsonl"), progress=False, generate=True, max_new_tokens=8)
    assert m["exact_match"] == pytest.approx(2 / 3) and m["n_generated"] == 3
    assert m["chrf"] == pytest.approx(sacrebleu.corpus_chrf(own, [refs]).score)
    assert m["loss"] > 0 and m["n_tokens"] > 0  # the loss over the references' tokens, as the run trained
    assert main(["eval", str(run), "--data", str(tmp_path / "eval.jsonl"), "--generate",
                 "--max-new-tokens", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["chrf"] == pytest.approx(m["chrf"])
    assert main(["eval", str(run), "--data", str(tmp_path / "eval.jsonl"), "--generate", "--max-new-tokens", "8"]) == 0
    table = capsys.readouterr().out
    assert table.count("chrf") == 1 and "answer:" in table  # each metric once, then the generations
    # a base causal LM evaluated as sft on conversations (the "before" of a fine-tune)
    base = api.evaluate(tiny_chat_model, str(tmp_path / "eval.jsonl"), progress=False, generate=True,
                        max_new_tokens=8, task="sft")
    assert base["n_generated"] == 3 and base["loss"] > 0


GEN_CHATML = ("{% for message in messages %}{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}"
              "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
              "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}"
              "{% endfor %}")


def test_a_token_straddling_the_template_and_an_indented_reply_is_trained():
    """A code reply that starts with a newline and indentation: byte-level BPE merges it with the template's
    newline into one token. That token carries the reply's first characters, so it is trained, as
    transformers' return_assistant_tokens_mask (and TRL) do; the rest of the mask is unchanged."""
    texts = ["<|im_start|>assistant\n\n\n    x = 1\n    y = 2<|im_end|>\n"] * 200 + ["def f():\n\n\n    return 1"] * 100
    t = train_tokenizer("byte-level-bpe", texts=texts, vocab_size=400, min_frequency=1,
                        special_tokens=["<|im_start|>", "<|im_end|>", "</s>"]).tokenizer
    t.chat_template = CHATML
    for reply in ("\n\n    x = 1", "plain words"):
        conv = [{"role": "user", "content": "write it"}, {"role": "assistant", "content": reply}]
        r = render_with_mask(t, conv)
        ref = t.apply_chat_template(conv, chat_template=GEN_CHATML, tokenize=True, return_dict=True,
                                    return_assistant_tokens_mask=True)
        assert r.ids == list(ref["input_ids"])
        assert r.trained == [bool(x) for x in ref["assistant_masks"]], reply
    r = render_with_mask(t, [{"role": "user", "content": "w"}, {"role": "assistant", "content": "\n\n    x = 1"}])
    straddle = [t.decode([i]) for i, on in zip(r.ids, r.trained) if on]
    assert straddle[0].startswith("\n\n\n")  # the template's newline and the reply's two, one trained token


def test_openai_stop_is_honoured_streamed_and_not_and_bad_fields_are_4xx(tiny_chat_model):
    openai = pytest.importorskip("openai")
    import urllib.error
    import urllib.request

    from test_serve import Live

    from lmforge.tasks import causal_lm
    from lmforge.tasks.generation import generate_texts
    messages = [{"role": "user", "content": "Thou art kind."}]
    model, tok = causal_lm.TASK.load_for_use(tiny_chat_model)
    sampling = dict(max_tokens=16, temperature=1.0, seed=3)  # sampled, so the reply has a middle to stop at
    full = generate_texts(model, tok, [messages], SamplingParams(max_new_tokens=16, temperature=1.0, seed=3))[0][0]
    at = next(k for k in range(2, len(full) - 2) if full.index(full[k:k + 2]) == k)
    stop = full[at:at + 2]
    want = full[:at]
    live = Live(tiny_chat_model)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{live.port}/v1", api_key="unused", max_retries=0)
        res = client.chat.completions.create(model="x", messages=messages, stop=[stop, "@@never@@"], **sampling)
        assert res.choices[0].message.content == want and res.choices[0].finish_reason == "stop"
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="x", messages=messages, stop=stop, stream=True, **sampling)]
        assert "".join(pieces) == want
        plain = client.chat.completions.create(model="x", messages=messages, stop="@@never@@", **sampling)
        assert plain.choices[0].message.content == full  # a stop string that never comes changes nothing
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(model="x", messages=messages, stop=["a", "b", "c", "d", "e"])
        for stream in (False, True):  # a lone surrogate in `model`: a 4xx JSON body, never a 500 or a cut stream
            body = ('{"model": "\\ud800", "stream": %s, "messages": [{"role": "user", "content": "x"}]}'
                    % str(stream).lower()).encode()
            req = urllib.request.Request(f"http://127.0.0.1:{live.port}/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=60)
            assert e.value.code == 422 and "surrogate" in e.value.read().decode()
    finally:
        live.stop()


def test_chat_repl_skips_non_utf8_lines_has_help_and_drops_old_turns_to_fit(tiny_chat_model):
    line = ("thou art kind and he saith unto them old english " * 4).strip()
    stdin = b"caf\xe9 latin-1\n/help\n" + (line.encode() + b"\n") * 6 + b"/exit\n"
    p = subprocess.run([sys.executable, "-m", "lmforge.cli", "chat", str(tiny_chat_model), "--max-new-tokens", "8"],
                       input=stdin, capture_output=True, timeout=180)
    out, err = p.stdout.decode(), p.stderr.decode()
    assert p.returncode == 0, err[-2000:]
    assert "not UTF-8 text, so it was skipped" in out and "Traceback" not in err
    assert "/reset (forget the conversation)" in out  # /help
    assert "outgrew the model's context: dropped its" in out  # 256 positions: six long turns do not fit
