"""What a run leaves to read: metrics.json, loss.png, report.html and the model card.

    lmforge report runs/sentiment-minilm              # rebuild report.html (and loss.png)
    lmforge report runs/a runs/b -o compare.html      # one page comparing several runs

The HTML report is one self-contained file (inline CSS, PNG plots as base64 data URIs): it
opens from disk in any browser, with no server and no network.
"""

import importlib

# The names below load on first use (PEP 562): `lmforge runs` reads run folders through report.runs without the
# HTML report's plotting and model-running imports (matplotlib, torch).
_WHERE = {"model_card": "card", "build_reports": "compare", "write_comparison": "compare",
          "misclassified": "html", "write_html_report": "html", "length_histogram": "plots", "plot_losses": "plots",
          "best_metric_name": "runs", "format_duration": "runs", "list_runs": "runs", "run_status": "runs",
          "write_metrics": "runs"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["best_metric_name", "build_reports", "format_duration", "length_histogram", "list_runs", "misclassified",
           "model_card", "plot_losses", "run_status", "write_comparison", "write_html_report", "write_metrics"]
