"""Top-K trials of a study, read from Optuna and MLflow (which must agree), and one figure.

Complete trials are ranked by their objective; pruned ones follow, ranked by the last value they
reported. A multi-objective study lists its Pareto front first (marked in the ``pareto`` column),
by the first objective, then its other complete trials.
The figure shows the top trials' final sample pictures with their scores, and their
per-epoch objective curves on one plot.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import optuna
from matplotlib.figure import Figure

from pipeline.config import ConfigError
from pipeline.config_load import mask_secrets
from pipeline.faults import storage_fault
from pipeline.metrics.registry import MAIN_METRICS, val_key
from pipeline.outputs import check_output_file
from pipeline.run_log import RunLogger
from pipeline.study.choice import check_recorded
from pipeline.study.store import PARENT_ATTR, RUN_ATTR, find_study, pareto_front
from pipeline.tracking import open_store_for_reading, tracking_uri

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from pipeline.study.spec import StudyDefinition


TABLE_WIDTH = 120  # a terminal's width: the table format wraps to it


def ranked_trials(study: optuna.Study, defn: StudyDefinition
                  ) -> list[tuple[optuna.trial.FrozenTrial, list[float], bool]]:
    """(trial, values, on the front), best first. One objective: complete trials by their value,
    then pruned ones by the last value they reported. Several: the Pareto front by the first
    objective, then the other complete trials by the first objective."""
    sign = 1.0 if defn.directions[0] == "minimize" else -1.0
    front = {t.number for t in pareto_front(study)} if defn.multi_objective else set()
    candidates = []
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE and t.values:
            group = 0 if t.number in front or not defn.multi_objective else 1
            candidates.append((group, sign * t.values[0], t.number, t, list(t.values)))
        elif (t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values
              and not defn.multi_objective):
            last = t.intermediate_values[max(t.intermediate_values)]
            candidates.append((2, sign * last, t.number, t, [last]))
    candidates.sort(key=lambda c: c[:3])
    return [(t, values, t.number in front) for *_, t, values in candidates]


def top_trials(study: optuna.Study, defn: StudyDefinition, k: int) -> list[dict[str, Any]]:
    client = open_store_for_reading(tracking_uri(defn.base.tracking.tracking_uri))
    rows = []
    missing = []
    for rank, (trial, values, on_front) in enumerate(ranked_trials(study, defn)[:k], start=1):
        run_id = trial.user_attrs.get(RUN_ATTR, "")
        try:
            metrics = client.get_run(run_id).data.metrics if run_id else {}
        except Exception:  # the study outlived its MLflow store (deleted, or another one)
            missing.append(trial.number)
            metrics, run_id = {}, f"{run_id} (not in this MLflow store)"
        else:
            if trial.state == optuna.trial.TrialState.COMPLETE:
                check_recorded(trial, defn, client)
        row: dict[str, Any] = {"rank": rank, "trial": trial.number, "state": trial.state.name}
        if defn.multi_objective:
            row["pareto"] = "*" if on_front else ""
            row.update(zip(defn.metrics, values, strict=True))
        else:
            row["objective"] = values[0]
        for name in MAIN_METRICS:
            if val_key(name) in metrics and val_key(name) not in row:
                row[name] = metrics[val_key(name)]
        row.update({f"p:{k}": v for k, v in sorted(trial.params.items())})
        row["run_id"] = run_id
        rows.append(row)
    if missing and len(missing) == len(rows):
        raise ConfigError(f"study {study.study_name}: none of its top trials has its run in the "
                          f"MLflow store {mask_secrets(client.tracking_uri)} (was it deleted or "
                          "replaced?)")
    return rows


def format_rows(rows: Sequence[dict[str, Any]], fmt: str) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    # Conditional parameters (a third layer's width, leaky_relu's slope) exist in some rows
    # only: keep every p: column together, sorted, with the run id last.
    params = sorted(c for c in columns if c.startswith("p:"))
    first = [c for c in columns if not c.startswith("p:") and c != "run_id"]
    columns = [*first, *params, "run_id"]
    if fmt == "json":
        return json.dumps(list(rows), indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "markdown":
        cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    return terminal_table(rows, first, params)


def terminal_table(rows: Sequence[dict[str, Any]], first: list[str], params: list[str],
                   width: int = TABLE_WIDTH) -> str:
    """For a terminal: the scores as columns (as many as fit ``width``), then each trial's
    parameters and run id on lines of their own, wrapped to ``width``."""
    shown: list[str] = []
    for column in first:
        trial_widths = [len(column), *(len(_cell(r.get(column, ""))) for r in rows)]
        if sum(_width(c, rows) + 2 for c in shown) + max(trial_widths) > width:
            break
        shown.append(column)
    widths = [_width(c, rows) for c in shown]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)).rstrip()]
    lines += ["  ".join(_cell(r.get(c, "")).ljust(w)
                        for c, w in zip(shown, widths, strict=True)).rstrip() for r in rows]
    lines.append("")
    for row in rows:
        settings = " ".join(f"{p.removeprefix('p:').split('.', 1)[-1]}={_cell(row[p])}"
                            for p in params if p in row)
        which = f"{row['study']} " if "study" in row else ""
        lines += textwrap.wrap(f"{which}#{row['rank']} trial {row['trial']}: {settings}", width,
                               subsequent_indent="    ")
        lines.append(f"    run {row['run_id']}")
    return "\n".join(lines)


def _width(column: str, rows: Sequence[dict[str, Any]]) -> int:
    return max(len(column), *(len(_cell(r.get(column, ""))) for r in rows))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def comparison_figure(rows: Sequence[dict[str, Any]], defn: StudyDefinition) -> Figure:
    """Top row: each trial's final samples with its scores; bottom: objective per epoch."""
    client = open_store_for_reading(tracking_uri(defn.base.tracking.tracking_uri))
    metric = defn.spec.objective.metric
    n = max(len(rows), 1)
    fig = plt.figure(figsize=(3.2 * n, 7))
    grid = fig.add_gridspec(2, n, height_ratios=[1, 0.9])
    curves = fig.add_subplot(grid[1, :])
    with tempfile.TemporaryDirectory() as tmp:
        for i, row in enumerate(rows):
            ax = fig.add_subplot(grid[0, i])
            ax.axis("off")
            scores = ", ".join(f"{k} {row[k]:.3g}" for k in [m for m in MAIN_METRICS
                                                              if m in row][:4])
            judged = ", ".join(f"{m.split('/')[-1]} {row[m]:.4g}" for m in defn.metrics) \
                if defn.multi_objective else f"objective {row['objective']:.4g}"
            front = " on the front" if row.get("pareto") else ""
            ax.set_title(f"#{row['rank']} trial {row['trial']} ({row['state'].lower()}{front})"
                         f"\n{judged}\n{scores}", fontsize=7)
            if not row["run_id"]:
                continue
            try:
                png = client.download_artifacts(row["run_id"], "samples/final.png", tmp)
                ax.imshow(plt.imread(png))
            except Exception:  # a pruned trial stops before its final picture
                ax.text(0.5, 0.5, "no final samples", ha="center", va="center")
            try:
                history = client.get_metric_history(row["run_id"], metric)
            except Exception:  # its run is not in this store (compare said so in the table)
                continue
            steps = [m.step for m in sorted(history, key=lambda m: m.step)]
            values = [m.value for m in sorted(history, key=lambda m: m.step)]
            curves.plot(steps, values, marker=".", label=f"trial {row['trial']}")
    curves.set_xlabel("epoch")
    curves.set_ylabel(metric)
    curves.legend(fontsize=7)
    curves.grid(alpha=0.3)
    order = ("the Pareto front first, by " if defn.multi_objective else "") + \
        f"{defn.spec.objective.direction} {metric}"
    fig.suptitle(f"study {defn.name}: top {len(rows)}, {order}")
    return fig


