"""Slower tier: the real built-in models (run with `make test-slow` or `pytest -m slow`)."""

import pytest

pytestmark = pytest.mark.slow


def test_minilm_finefood_short_finetune_beats_majority(tmp_path):
    """A short run of the default recipe on real data: better than the majority class (0.658)."""
    from lmforge import api
    res = api.train(None, overrides=["--output.output_dir", str(tmp_path / "run"), "--train.max_steps", "60",
                                     "--data.max_train_samples", "1920", "--data.max_eval_samples", "200",
                                     "--data.test", "null", "--train.eval_strategy", "no"], progress=False)
    m = res.metrics
    assert m["eval"]["accuracy"] > 0.70
    assert m["eval"]["loss"] < m["before"]["loss"]
    preds = api.predict(res.run_dir, ["absolutely delicious, my kids love it, will buy again",
                                      "stale and tasteless, a waste of money"], progress=False)
    assert [p["label"] for p in preds] == ["great", "other"]
