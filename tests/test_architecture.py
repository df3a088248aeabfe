"""The shape of the code: one-way layers and no import cycles (import-linter contracts in pyproject.toml),
no branches on a task's name outside tasks/, short functions, and lmforge's own imports at the top of files.

These fail when a change imports upwards, closes a cycle, or lets knowledge of a task leak out of tasks/.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(src: Path) -> subprocess.CompletedProcess:
    if not LINT.exists():
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    return subprocess.run([str(LINT), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=src.parent,
                          env={"PYTHONPATH": str(src), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=300)


def _arch_stats():
    spec = importlib.util.spec_from_file_location("arch_stats", ROOT / "benchmarks" / "arch_stats.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_layer_and_cycle_contracts_hold():
    res = _lint(ROOT / "src")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "2 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("module,line", [
    ("fs.py", "from lmforge import api  # an upward import"),
    ("data/builtin.py", "from lmforge.data import corpus  # a cycle: corpus imports builtin"),
    ("models/zoo.py", "from lmforge.models import lora  # a cycle: lora imports zoo"),
])
def test_contracts_fail_on_an_upward_import_or_a_cycle(tmp_path, module, line):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "lmforge", src / "lmforge", ignore=shutil.ignore_patterns("__pycache__"))
    target = src / "lmforge" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    res = _lint(src)
    assert res.returncode != 0 and "BROKEN" in res.stdout, res.stdout[-2000:]


def test_no_task_name_branches_no_long_functions_few_inner_imports():
    _, _, inner, long_fns, branches = _arch_stats().collect()
    assert branches == [], "ask the Task instead of comparing its name:\n" + "\n".join(branches)
    assert long_fns == [], "split these by responsibility:\n" + "\n".join(long_fns)
    assert len(inner) <= 10, "own-module imports inside functions:\n" + "\n".join(inner)


def test_no_wide_tuples_and_each_data_rule_in_one_place():
    """Functions return dataclasses, not tuples of more than 3; the block-size default, the hold-out split and the
    row caps are applied only by their own modules (models/load.py, data/pipeline.py)."""
    stats = _arch_stats()
    modules = stats.collect()[0]
    tuples, rules = stats.shape_figures(modules)
    assert tuples == [], "return a dataclass instead:\n" + "\n".join(tuples)
    for rule, places in rules.items():
        assert places == [], f"the {rule} rule applied outside its module:\n" + "\n".join(places)


def test_registry_and_config_name_the_same_tasks():
    from lmforge.config import TaskName
    from lmforge.tasks import TASKS
    assert set(typing.get_args(TaskName)) == set(TASKS)
    for name, task in TASKS.items():
        assert task.name == name and task.auto_class is not None and task.endpoint.startswith("/v1/")
        assert task.data_kind in ("table", "corpus", "conversations", "pairs", "prompts", "retrieval")
        assert task.starter["model"] and task.starter["data"] and task.try_command


def test_task_of_a_bare_model_folder_comes_from_its_architecture(tmp_path):
    import json

    from lmforge.tasks import task_of
    for arch, task in (("BertForSequenceClassification", "classification"), ("GPT2LMHeadModel", "causal-lm"),
                       ("LlamaForCausalLM", "causal-lm"), ("RobertaForMaskedLM", "masked-lm")):
        d = tmp_path / arch
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"architectures": [arch]}))
        assert task_of(d).name == task
