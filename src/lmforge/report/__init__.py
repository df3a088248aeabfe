"""What a run leaves to read: metrics.json, loss.png, report.html and the model card.

    lmforge report runs/sentiment-minilm              # rebuild report.html (and loss.png)
    lmforge report runs/a runs/b -o compare.html      # one page comparing several runs

The HTML report is one self-contained file (inline CSS, PNG plots as base64 data URIs): it
opens from disk in any browser, with no server and no network.
"""

from .card import model_card
from .compare import build_reports, write_comparison
from .html import misclassified, write_html_report
from .plots import length_histogram, plot_losses
from .runs import best_metric_name, format_duration, list_runs, run_status, write_metrics

__all__ = ["best_metric_name", "build_reports", "format_duration", "length_histogram", "list_runs", "misclassified",
           "model_card", "plot_losses", "run_status", "write_comparison", "write_html_report", "write_metrics"]