def compare(study_name: str, *, top: int = 5, fmt: str = "table", storage: str | None = None,
            figure_path: str | Path | None = None) -> tuple[str, Path]:
    if top < 1:
        raise ConfigError(f"--top {top}: expected at least 1")
    path = Path(figure_path) if figure_path else Path("runs") / "compare" / f"{study_name}.png"
    check_figure_path(path)  # before the study is read: a bad path is one line, nothing drawn
    study, defn = find_study(study_name, storage)
    rows = top_trials(study, defn, top)
    fig = comparison_figure(rows, defn)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")
    parent = study.user_attrs.get(PARENT_ATTR)
    if parent:
        client = open_store_for_reading(tracking_uri(defn.base.tracking.tracking_uri))
        try:
            RunLogger(client, parent).log_figure(fig, "comparison/top_trials.png")
        except Exception as exc:  # a read-only store can still be compared
            reason = storage_fault(exc)
            if reason is None:
                raise
            log.warning("warning: the figure was not logged to the study's MLflow run: %s",
                        reason)
    plt.close(fig)
    return format_rows(rows, fmt), path


def check_figure_path(path: Path) -> None:
    """The figure is a PNG: a file ending .png, not a folder or a link, in a folder that can be
    made and written (pipeline/outputs.py, as every command's output file)."""
    check_output_file(path, (".png",), option="--figure", kind="the figure is a PNG")


def compare_studies(names: Sequence[str], *, top: int = 5, fmt: str = "table",
                    storage: str | None = None) -> tuple[str, list[Path]]:
    """Several studies side by side: each study's top trials, in one table whose first columns
    say which study and which objective a row's ``objective`` is; a figure per study (its
    default path, and on its parent run)."""
    if len(set(names)) != len(names):
        raise ConfigError(f"--study: {', '.join(names)} names a study twice")
    rows: list[dict[str, Any]] = []
    figures = []
    for name in names:
        study, defn = find_study(name, storage)  # every name checked before any output
        for row in top_trials(study, defn, top):
            first = {"objective": row.get("objective", row.get(defn.metrics[0]))}
            rows.append({"study": name, "objective_of": ", ".join(
                f"{d[:3]} {m}" for m, d in zip(defn.metrics, defn.directions, strict=True)),
                **row, **first})
    for name in names:
        figures.append(compare(name, top=top, fmt=fmt, storage=storage)[1])
    return format_rows(rows, fmt), figures
