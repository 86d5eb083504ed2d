"""The study's MLflow parent run: created once per study, and the reports workers leave on it.

One parent run per study; one child run per trial (``mlflow.parentRunId``). The parent holds the
best value and trial, a CSV of all trials, and Optuna's plots of the study as PNG.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from matplotlib.figure import Figure

from pipeline.study.spec import StudyDefinition
from pipeline.study.store import PARENT_ATTR, RUN_ATTR, best_trial
from pipeline.tracking import RunLogger, experiment_id, get_client, mask_secrets

log = logging.getLogger(__name__)


def ensure(study: optuna.Study, defn: StudyDefinition, uri: str, storage: str, *,
           created: bool, wait: float = 120.0) -> str:
    """The study's MLflow run: created once, reused when the study is resumed.

    Only the process that created the study creates the run. When machines start a new study
    together, the others wait up to ``wait`` seconds for its id to appear in the study, so a
    study never ends up with two parent runs; after that (its creator died before making the
    run) they make it themselves.
    """
    client = get_client(uri)
    run_id = study.user_attrs.get(PARENT_ATTR)
    deadline = time.monotonic() + wait
    while not run_id and not created and time.monotonic() < deadline:
        time.sleep(0.5)
        run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return str(run_id)
        except Exception:  # a different tracking store than the study was started with
            pass
    exp = experiment_id(client, defn.base.tracking.experiment)
    run = client.create_run(exp, run_name=f"study {defn.name}", tags={
        "optuna_study": defn.name, "optuna_storage": mask_secrets(storage),
        "objective": f"{defn.spec.objective.direction} {defn.spec.objective.metric}",
        "dataset": defn.base.data.name,
    })
    run_id = run.info.run_id
    study.set_user_attr(PARENT_ATTR, run_id)
    client.log_text(run_id, defn.text, "study.yaml")
    return run_id


def report(study: optuna.Study, run_id: str, uri: str) -> None:
    """Best value and trial, a CSV of all trials, and Optuna's plots, on the parent run.

    Every worker (and every machine) reports when it stops. Metrics are logged at step = the
    number of finished trials, so the newest state is the latest value in MLflow; a report
    older than the one already there (a worker that stopped first but was slow to draw its
    plots) is skipped rather than overwrite it.
    """
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials)
              for state in optuna.trial.TrialState}
    n_finished = counts["complete"] + counts["pruned"]
    best = best_trial(study)
    metrics = {f"n_{k}": float(v) for k, v in counts.items()}
    metrics["n_finished"] = float(n_finished)
    tags: dict[str, Any] = {}
    if best is not None:
        metrics["best_value"] = float(best.value)  # type: ignore[arg-type]
        metrics["best_trial"] = float(best.number)
        tags = {"best_trial": best.number, "best_run_id": best.user_attrs.get(RUN_ATTR, "")}
    table = study.trials_dataframe().to_csv(index=False)
    plots = study_plots(study)  # seconds: drawn before the check below, not after it

    client = get_client(uri)
    if client.get_run(run_id).data.metrics.get("n_finished", -1.0) > n_finished:
        return
    logger = RunLogger(client, run_id)
    logger.log_metrics(metrics, step=n_finished)
    logger.set_tags(tags)
    logger.log_text(table, "trials.csv")
    for name, fig in plots.items():
        logger.log_figure(fig, f"plots/{name}.png")


def study_plots(study: optuna.Study) -> dict[str, Figure]:
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
    out: dict[str, Figure] = {}
    if not complete:
        return out
    for name, plot in plotters.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings from optuna
                ax = plot(study)
            fig = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
            fig.set_size_inches(10, 6)
            out[name] = fig
        except Exception as exc:  # too few trials or parameters for this plot
            log.info("skipped plot %s: %s", name, exc)
    return out
