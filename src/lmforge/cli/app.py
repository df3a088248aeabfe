"""The Typer app every command module registers on, and the lazy handle on lmforge.api.

Its own module so that `cli/__init__.py` and `cli/configs_and_runs.py` both import it without importing
each other (no import cycle inside the package).
"""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=False, pretty_exceptions_enable=False,
                  help="Fine-tune and train language models: classification, causal LM, masked LM, SFT, DPO.")


def _api():
    # lazy, and the only import of lmforge.api in the CLI: it loads torch and transformers (seconds), which
    # `lmforge --help` and a mistyped command must not wait for
    from .. import api
    return api


def _catalog():
    # lazy too, and light: what needs no model (models, datasets, runs, init, config keys), without torch
    from .. import catalog
    return catalog
