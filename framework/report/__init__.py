"""Study reports: PNG plots and one HTML page, written from a study file (read-only), and the
comparison of several studies.

- :mod:`medtune.report.plots`: the plots of every study (best so far against trials and
  time, the objective against each parameter, learning curves);
- :mod:`medtune.report.model`: the searcher's model, for model-based searchers (predicted
  against observed values with the 95 % band, parameter relevance);
- :mod:`medtune.report.replay`: the searchers of a ``[replay]`` table replayed over the
  study's tabulated values (Bertrand2019 table 2.3);
- :mod:`medtune.report.page`: ``index.html``, with those and the figures the study's task
  draws (:meth:`medtune.tasks.Task.figures`);
- :mod:`medtune.report.compare`: several studies side by side by searcher (Bertrand2019
  Fig. 2.10 across methods);
- :mod:`medtune.report.source`: what a report reads from a study file.
"""

from medtune.report.compare import MethodSummary, write_comparison
from medtune.report.model import (
    BAND_Z,
    MIN_MODEL_TRIALS,
    calibration_figure,
    model_calibration,
    model_relevance,
)
from medtune.report.page import report_folder, task_tables, write_report
from medtune.report.plots import (
    MAX_CURVE_COLOURS,
    MAX_INTEGER_CATEGORIES,
    MAX_LABEL,
    best_so_far,
    learning_curves_figure,
    parameters_figure,
    running_median,
)
from medtune.report.replay import REPLAY_FILE, StudyReplay, study_replay
from medtune.report.source import ReportError

__all__ = [
    "BAND_Z",
    "MAX_CURVE_COLOURS",
    "MAX_INTEGER_CATEGORIES",
    "MAX_LABEL",
    "MIN_MODEL_TRIALS",
    "REPLAY_FILE",
    "MethodSummary",
    "ReportError",
    "StudyReplay",
    "best_so_far",
    "calibration_figure",
    "learning_curves_figure",
    "model_calibration",
    "model_relevance",
    "parameters_figure",
    "report_folder",
    "running_median",
    "study_replay",
    "task_tables",
    "write_comparison",
    "write_report",
]
