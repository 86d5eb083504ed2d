"""The study's MLflow parent run: created once per study, and the reports workers leave on it.

One parent run per study; one child run per trial (``mlflow.parentRunId``). The parent holds the
best value and trial, a CSV of all trials, and Optuna's plots of the study as PNG.

One job past 300 lines: the parent run's lookup, its best-trial tags, the trials CSV and the
plots are all writes to that one run.
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

from pipeline.config_load import mask_secrets
from pipeline.errors import ConfigError
from pipeline.run_log import RunLogger, start_run
from pipeline.study.choice import check_recorded
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import (
    CREATED_ATTR,
    PARENT_ATTR,
    RUN_ATTR,
    best_trial,
    finished_trials,
    pareto_front,
    trial_counts,
)
from pipeline.tracking import get_client, open_store_for_reading

log = logging.getLogger(__name__)


def check_kept(study: optuna.Study | None, uri: str) -> None:
    """A resumed study's MLflow runs are in this store, checked before the store is opened for
    writing (which would create a fresh, empty one where it was deleted): a study whose store
    was lost or replaced would otherwise go on in a new one, its earlier trials' runs gone."""
    run_id = study.user_attrs.get(PARENT_ATTR) if study is not None else None
    if not run_id:
        return
    assert study is not None
    name = study.study_name
    then = (f"set MLFLOW_TRACKING_URI to the store study {name} ran with, or run the study "
            f"under a new name (name: in its file); `python -m pipeline recover` rebuilds a "
            f"study from its runs, not runs from a study")
    try:
        client = open_store_for_reading(uri)
    except ConfigError as exc:
        n = len(study.trials)
        raise ConfigError(f"study {name} ({n} trial{'s' if n != 1 else ''}) cannot resume: "
                          f"{exc}") from None
    try:
        client.get_run(run_id)
    except Exception:
        raise ConfigError(f"study {name}: its MLflow parent run {run_id} is not in the store "
                          f"{mask_secrets(uri)} (replaced, or not the store it ran with); "
                          f"{then}") from None


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
                           "objective": objectives_text(defn),
                           "dataset": defn.base.data.name,
                           MLFLOW_RUN_NOTE: f"Study `{defn.name}`: {defn.spec.description}",
                       })
    study.set_user_attr(PARENT_ATTR, run_id)
    client.log_text(run_id, defn.text, "study.yaml")
    return run_id


def parent_run_name(defn: StudyDefinition, best: optuna.trial.FrozenTrial | None,
                    front: list[optuna.trial.FrozenTrial]) -> str:
    """The value first: the runs table's name column shows about 20 characters."""
    if defn.multi_objective:
        return f"Pareto front: {len(front)} trials · study {defn.name}"
    if best is None:
        return f"study {defn.name}"
    short = defn.metrics[0].split("/", 1)[-1]
    return f"best {short} {best.value:.4g} · trial {best.number} · study {defn.name}"


def objectives_text(defn: StudyDefinition) -> str:
    return ", ".join(f"{o.direction} {o.metric}" for o in defn.objectives)


def report(study: optuna.Study, run_id: str, uri: str, defn: StudyDefinition) -> None:
    """Best value, trial counts, a markdown summary, a CSV of all trials and Optuna's plots on
    the parent run; the tag ``best=true`` on the best trial's run (and on no other), or, in a
    multi-objective study, ``pareto=true`` on the front's runs (moved as the front changes).

    Every worker (and every machine) reports when it stops. A report older than the one already
    there (a worker that stopped first but was slow to draw its plots) is skipped rather than
    overwrite it. Two workers that stop together can both pass that check and write in either
    order, so a worker whose report turns out older than the study once written reports again:
    the last report written counts every trial that had finished before it. Counts are tags,
    not metrics: bookkeeping stays out of the metric charts.
    """
    written = report_once(study, run_id, uri, defn)
    while written is not None and written < len(finished_trials(study)):
        written = report_once(study, run_id, uri, defn)


