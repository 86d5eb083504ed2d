"""Multi-objective studies: the study file, the Pareto front in Optuna, MLflow, compare, export
and reeval, constraints, and every bad input as one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from slow_helpers import TINY_STUDY

from pipeline.__main__ import main
from pipeline.compare import compare_studies, top_trials
from pipeline.config import ConfigError
from pipeline.costs import COST_KEYS
from pipeline.export import export_best
from pipeline.reeval import reevaluate
from pipeline.study.choice import chosen_trial
from pipeline.study.conditions import Condition, parse_pick
from pipeline.study.spec import parse_study
from pipeline.study.store import PARENT_ATTR, RUN_ATTR, SCORES_ATTR, find_study, pareto_front
from pipeline.study.summary import summary_lines
from pipeline.study.sweep import run_sweep

BASE = TINY_STUDY + "budget: {n_trials: 4, epochs: 2}\n"
TWO = """
objectives:
  - {metric: val/pacgan_score, direction: maximize, last_k: 1}
  - {metric: cost/g_params, direction: minimize}
"""


def study(tmp_path: Path, extra: str = "", name: str = "mo"):
    return parse_study(TWO + extra + BASE, default_name=name)


def tagged(client: MlflowClient, parent: str, tag: str) -> set[str]:
    experiment = client.get_run(parent).info.experiment_id
    runs = client.search_runs([experiment], f"tags.{tag} = 'true'")
    return {r.info.run_id for r in runs}


def test_two_objectives_front_tags_follow_each_trial(tmp_path: Path) -> None:
    defn = study(tmp_path)
    assert defn.multi_objective and defn.directions == ["maximize", "minimize"]
    assert defn.spec.pruner.name == "none"  # Optuna cannot prune several objectives
    for n in (1, 2, 3, 4):  # one more trial per command: the tags must move with the front
        summary = run_sweep(defn, n_trials=n, progress=False)
        optuna_study, _ = find_study("mo")
        front = pareto_front(optuna_study)
        client = MlflowClient(tracking_uri=defn.base.tracking.tracking_uri or
                              f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
        parent = optuna_study.user_attrs[PARENT_ATTR]
        assert tagged(client, parent, "pareto") == {t.user_attrs[RUN_ATTR] for t in front}
        assert not tagged(client, parent, "best")  # a front has no single best trial
        tags = client.get_run(parent).data.tags
        assert tags["n_pareto"] == str(len(front))
        assert "Pareto front" in tags["mlflow.note.content"]
    assert optuna_study.metric_names == ["val/pacgan_score", "cost/g_params"]
    t = front[0]
    # the values Optuna holds are the run's objectives and the recorded scores
    run = client.get_run(t.user_attrs[RUN_ATTR]).data.metrics
    assert run["objective/val/pacgan_score"] == pytest.approx(t.values[0])
    assert run["objective/cost/g_params"] == t.values[1] == t.user_attrs[SCORES_ATTR][
        "cost/g_params"]
    width = t.params["model.g_width_0"]  # 2 -> width -> ... -> 2, so a 1-layer G is 2w+w+2w+2
    if t.params["model.g_layers"] == 1:
        assert t.values[1] == 2 * width + width + 2 * width + 2
    artifacts = {a.path for a in client.list_artifacts(parent, "plots")}
    assert {"plots/pareto_front.html", "plots/pareto_front.png"} <= artifacts
    lines = summary_lines(summary)
    assert "objective: maximize val/pacgan_score, minimize cost/g_params" in lines
    assert any(line.startswith("Pareto front: ") for line in lines)
    assert any("PICK='largest" in line or "PICK='smallest" in line for line in lines)

    rows = top_trials(optuna_study, defn, 10)
    assert [r["trial"] for r in rows[:len(front)]] == [t.number for t in front]
    assert all(r["pareto"] == "*" for r in rows[:len(front)])
    assert all(r["pareto"] == "" for r in rows[len(front):])

    with pytest.raises(ConfigError, match="has 2 objectives: choose with --trial N or --pick"):
        export_best("mo")
    assert not Path("exports").exists()  # nothing written
    out, _ = export_best("mo", trial=front[-1].number)
    config = json.loads((out / "config.json").read_text())
    assert config["trial"] == front[-1].number and config["chosen_by"].startswith("--trial")
    assert [o["metric"] for o in config["objectives"]] == defn.metrics

    pick = "smallest cost/g_params with val/pacgan_score >= -1"  # every trial qualifies
    smallest = min(optuna_study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)),
                   key=lambda t: (t.values[1], t.number))
    assert chosen_trial(optuna_study, defn, pick=pick).number == smallest.number
    report, path = reevaluate(study="mo", pick=pick, seeds=1)
    assert path.name == f"mo-trial{smallest.number}.json"
    assert report["search"]["pacgan_score"] == pytest.approx(smallest.values[0])
    assert report["per_seed"][0]["cost/g_params"] == smallest.values[1]  # same G, same size

    # side by side with a one-objective study in the same storage
    single = parse_study("objective: {metric: val/high_quality, direction: maximize}\n" + BASE,
                         default_name="single")
    run_sweep(single, n_trials=2, progress=False)
    text, figures = compare_studies(["mo", "single"], top=2, fmt="json")
    rows = json.loads(text)
    assert [r["study"] for r in rows] == ["mo", "mo", "single", "single"]
    assert rows[0]["objective_of"] == "max val/pacgan_score, min cost/g_params"
    assert rows[2]["objective_of"] == "max val/high_quality"
    assert [f.name for f in figures] == ["mo.png", "single.png"]


def test_constraints_decide_feasibility_and_the_front(tmp_path: Path) -> None:
    defn = study(tmp_path, 'constraints: ["val/modes_covered >= 100", "cost/g_params <= 1e9"]\n',
                 name="impossible")
    run_sweep(defn, n_trials=2, progress=False)
    optuna_study, _ = find_study("impossible")
    for t in optuna_study.get_trials():
        modes = t.user_attrs[SCORES_ATTR]["val/modes_covered"]
        assert t.constraints["val/modes_covered >= 100"] == pytest.approx(100 - modes)
        assert t.constraints["cost/g_params <= 1e9"] < 0
    assert pareto_front(optuna_study) == []  # no trial can cover 100 of 25 modes
    with pytest.raises(ConfigError, match="no complete trial of study impossible meets it"):
        chosen_trial(optuna_study, defn, pick="smallest cost/g_params")


def test_conditions_and_pick_rules() -> None:
    allowed = ["val/high_quality", *COST_KEYS]
    c = Condition("val/high_quality", ">=", 0.9)
    assert c.violation(0.95) == pytest.approx(-0.05) and not c.holds(0.85)
    rule = parse_pick("smallest cost/g_params with val/high_quality >= 0.9 and "
                      "cost/sample_ms <= 2", allowed)
    scores = {0: {"cost/g_params": 100, "val/high_quality": 0.8, "cost/sample_ms": 1},
              1: {"cost/g_params": 300, "val/high_quality": 0.95, "cost/sample_ms": 1},
              2: {"cost/g_params": 200, "val/high_quality": 0.91, "cost/sample_ms": 3},
              3: {"cost/g_params": 300, "val/high_quality": 0.99, "cost/sample_ms": 1}}
    assert rule.choose(scores) == 1  # 0 misses HQ, 2 misses latency; a tie goes to the lower
    assert parse_pick("largest val/high_quality", allowed).choose(scores) == 3


@pytest.mark.parametrize(("extra", "fragment"), [
    ("objectives: [{metric: val/accuracy, direction: maximize}, "
     "{metric: cost/g_params, direction: minimize}]",
     "objectives[0].metric: got 'val/accuracy', expected one of"),
    ("objectives: [{metric: cost/g_params, direction: minimize}, "
     "{metric: cost/g_params, direction: maximize}]", "objectives: cost/g_params is given twice"),
    ("objectives: [{metric: val/high_quality, direction: up}, "
     "{metric: cost/g_params, direction: minimize}]", "objectives[0].direction: got 'up'"),
    ("objective: {metric: val/high_quality}\n" + TWO.strip(),
     "objective and objectives: give one of them"),
    (TWO + 'constraints: ["val/high_quality > 0.9"]',
     "constraints[0]: got 'val/high_quality > 0.9', expected 'METRIC >= NUMBER'"),
    (TWO + 'constraints: ["val/accuracy >= 0.9"]',
     "constraints[0]: got 'val/accuracy', expected one of"),
    (TWO + "pruner: {name: median}", "pruner: Optuna's pruners do not support several"),
    (TWO + "sampler: {name: cmaes}", "sampler.name: cmaes optimizes one objective only"),
    ("objectives: [{metric: val/high_quality, direction: maximize}, "
     "{metric: cost/g_params, direction: minimize, seeds: 3}]",
     "objectives[1]: seeds and aggregate apply to the whole trial"),
])
def test_bad_multi_objective_files_are_one_line(extra: str, fragment: str,
                                                 tmp_path: Path) -> None:
    text = extra + "\n" + BASE.replace("sampler: {name: random, seed: 0}\n", "") \
        if "sampler:" in extra else extra + "\n" + BASE
    with pytest.raises(ConfigError) as err:
        parse_study(text, default_name="bad")
    assert fragment in str(err.value) and "\n" not in str(err.value)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    before = set(tmp_path.iterdir())
    assert main(["sweep", str(path), "--no-progress"]) == 2  # one line, exit 2, nothing written
    assert set(tmp_path.iterdir()) == before
