"""Optuna's own plots of a study, rendered to PNG for the study's MLflow run."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import optuna

from pipeline.plots import figure_png

log = logging.getLogger(__name__)


def study_plots(study: optuna.Study) -> dict[str, bytes]:
    """optimization_history, param_importances, parallel_coordinate, slice (as many as apply).

    Importances need at least two complete trials that differ; a plot that cannot be drawn yet
    is skipped, not an error.
    """
    from optuna.visualization import matplotlib as ovm

    plotters: dict[str, Callable] = {
        "optimization_history": ovm.plot_optimization_history,
        "param_importances": ovm.plot_param_importances,
        "parallel_coordinate": ovm.plot_parallel_coordinate,
        "slice": ovm.plot_slice,
    }
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    out: dict[str, bytes] = {}
    if not complete:
        return out
    for name, plot in plotters.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings from optuna
                ax = plot(study)
            fig = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
            fig.set_size_inches(10, 6)
            out[name] = figure_png(fig)
        except Exception as exc:  # too few trials or parameters for this plot
            log.info("skipped plot %s: %s", name, exc)
    return out
