"""End to end in a real browser: `lmforge serve` on a tiny trained model, driven by headless Chromium.

Needs Debian's chromium + chromium-driver (`.ci/run` installs them) and selenium; skipped without.
The screenshot lands in test-artifacts/ (git-ignored).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


def _selenium():
    try:
        import selenium  # noqa: F401
        return True
    except ImportError:
        return False


pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER and _selenium()),
    reason="needs chromium, chromedriver (apt-get install chromium chromium-driver) and selenium (pip)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_cls_run, tmp_path_factory):
    """The real command line, in its own process, as a user would start it."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LMFORGE_CACHE": str(tmp_path_factory.mktemp("serve-cache"))}
    log = open(tmp_path_factory.mktemp("serve-log") / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "lmforge.cli", "serve", str(tiny_cls_run), "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if json.load(r)["status"] == "ok":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.seek(0)
            proc.kill()
            pytest.fail(f"lmforge serve did not start:\n{log.read()[-3000:]}")
        time.sleep(0.3)
    yield url
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--no-first-run", "--window-size=1000,820"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def test_playground_classifies_what_the_user_types(server, browser, tiny_cls_run):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from lmforge import api

    text = "good great tasty lovely food"
    expected = api.predict(tiny_cls_run, texts=[text], progress=False)[0]
    browser.get(server + "/")
    wait = WebDriverWait(browser, 30)
    button = wait.until(EC.element_to_be_clickable((By.ID, "run")))
    assert button.text == "Classify"
    assert "classification" in browser.find_element(By.ID, "model").text

    # an empty box gets a message on the page, not a request
    button.click()
    assert "type some text" in wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#result .error"))).text

    box = browser.find_element(By.ID, "input")
    box.send_keys(text)
    button.click()
    label = wait.until(EC.visibility_of_element_located((By.ID, "label")))
    assert label.text == expected["label"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#result .bar")
    assert len(bars) == 2  # one per class, best first
    names = [b.find_element(By.CLASS_NAME, "name").text for b in bars]
    pcts = [float(b.find_element(By.CLASS_NAME, "pct").text.rstrip("%")) for b in bars]
    assert names[0] == expected["label"] and set(names) == {"neg", "pos"}
    assert pcts[0] == pytest.approx(100 * expected["score"], abs=0.051) and sum(pcts) == pytest.approx(100, abs=0.11)
    width = bars[0].find_element(By.CLASS_NAME, "fill").value_of_css_property("width")
    track = bars[0].find_element(By.CLASS_NAME, "track").value_of_css_property("width")
    assert float(width.rstrip("px")) / float(track.rstrip("px")) == pytest.approx(pcts[0] / 100, abs=0.02)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-classify.png"
    browser.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

    # a request the server refuses shows its message, and the page still works afterwards
    browser.execute_script("arguments[0].value = arguments[1]", box, "x" * 9000)  # over the 8000-character cap
    button.click()
    err = wait.until(EC.visibility_of_element_located((By.CSS_SELECTOR, "#result .error")))
    assert "at most 8000" in err.text
    box.clear()
    box.send_keys("awful stale bad")
    button.click()
    wait.until(EC.visibility_of_element_located((By.ID, "label")))
    assert browser.find_element(By.ID, "label").text in ("neg", "pos")


def test_report_opens_from_disk(browser, tiny_cls_run):
    """report.html renders with no server: every image decodes in the browser."""
    from selenium.webdriver.common.by import By
    browser.get((tiny_cls_run / "report.html").as_uri())
    images = browser.find_elements(By.TAG_NAME, "img")
    assert len(images) == 6
    for img in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 300
    titles = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert "Confusion matrix (test split)" in titles and "Environment" in titles
    ARTIFACTS.mkdir(exist_ok=True)
    browser.set_window_size(1000, 3000)
    browser.save_screenshot(str(ARTIFACTS / "report.png"))


def test_playground_streams_generation_and_fills_masks(browser, tiny_bert, tmp_path_factory, monkeypatch):
    """The generate page appends text as the pieces arrive; the fill-mask page shows candidates."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    import lmforge.tasks.generation
    from test_causal_lm import make_tiny
    from test_serve import Live, slow_pieces

    pieces = ["In ", "the ", "beginning ", "was ", "the ", "word."]
    monkeypatch.setattr(lmforge.tasks.generation, "generate_texts", slow_pieces(pieces, 0.25))
    live = Live(make_tiny(tmp_path_factory.mktemp("gpt2-browser"), "gpt2"))
    try:
        browser.get(f"http://127.0.0.1:{live.port}/")
        wait = WebDriverWait(browser, 30)
        button = wait.until(EC.element_to_be_clickable((By.ID, "run")))
        assert button.text == "Generate"
        labels = [x.text for x in browser.find_elements(By.CSS_SELECTOR, "#params label")]
        assert any("temperature" in x for x in labels) and any("top-p" in x for x in labels)
        browser.find_element(By.ID, "input").send_keys("Genesis:")
        # count how often the output text changes while it streams
        browser.execute_script("""
            window.__updates = 0;
            new MutationObserver(() => { const o = document.querySelector('#result .out');
                                         if (o && o.textContent) window.__updates++; })
              .observe(document.getElementById('result'), {subtree: true, childList: true, characterData: true});""")
        button.click()
        wait.until(lambda d: "characters" in d.find_element(By.CSS_SELECTOR, "#result .meta").text)
        assert browser.find_element(By.CSS_SELECTOR, "#result .out").text == "".join(pieces).strip()
        assert browser.find_element(By.CSS_SELECTOR, "#result .prompt").text == "Genesis:"
        assert browser.execute_script("return window.__updates") >= len(pieces) - 1  # piece by piece
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "serve-generate.png"))
    finally:
        live.stop()

    live = Live(tiny_bert)
    try:
        browser.get(f"http://127.0.0.1:{live.port}/")
        wait = WebDriverWait(browser, 30)
        button = wait.until(EC.element_to_be_clickable((By.ID, "run")))
        assert button.text == "Fill masks"
        browser.find_element(By.ID, "input").send_keys("the food was [MASK] and [MASK]")
        button.click()
        wait.until(EC.visibility_of_element_located((By.ID, "label")))
        assert len(browser.find_elements(By.CSS_SELECTOR, "#result h3")) == 2
        assert len(browser.find_elements(By.CSS_SELECTOR, "#result .bar")) == 2 * 5  # default 5 per mask
        browser.save_screenshot(str(ARTIFACTS / "serve-fill-mask.png"))
    finally:
        live.stop()


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    """test_sft's tiny GPT-2 with a trained tokenizer and ChatML (module-scoped here)."""
    import test_sft
    from transformers import GPT2Config, GPT2LMHeadModel
    import torch
    tok = test_sft.train_tokenizer("byte-level-bpe", texts=test_sft.texts(), vocab_size=400, min_frequency=1,
                                   special_tokens=test_sft.SPECIALS).tokenizer
    tok.eos_token = "</s>"
    d = tmp_path_factory.mktemp("browser-chat")
    tok.chat_template = test_sft.CHATML
    tok.pad_token = tok.eos_token
    tok.save_pretrained(d)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_layer=2, n_embd=32, n_head=2, n_positions=256,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(d)
    return d


def _set(browser, element_id, value):
    el = browser.find_element("id", element_id)
    el.clear()
    if value != "":
        el.send_keys(str(value))


@pytest.mark.parametrize("task", ["sft", "dpo", "grpo"])
def test_chat_playground_answers_through_the_chat_template(browser, chat_model, tmp_path, task):
    """sft, dpo and grpo runs get a chat view: the system prompt and the earlier turns go through the run's chat
    template (the page's answers equal lmforge's greedy generation of the same conversation), replies stream, and
    compare mode turns two sampled replies into a preference pair that the dpo task reads back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_serve import Live

    from lmforge.config import SamplingParams, build_config
    from lmforge.data.preference import read_pairs
    from lmforge.tasks import get_task
    from lmforge.tasks.generation import generate_texts

    run = tmp_path / f"{task}-run"
    shutil.copytree(chat_model, run / "model")
    (run / "config.yaml").write_text(f"task: {task}\n")
    model, tok = get_task(task).load_for_use(run / "model")

    def greedy(messages, n=12):
        return generate_texts(model, tok, [messages], SamplingParams(max_new_tokens=n))[0][0]

    live = Live(run / "model")
    try:
        browser.get(f"http://127.0.0.1:{live.port}/")
        wait = WebDriverWait(browser, 30)
        wait.until(lambda d: d.find_element(By.ID, "run").is_enabled())
        assert browser.find_element(By.ID, "run").text == "Send"
        assert browser.find_element(By.ID, "input").get_attribute("placeholder") == "Your message"
        assert task in browser.find_element(By.ID, "model").text
        _set(browser, "p_system", "You rewrite old English.")
        _set(browser, "p_temperature", 0)
        _set(browser, "p_max_tokens", 12)
        browser.execute_script("""
            window.__updates = 0;
            new MutationObserver(() => window.__updates++)
              .observe(document.getElementById('result'), {subtree: true, childList: true, characterData: true});""")
        system = {"role": "system", "content": "You rewrite old English."}
        turns = [system]
        for i, text in enumerate(["Thou art kind.", "And he saith unto them"]):
            browser.find_element(By.ID, "input").send_keys(text)
            browser.find_element(By.ID, "run").click()
            wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#result .meta")) == i + 1 and
                       "generating" not in d.find_elements(By.CSS_SELECTOR, "#result .meta")[-1].text)
            turns.append({"role": "user", "content": text})
            want = greedy(turns)
            shown = browser.find_elements(By.CSS_SELECTOR, "#result .msg.assistant .content")[-1]
            assert want.strip() and shown.get_attribute("textContent") == want  # a non-empty answer, lmforge's own
            turns.append({"role": "assistant", "content": want})
        assert [m.text for m in browser.find_elements(By.CSS_SELECTOR, "#result .msg.user .content")] == \
            ["Thou art kind.", "And he saith unto them"]
        assert browser.execute_script("return window.__updates") >= 6  # pieces arrived one by one
        assert not browser.find_elements(By.CSS_SELECTOR, "#result .error")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / f"serve-chat-{task}.png"))

        # compare mode: greedy is refused in one line on the page; sampled replies become a preference pair
        browser.find_element(By.ID, "p_compare").click()
        browser.find_element(By.ID, "input").send_keys("Thou art kind.")
        browser.find_element(By.ID, "run").click()
        assert "temperature above 0" in wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#result .error"))[0].text
        _set(browser, "p_temperature", 1.0)
        _set(browser, "p_seed", 7)
        browser.find_element(By.ID, "input").send_keys("Thou art kind.")
        browser.find_element(By.ID, "run").click()
        picks = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#result .pair button.pick"))
        replies = [e.get_attribute("textContent") for e in browser.find_elements(By.CSS_SELECTOR, "#result .pair .content")]
        picks[1].click()  # B is better
        link = wait.until(lambda d: d.find_element(By.ID, "download"))
        assert "1 preference pair" in link.text
        jsonl = browser.execute_async_script(
            "const done = arguments[0]; fetch(document.getElementById('download').href)"
            ".then(r => r.text()).then(done)")
        row = json.loads(jsonl)
        assert row["chosen"] == replies[1] and row["rejected"] == replies[0] and replies[0] != replies[1]
        assert row["prompt"][0] == system and row["prompt"][-1] == {"role": "user", "content": "Thou art kind."}
        (tmp_path / "pairs.jsonl").write_text(jsonl)
        pair = read_pairs(str(tmp_path / "pairs.jsonl"), build_config({"task": "dpo"}))[0]
        assert pair.chosen == [{"role": "assistant", "content": row["chosen"]}] and len(pair.prompt) == 6
        # "New chat" empties the conversation
        browser.find_element(By.ID, "reset").click()
        assert not browser.find_elements(By.CSS_SELECTOR, "#result .msg")
    finally:
        live.stop()


def test_playground_ranks_lines_by_embedding_similarity(browser, tiny_bert, tmp_path_factory):
    """An embedding model's page: the first line is the query, the others are ranked by cosine similarity, as
    `lmforge embed` computes it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from lmforge import api
    from lmforge.tasks.embedding import EmbedSpec, write_st_files
    from test_serve import Live

    d = tmp_path_factory.mktemp("st-folder")
    for f in tiny_bert.iterdir():
        shutil.copy2(f, d / f.name)
    write_st_files(d, EmbedSpec("mean", True, 64), 32)  # a sentence-transformers folder: an embedding model
    query, lines = "good tasty food", ["awful stale bad", "great lovely food", "the product was fine"]
    vecs = [r["embedding"] for r in api.embed(d, [query] + lines)]
    cos = [sum(a * b for a, b in zip(vecs[0], v)) for v in vecs[1:]]  # normalised vectors
    want = [lines[i] for i in sorted(range(3), key=lambda i: -cos[i])]
    live = Live(d)
    try:
        browser.get(f"http://127.0.0.1:{live.port}/")
        wait = WebDriverWait(browser, 30)
        button = wait.until(EC.element_to_be_clickable((By.ID, "run")))
        assert button.text == "Compare"
        browser.find_element(By.ID, "input").send_keys("\n".join([query] + lines))
        button.click()
        wait.until(EC.visibility_of_element_located((By.ID, "label")))
        bars = browser.find_elements(By.CSS_SELECTOR, "#result .bar")
        assert [b.find_element(By.CLASS_NAME, "name").text for b in bars] == want
        pcts = [float(b.find_element(By.CLASS_NAME, "pct").text.rstrip("%")) for b in bars]
        assert pcts[0] == pytest.approx(100 * max(0.0, max(cos)), abs=0.051)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "serve-embed.png"))
    finally:
        live.stop()
