"""Unwritable or full disks: one line, exit 2, the last good checkpoint intact (a patched writer stands in for a
full disk, as CI has no small tmpfs to fill)."""

from __future__ import annotations

import errno
import json

import pytest
from conftest import cls_config, toy_sentiment_rows, write_csv

from lmforge import api
from lmforge.cli import main
from lmforge.errors import LmforgeError


@pytest.mark.parametrize("where", ["/proc/lmforge-run", "/sys/lmforge-run"])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_work(where, capsys):
    assert main(["train", "--output.output_dir", where, "--train.max_steps", "1"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write in /{where.split('/')[1]}" in err and "Traceback" not in err


def _cfg(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "t.csv", toy_sentiment_rows(64, 1))
    return cls_config(train, train, tmp_path / "run", tiny_bert, max_steps=6, per_device_train_batch_size=8,
                      save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2)


@pytest.mark.parametrize("failing", ["checkpoint", "final model"])
def test_a_full_disk_mid_run_is_one_line_and_keeps_the_last_good_checkpoint(failing, tmp_path, tiny_bert,
                                                                            monkeypatch, one_thread):
    from safetensors import SafetensorError

    from lmforge.train import checkpoint, run as run_mod
    real_ckpt, real_save = checkpoint.save_checkpoint, run_mod.save_outputs
    calls = {"n": 0}

    def full_ckpt(folder, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder))
        return real_ckpt(folder, *a, **k)

    def full_save(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              "message: \"No space left on device\" })")
    if failing == "checkpoint":
        monkeypatch.setattr(checkpoint, "save_checkpoint", full_ckpt)
    else:
        monkeypatch.setattr(run_mod, "save_outputs", full_save)
    with pytest.raises(LmforgeError) as e:
        api.train(_cfg(tmp_path, tiny_bert), progress=False)
    assert "No space left on device" in e.value.message and "--resume" in e.value.hint
    good = tmp_path / "run" / "checkpoints" / "step-2"
    assert str(good) in e.value.hint or failing == "final model"
    assert (good / "trainer_state.json").exists() and json.loads((good / "trainer_state.json").read_text())["step"] == 2
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "No space left" in manifest["error"]
    # once there is room again, --resume finishes the run from that checkpoint
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_ckpt)
    monkeypatch.setattr(run_mod, "save_outputs", real_save)
    res = api.train(_cfg(tmp_path, tiny_bert), resume=True, progress=False)
    assert (res.run_dir / "model" / "model.safetensors").exists()