def report_once(study: optuna.Study, run_id: str, uri: str, defn: StudyDefinition) -> int | None:
    """``report``'s one pass: the finished trials it counted, or None when a report counting
    more was already there."""
    counts = trial_counts(study)
    n_finished = counts["complete"] + counts["pruned"]
    best = best_trial(study)
    front = pareto_front(study)
    tags: dict[str, Any] = {f"n_{k}": v for k, v in counts.items()}
    tags["n_finished"] = n_finished
    if best is not None:
        tags.update(best_trial=best.number, best_run_id=best.user_attrs.get(RUN_ATTR, ""),
                    best_value=f"{best.value:.6g}")
    if defn.multi_objective:
        tags.update(n_pareto=len(front), pareto_trials=" ".join(str(t.number) for t in front))
    table = study.trials_dataframe().to_csv(index=False)
    plots = study_plots(study, defn)  # seconds: drawn before the check below, not after it
    client = get_client(uri)
    with contextlib.suppress(Exception):  # a picture must never fail a study's report
        plots["study_summary"] = summary_figure(study, defn, client)

    parent = client.get_run(run_id)
    if int(parent.data.tags.get("n_finished", -1)) > n_finished:
        return None
    logger = RunLogger(client, run_id)
    experiment = parent.info.experiment_id
    if best is not None:
        logger.log_metrics({"best_value": float(best.value)},  # type: ignore[arg-type]
                           step=n_finished)
        try:  # a trial whose run contradicts Optuna is not marked best
            check_recorded(best, defn, client)
        except Exception as exc:
            tags["best_check"] = f"best=true not moved: {exc}"
        else:
            mark_runs(client, experiment, run_id, "best", [tags["best_run_id"]])
    if defn.multi_objective:
        mark_runs(client, experiment, run_id, "pareto",
                  [t.user_attrs.get(RUN_ATTR, "") for t in front])
    tags[MLFLOW_RUN_NOTE] = summary_markdown(study, defn, counts)
    logger.set_tags(tags)
    # the runs table's first row: trials are nested (collapsed) under it, so the best trial
    # shows here without a click
    client.update_run(run_id, name=parent_run_name(defn, best, front))
    logger.log_text(table, "trials.csv")
    for name, fig in plots.items():
        if name.endswith(".html"):  # a plotly figure: an interactive page
            log_plotly(client, run_id, fig, f"plots/{name}")
        else:
            logger.log_figure(fig, f"plots/{name}.png")
    return n_finished


