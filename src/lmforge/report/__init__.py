"""What a run leaves to read: metrics.json, loss.png, report.html and the model card.

    lmforge report runs/sentiment-minilm              # rebuild report.html (and loss.png)
    lmforge report runs/a runs/b -o compare.html      # one page comparing several runs

The HTML report is one self-contained file (inline CSS, PNG plots as base64 data URIs): it
opens from disk in any browser, with no server and no network.
"""

from .card import BASE_MODELS, PIPELINE_TAGS, _base_model_facts, _dataset_names, model_card
from .compare import _config_differences, _final_metrics, _flat, build_reports, write_comparison
from .html import (CSS, MAX_MISCLASSIFIED_ROWS, _Raw, _e, _heldout_frame, _img, _num, _page, _section, _table,
                   misclassified, write_html_report)
from .plots import length_histogram, plot_losses
from .runs import _load_run, _scalar, best_metric_name, format_duration, list_runs, run_status, write_metrics

__all__ = ["BASE_MODELS", "CSS", "MAX_MISCLASSIFIED_ROWS", "PIPELINE_TAGS", "best_metric_name", "build_reports",
           "format_duration", "length_histogram", "list_runs", "misclassified", "model_card", "plot_losses",
           "run_status", "write_comparison", "write_html_report", "write_metrics"]
