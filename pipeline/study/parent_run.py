"""The study's MLflow parent run: created once per study, and the reports workers leave on it.

One parent run per study; one child run per trial (``mlflow.parentRunId``). The parent holds the
best value and trial, a CSV of all trials, and Optuna's plots of the study as PNG.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from matplotlib.figure import Figure
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from pipeline.study.spec import StudyDefinition
from pipeline.study.store import CREATED_ATTR, PARENT_ATTR, RUN_ATTR, best_trial
from pipeline.tracking import RunLogger, get_client, start_run

log = logging.getLogger(__name__)


def ensure(study: optuna.Study, defn: StudyDefinition, uri: str, storage: str, *,
           created: bool, wait: float = 120.0) -> str:
    """The study's MLflow run: created once, reused when the study is resumed.

    Only the process that created the study creates the run. When machines start a new study
    together, the others wait for its id to appear in the study, up to ``wait`` seconds after
    the study was created, so a study never ends up with two parent runs; after that (its
    creator died before making the run) they make it themselves, without waiting again.
    """
    client = get_client(uri)
    run_id = study.user_attrs.get(PARENT_ATTR)
    deadline = float(study.user_attrs.get(CREATED_ATTR, time.time())) + wait
    if not run_id and not created and time.time() < deadline:
        print(f"waiting for the machine that created study {defn.name} to make its MLflow run "
              f"(up to {deadline - time.time():.0f} s)", file=sys.stderr)
    while not run_id and not created and time.time() < deadline:
        time.sleep(0.5)
        run_id = study.user_attrs.get(PARENT_ATTR)
    if run_id:
        try:
            client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return str(run_id)
        except Exception:  # a different tracking store than the study was started with
            pass
    run_id = start_run(client, defn.base.tracking.experiment, run_name=f"study {defn.name}",
                       tags={
                           "optuna_study": defn.name, "optuna_storage": storage,
                           "objective": f"{defn.spec.objective.direction} "
                                        f"{defn.spec.objective.metric}",
                           "dataset": defn.base.data.name,
                           MLFLOW_RUN_NOTE: f"Study `{defn.name}`: {defn.spec.description}",
                       })
    study.set_user_attr(PARENT_ATTR, run_id)
    client.log_text(run_id, defn.text, "study.yaml")
    return run_id


def report(study: optuna.Study, run_id: str, uri: str, defn: StudyDefinition) -> None:
    """Best value, trial counts, a markdown summary, a CSV of all trials and Optuna's plots on
    the parent run; the tag ``best=true`` on the best trial's run (and on no other).

    Every worker (and every machine) reports when it stops. A report older than the one already
    there (a worker that stopped first but was slow to draw its plots) is skipped rather than
    overwrite it. Counts are tags, not metrics: bookkeeping stays out of the metric charts.
    """
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials)
              for state in optuna.trial.TrialState}
    n_finished = counts["complete"] + counts["pruned"]
    best = best_trial(study)
    tags: dict[str, Any] = {f"n_{k}": v for k, v in counts.items()}
    tags["n_finished"] = n_finished
    if best is not None:
        tags.update(best_trial=best.number, best_run_id=best.user_attrs.get(RUN_ATTR, ""),
                    best_value=f"{best.value:.6g}")
    table = study.trials_dataframe().to_csv(index=False)
    plots = study_plots(study)  # seconds: drawn before the check below, not after it

    client = get_client(uri)
    parent = client.get_run(run_id)
    if int(parent.data.tags.get("n_finished", -1)) > n_finished:
        return
    logger = RunLogger(client, run_id)
    if best is not None:
        logger.log_metrics({"best_value": float(best.value)},  # type: ignore[arg-type]
                           step=n_finished)
        mark_best(client, parent.info.experiment_id, run_id, tags["best_run_id"])
    tags[MLFLOW_RUN_NOTE] = summary_markdown(study, defn, counts)
    logger.set_tags(tags)
    logger.log_text(table, "trials.csv")
    for name, fig in plots.items():
        logger.log_figure(fig, f"plots/{name}.png")


def mark_best(client: Any, experiment_id: str, parent_id: str, current: str) -> None:
    """Put the tag ``best=true`` on the best trial's run and take it off the study's other runs.

    Workers of one study report at the same moment. The tag goes through log_batch, which MLflow
    retries when two writers insert the same tag at once (its set_tag fails instead, with a
    unique-key violation). The runs to untag are searched for rather than read from the parent,
    so a run tagged by a concurrent report is not left behind by the next one.
    """
    if current:
        RunLogger(client, current).set_tags({"best": "true"})
    tagged = client.search_runs(
        [experiment_id],
        filter_string=f"tags.best = 'true' and tags.mlflow.parentRunId = '{parent_id}'")
    for run in tagged:
        if run.info.run_id != current:
            with contextlib.suppress(Exception):  # another worker untagged it first
                client.delete_tag(run.info.run_id, "best")


def summary_markdown(study: optuna.Study, defn: StudyDefinition, counts: dict[str, int],
                     top: int = 5) -> str:
    """The parent run's description in the MLflow UI: objective, counts, the top trials."""
    spec = defn.spec.objective
    sign = 1.0 if spec.direction == "minimize" else -1.0
    complete = sorted((t for t in study.get_trials(deepcopy=False)
                       if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None),
                      key=lambda t: sign * float(t.value))  # type: ignore[arg-type]
    lines = [
        f"## Study `{defn.name}`", "", defn.spec.description.strip(), "",
        f"Objective: **{spec.direction} `{spec.metric}`** (mean of the last {spec.last_k} "
        f"evaluations). Trials: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed, {counts['running']} running.", "",
    ]
    if complete:
        lines += [f"| rank | trial | {spec.metric} | run |", "|---|---|---|---|"]
        lines += [f"| {rank} | {t.number} | {t.value:.4g} | {t.user_attrs.get(RUN_ATTR, '')} |"
                  for rank, t in enumerate(complete[:top], start=1)]
        lines += ["", f"The best trial's run carries the tag `best = true` (search "
                  f"`tags.best = 'true'`). Parameter importances (plots/) come from the "
                  f"{len(complete)} complete trials only; pruned trials do not count."]
    return "\n".join(lines)


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