def log_plotly(client: Any, run_id: str, fig: Any, artifact_file: str) -> None:
    """A plotly figure as a self-contained page: plotly.js inside (3.5 MB), since MLflow's own
    log_figure links it from a CDN, which a machine without internet cannot reach."""
    import tempfile
    from pathlib import Path

    folder, name = artifact_file.rsplit("/", 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        fig.write_html(path, include_plotlyjs=True, full_html=True)
        client.log_artifact(run_id, str(path), folder)


def mark_runs(client: Any, experiment_id: str, parent_id: str, tag: str,
              current: list[str]) -> None:
    """Put the tag ``<tag>=true`` on the ``current`` runs and take it off the study's others.

    Workers of one study report at the same moment. The tag goes through log_batch, which MLflow
    retries when two writers insert the same tag at once (its set_tag fails instead, with a
    unique-key violation). The runs to untag are searched for rather than read from the parent,
    so a run tagged by a concurrent report is not left behind by the next one.
    """
    for run_id in filter(None, current):
        RunLogger(client, run_id).set_tags({tag: "true"})
    tagged = client.search_runs(
        [experiment_id],
        filter_string=f"tags.{tag} = 'true' and tags.mlflow.parentRunId = '{parent_id}'")
    for run in tagged:
        if run.info.run_id not in current:
            with contextlib.suppress(Exception):  # another worker untagged it first
                client.delete_tag(run.info.run_id, tag)


def summary_markdown(study: optuna.Study, defn: StudyDefinition, counts: dict[str, int],
                     top: int = 5) -> str:
    """The parent run's description in the MLflow UI: objectives, counts, the top trials (the
    Pareto front, for several objectives)."""
    spec = defn.spec.objective
    objectives = ", ".join(f"**{o.direction} `{o.metric}`**" for o in defn.objectives)
    lines = [
        f"## Study `{defn.name}`", "", defn.spec.description.strip(), "",
        f"Objective{'s' if defn.multi_objective else ''}: {objectives} (mean of the last "
        f"{spec.last_k} evaluations). Trials: {counts['complete']} complete, "
        f"{counts['pruned']} pruned, {counts['fail']} failed, {counts['running']} running.", "",
    ]
    if defn.constraints:
        lines += ["Constraints: " + ", ".join(f"`{c}`" for c in defn.constraints), ""]
    if defn.multi_objective:
        front = pareto_front(study)
        if front:
            lines += [f"Pareto front ({len(front)} trials, tagged `pareto = true`; "
                      f"plots/pareto_front.html):", "",
                      "| trial | " + " | ".join(defn.metrics) + " | run |",
                      "|---" * (len(defn.metrics) + 2) + "|"]
            lines += [f"| {t.number} | " + " | ".join(f"{v:.4g}" for v in t.values)
                      + f" | {t.user_attrs.get(RUN_ATTR, '')} |" for t in front]
        return "\n".join(lines)
    sign = 1.0 if spec.direction == "minimize" else -1.0
    complete = sorted((t for t in study.get_trials(deepcopy=False)
                       if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None),
                      key=lambda t: sign * float(t.value))  # type: ignore[arg-type]
    if complete:
        lines += [f"| rank | trial | {spec.metric} | run |", "|---|---|---|---|"]
        lines += [f"| {rank} | {t.number} | {t.value:.4g} | {t.user_attrs.get(RUN_ATTR, '')} |"
                  for rank, t in enumerate(complete[:top], start=1)]
        lines += ["", f"The best trial's run carries the tag `best = true` (search "
                  f"`tags.best = 'true'`). Parameter importances (plots/) come from the "
                  f"{len(complete)} complete trials only; pruned trials do not count."]
    return "\n".join(lines)


def study_plots(study: optuna.Study, defn: StudyDefinition) -> dict[str, Any]:
    """optimization_history, param_importances, parallel_coordinate, slice (as many as apply);
    with several objectives these show the first one, beside the Pareto front, drawn both as
    a PNG and as Optuna's interactive plotly page (``pareto_front.html``).

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
    kwargs: dict[str, Any] = {}
    if defn.multi_objective:
        kwargs = {"target": lambda t: t.values[0], "target_name": defn.metrics[0]}
        plotters["pareto_front"] = ovm.plot_pareto_front
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    out: dict[str, Any] = {}
    if not complete:
        return out
    for name, plot in plotters.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" warnings from optuna
                ax = plot(study, **({} if name == "pareto_front" else kwargs))
                fig = ax.flat[0].figure if hasattr(ax, "flat") else ax.figure
                fig.set_size_inches(10, 6)
                # long parameter names ("model.leaky_slope") were cut at the left edge
                fig.tight_layout()
            out[name] = fig
        except Exception as exc:  # too few trials or parameters for this plot
            log.info("skipped plot %s: %s", name, exc)
    # the same plots as Optuna draws them with plotly: pages to hover, zoom and filter
    import optuna.visualization as ov

    interactive = {name: getattr(ov, plot.__name__) for name, plot in plotters.items()}
    for name, plot in interactive.items():
        if name not in out:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out[f"{name}.html"] = plot(study, **({} if name == "pareto_front" else kwargs))
        except Exception as exc:  # plotly missing
            log.info("skipped plot %s.html: %s", name, exc)
    return out


def summary_figure(study: optuna.Study, defn: StudyDefinition, client: Any) -> Figure:
    """One picture of the study: each trial's (first) objective, complete and pruned marked
    apart; the best trial's (or the front's first member's) final samples; the parameters'
    importances."""
    import tempfile

    import matplotlib.pyplot as plt

    metric, direction = defn.metrics[0], defn.directions[0]
    fig, (history, picture, importance) = plt.subplots(1, 3, figsize=(16, 5),
                                                       width_ratios=[1.2, 1, 1])
    states = optuna.trial.TrialState
    for state, style in ((states.COMPLETE, dict(marker="o", color="tab:blue")),
                         (states.PRUNED, dict(marker="o", facecolors="none",
                                              edgecolors="tab:gray"))):
        points = [(t.number, t.values[0] if t.values else t.intermediate_values[
            max(t.intermediate_values)]) for t in study.get_trials(deepcopy=False, states=(state,))
            if t.values or t.intermediate_values]
        if points:
            history.scatter(*zip(*points, strict=True), label=f"{state.name.lower()} "
                            f"({len(points)})", **style)  # type: ignore[arg-type]
    failed = study.get_trials(deepcopy=False, states=(states.FAIL,))
    history.set_title(f"{direction} {metric} per trial ({len(failed)} failed, not shown)",
                      fontsize=10)
    history.set_xlabel("trial")
    history.set_ylabel(metric)
    history.grid(alpha=0.3)
    if history.collections:  # no legend to draw (and a warning) before any trial has a value
        history.legend(fontsize=8)

    front = pareto_front(study)
    picture.axis("off")
    if front:
        lead = front[0]
        picture.set_title(f"trial {lead.number}: final samples", fontsize=10)
        with tempfile.TemporaryDirectory() as tmp:
            try:
                png = client.download_artifacts(lead.user_attrs.get(RUN_ATTR, ""),
                                                "samples/final.png", tmp)
                picture.imshow(plt.imread(png))
            except Exception:
                picture.text(0.5, 0.5, "no final picture", ha="center")

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            weights = optuna.importance.get_param_importances(
                study, target=(lambda t: t.values[0]) if defn.multi_objective else None)
        names = list(weights)[::-1]
        importance.barh(names, [weights[n] for n in names])
        importance.set_title(f"importance for {metric} (complete trials)", fontsize=10)
    except Exception:  # fewer than two complete trials that differ
        importance.axis("off")
        importance.text(0.5, 0.5, "importances need two complete trials", ha="center")
    fig.suptitle(f"study {defn.name}", fontsize=12)
    fig.tight_layout()
    return fig
