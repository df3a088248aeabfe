"""The CLI answers fast: --help, a usage error, models, datasets, runs, init and config keys import neither torch
nor transformers nor datasets (measured medians in docs/results.md: about 0.3-0.7 s each on 2 cores)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "datasets", "accelerate")


@pytest.mark.parametrize("argv", [["--help"], ["nosuchcommand"], ["models"], ["datasets"], ["runs", "{tmp}"],
                                  ["init", "sft"], ["init", "classification"], ["config", "keys", "data"]])
def test_light_commands_do_not_import_torch(argv, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = ("import sys\nfrom lmforge.cli import main\nrc = main(%r)\n"
            "print('HEAVY', [m for m in %r if m in sys.modules])\n" % (argv, HEAVY))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    heavy = [line for line in p.stdout.splitlines() if line.startswith("HEAVY")][-1]
    assert heavy == "HEAVY []", (argv, heavy, p.stderr[-1000:])


def test_importing_the_cli_pulls_in_no_torch():
    p = subprocess.run([sys.executable, "-c", "import sys, lmforge.cli, lmforge.catalog; "
                        "print([m for m in %r if m in sys.modules])" % (HEAVY,)], capture_output=True, text=True)
    assert p.stdout.strip() == "[]", p.stderr[-1000:]
