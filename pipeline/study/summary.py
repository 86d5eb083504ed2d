"""What a sweep shows: the study-level progress line, and the summary printed at the end."""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field

import optuna

from pipeline.study.parent_run import objectives_text
from pipeline.study.spec import StudyDefinition
from pipeline.study.store import RUN_ATTR, best_trial, finished_trials, pareto_front, trial_counts
from pipeline.tracking import get_client


@dataclass
class SweepSummary:
    study_name: str
    n_finished: int
    best_trial: optuna.trial.FrozenTrial | None
    parent_run_id: str
    seconds: float
    # RUNNING when this command's workers are done: another machine's last trials (the trial
    # budget counts them, so this machine did not start more), or a dead worker's leftovers
    n_running: int = 0
    objectives: str = ""  # "maximize val/pacgan_score, minimize cost/g_params"
    counts: dict[str, int] = field(default_factory=dict)  # complete, pruned, fail
    front: list[optuna.trial.FrozenTrial] = field(default_factory=list)  # several objectives
    metrics: list[str] = field(default_factory=list)  # the objectives' metrics, in order
    directions: list[str] = field(default_factory=list)  # and their directions
    already_complete: bool = False  # the study held its trials before: nothing was run
    links: dict[str, str] = field(default_factory=dict)  # name -> MLflow UI address

def summarize(study: optuna.Study, defn: StudyDefinition, parent: str, uri: str, start: float,
              *, already_complete: bool = False) -> SweepSummary:
    counts = trial_counts(study)
    best = best_trial(study)
    experiment = get_client(uri).get_run(parent).info.experiment_id
    links = ui_links(experiment, parent, best.user_attrs.get(RUN_ATTR) if best else None)
    return SweepSummary(
        defn.name, len(finished_trials(study)), best, parent, time.time() - start,
        counts["running"], objectives_text(defn), counts, pareto_front(study), defn.metrics,
        defn.directions, already_complete, links)


def ui_links(experiment_id: str, parent: str, best_run: str | None) -> dict[str, str]:
    """Direct MLflow UI addresses. MLflow 3's UI starts in its GenAI mode (traces, an
    assistant); ``workflowType=machine_learning`` switches it to model training, and it keeps
    that mode for the browser afterwards."""
    base = f"{UI_ADDRESS}/#/experiments/{experiment_id}"
    links = {"runs": f"{base}/runs{ML_MODE}", "parent run": f"{base}/runs/{parent}{ML_MODE}"}
    if best_run:
        links["best run"] = f"{base}/runs/{best_run}{ML_MODE}"
    return links


UI_ADDRESS = "http://127.0.0.1:5000"  # `make ui`'s default
ML_MODE = "?workflowType=machine_learning"

class Progress:
    """One study-level line: finished trials of N, best value so far, elapsed (tqdm)."""

    def __init__(self, study: optuna.Study, target: int, interval: float | None = None) -> None:
        from tqdm import tqdm

        self.study = study
        self.bar = tqdm(total=target, desc=f"study {study.study_name}", unit="trial",
                        file=sys.stderr, dynamic_ncols=True)
        # Redrawn in place on a terminal; a log file gets a new line each time, so fewer.
        self.interval = interval or (2.0 if sys.stderr.isatty() else 30.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._update()
        self._thread.start()

    def _update(self) -> None:
        done = len(finished_trials(self.study))
        self.bar.n = min(done, self.bar.total)
        if len(self.study.directions) > 1:
            front = pareto_front(self.study)
            self.bar.set_postfix_str(f"Pareto front: {len(front)} trials", refresh=False)
        else:
            best = best_trial(self.study)
            self.bar.set_postfix_str("best: -" if best is None else
                                     f"best {best.value:.4g} (trial {best.number})",
                                     refresh=False)
        self.bar.refresh()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._update()
            except Exception:  # a storage hiccup must not kill the display
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._update()
        self.bar.close()


def example_pick(summary: SweepSummary) -> str:
    """A --pick rule for this front: the best second objective with the first at least as good
    as the front's middle member's."""
    first, second = summary.metrics[0], summary.metrics[1]
    middle = summary.front[len(summary.front) // 2].values[0]
    best = "smallest" if summary.directions[1] == "minimize" else "largest"
    op = ">=" if summary.directions[0] == "maximize" else "<="
    return f"{best} {second} with {first} {op} {middle:.3g}"


def summary_lines(summary: SweepSummary) -> list[str]:
    running = f" ({summary.n_running} still running in other processes)" \
        if summary.n_running else ""
    c = summary.counts
    counts = (f"{c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned, "
              f"{c.get('fail', 0)} failed" if c else "")
    if summary.already_complete:
        lines = [f"study {summary.study_name} already complete ({summary.n_finished} trials"
                 f"{': ' + counts if counts else ''}); use TRIALS=N (--trials N) to add more"]
    else:
        lines = [f"study {summary.study_name}: {summary.n_finished} finished trials"
                 f"{' (' + counts + ')' if counts else ''}{running} in {summary.seconds:.0f} s"]
    lines.append(f"objective: {summary.objectives}" if summary.objectives else "")
    best = summary.best_trial
    if summary.front and len(summary.metrics) > 1:
        lines.append(f"Pareto front: {len(summary.front)} trials (MLflow tag pareto=true)")
        for t in summary.front:
            values = ", ".join(f"{m} {v:.4g}" for m, v in zip(summary.metrics, t.values,
                                                                strict=True))
            lines.append(f"  trial {t.number}: {values}")
        lines.append(f"export one: make export STUDY={summary.study_name} "
                     f"PICK='{example_pick(summary)}' (or TRIAL=N)")
    elif best is None:
        lines.append("no trial completed")
    else:
        lines.append(f"best trial {best.number}: objective {best.value:.6g}, MLflow run "
                     f"{best.user_attrs.get(RUN_ATTR, '?')}")
        lines += [f"  {k} = {v}" for k, v in sorted(best.params.items())]
    lines.append(f"MLflow parent run {summary.parent_run_id}")
    if summary.links:
        lines.append("browse: make ui, then")
        lines += [f"  {name}: {url}" for name, url in summary.links.items()]
    else:
        lines.append(f"browse: make ui  (MLflow UI at {UI_ADDRESS})")
    return [line for line in lines if line]
