"""Re-evaluate a configuration on fresh seeds: the third phase of Lucic et al.'s protocol.

A study's best trial won among many noisy trials; its score is optimistic. ``reeval`` retrains
its exact configuration (or any config file, e.g. a baseline) on seeds no trial used, scores
each final checkpoint (not the best epoch), and reports the mean and standard error of every
metric. Each seed is an MLflow run tagged ``reeval`` under the study's parent run (or under a
``reeval <name>`` run for a config file). Writes ``results/<name>.json`` and a picture of the
first seed's final samples; for a study, also ``studies/best/<study>.yaml``, the configuration
as a file that ``python -m pipeline train --config`` trains.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import Config, ConfigError
from pipeline.config_load import config_from_dict, load_config, mask_secrets, parse_overrides
from pipeline.metrics.registry import VAL_PREFIX
from pipeline.outputs import check_output_file, check_output_folder
from pipeline.run_log import start_run
from pipeline.study.choice import chosen_trial, scores
from pipeline.study.store import PARENT_ATTR, RUN_ATTR, find_study
from pipeline.tracking import get_client, open_store_for_reading, tracking_uri

FIRST_SEED = 1000  # searches train with small seeds (the base's, 0 by default); these are fresh
RESULTS_DIR = Path("results")
BEST_DIR = Path("studies") / "best"  # beside studies/, where the commands run
RUN_ONLY_KEYS = ("tracking", )  # sections of a config that say where, not what


def reevaluate(*, seeds: int, study: str | None = None, config: str | None = None,
               epochs: int | None = None, workers: int = 1, out: str | None = None,
               storage: str | None = None, overrides: list[str] | None = None,
               trial: int | None = None, pick: str | None = None,
               ) -> tuple[dict[str, Any], Path]:
    """Train ``seeds`` fresh seeds of the configuration; returns the report and its path.
    ``trial`` / ``pick``: a study's trial other than the best (study/choice.py); the name (of
    the results file and runs) is then ``<study>-trial<N>``."""
    start = time.time()
    if (study is None) == (config is None):
        raise ConfigError("reeval: give either --study or --config")
    check_results_path(out)  # before the study is read or a seed trained
    search: dict[str, float] = {}
    if study is not None:
        cfg, name, parent, used, search = chosen_trial_config(study, storage, trial, pick)
    else:
        assert config is not None
        if trial is not None or pick is not None:
            raise ConfigError("reeval: --trial and --pick choose a study's trial; give --study")
        cfg = load_config(config)
        name, parent, used = Path(config).stem, None, {cfg.train.seed}
    cfg = with_overrides(cfg, overrides or [], epochs)
    uri = tracking_uri(cfg.tracking.tracking_uri)
    client = get_client(uri)
    if parent is None:
        parent = start_run(client, cfg.tracking.experiment, run_name=f"reeval {name}",
                           tags={"reeval": "true", "config_file": config or ""})
    fresh = [s for s in range(FIRST_SEED, FIRST_SEED + seeds + len(used)) if s not in used]
    fresh = fresh[:seeds]
    jobs = [(seed_config(cfg, seed, uri), name, parent, seed) for seed in fresh]
    print(f"reeval {name}: {len(jobs)} seeds {fresh}, {min(workers, len(jobs))} at a time",
          file=sys.stderr)
    results = run_seeds(jobs, workers)
    if client.get_run(parent).data.tags.get("reeval") == "true":
        client.set_terminated(parent, "FINISHED")

    # the costs (size, FLOPs, sampling latency, training time) beside the metrics: a size
    # study's front is read against them
    per_seed = [{**{k.removeprefix(VAL_PREFIX): v for k, v in r["metrics"].items()},
                 **r["costs"]} for r in results]
    # the floor is the same metric of real rows at the same sample size (per seed: a table's
    # held-out split is drawn from the seed), so that a row reads against what is reachable
    report = {
        "study": name,
        "config": {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_KEYS},
        "seeds": fresh,
        **seed_summary(per_seed),
        "floor": {k: mean([r["floor"][k] for r in results]) for k in results[0]["floor"]},
        # the feature space every metric (and the floor) was measured in: rows of two files
        # compare only where it is the same (an image classifier's weights digest included)
        "features": sorted({r["features"] for r in results}),
        # what the search saw for this trial (its last evaluations' mean, on the search's
        # seed): optimistic, the winner of many noisy draws; beside the fresh seeds' mean
        "search": {k.removeprefix(VAL_PREFIX): v for k, v in search.items()},
        # eval.drs: the same seeds' final G filtered by rejection sampling, a row of its own
        **({"drs": seed_summary([r["drs"] for r in results])} if results[0]["drs"] else {}),
        "seconds": round(time.time() - start, 1),
        "seconds_per_seed": round(mean([r["seconds"] for r in results]), 1),
        "runs": [r["run_id"] for r in results],
        "parent_run_id": parent,
        "command": " ".join(["python -m pipeline", *sys.argv[1:]])
                   if sys.argv and sys.argv[0].endswith("__main__.py") else "",
    }
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    picture(client, results[0]["run_id"], path.with_suffix(".png"))
    if study is not None:
        write_best_config(cfg, name)
    return report, path


def check_results_path(out: str | None) -> None:
    """Where the results go, tried before minutes of training: ``--out`` a .json file (its
    picture beside it, the same name ending .png), or else the results/ folder."""
    if out is None:
        check_output_folder(RESULTS_DIR, option="reeval's results folder")
        return
    path = check_output_file(out, (".json",), kind="the results are JSON")
    check_output_file(path.with_suffix(".png"), (".png",), option=f"--out {out}: its picture")


def chosen_trial_config(study: str, storage: str | None, trial: int | None = None,
                        pick: str | None = None
                        ) -> tuple[Config, str, str | None, set[int], dict[str, float]]:
    """The chosen trial's exact config (logged with its run), its name, the parent run, the
    seeds used and the trial's scores in the search."""
    optuna_study, defn = find_study(study, storage)
    best = chosen_trial(optuna_study, defn, trial=trial, pick=pick)
    name = study if trial is None and pick is None else f"{study}-trial{best.number}"
    uri = tracking_uri(defn.base.tracking.tracking_uri)
    client = open_store_for_reading(uri)
    run_id = best.user_attrs.get(RUN_ATTR, "")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "model/config.yaml", tmp)
            cfg = config_from_dict(yaml.safe_load(Path(path).read_text()))
        except Exception:
            raise ConfigError(f"study {study}: trial {best.number}'s run {run_id} has no "
                              f"model/config.yaml in {mask_secrets(uri)}") from None
    used = {int(t.params.get("train.seed", defn.base.train.seed)) for t in optuna_study.trials}
    parent: str | None = optuna_study.user_attrs.get(PARENT_ATTR)
    try:
        client.get_run(parent or "")
    except Exception:  # the study's parent run is not in this store: make a reeval parent
        parent = None
    return cfg, name, parent, used, scores(best, defn)


def with_overrides(cfg: Config, overrides: list[str], epochs: int | None) -> Config:
    extra = [f"train.epochs={epochs}"] if epochs else []
    if not overrides and not extra:
        return cfg
    data = cfg.to_dict()
    for section, values in parse_overrides([*overrides, *extra]).items():
        if not isinstance(values, dict) or section not in data:
            raise ConfigError(f"override {section}: expected section.key=value")
        data[section].update(values)
    return config_from_dict(data)


def seed_config(cfg: Config, seed: int, uri: str) -> dict[str, Any]:
    """One seed's config: evaluated at its last epoch (the final checkpoint is what counts)."""
    data = cfg.to_dict()
    data["train"].update(seed=seed, progress_bar=False, threads=1)
    if data["train"]["epochs"] % data["eval"]["every_n_epochs"]:
        data["eval"]["every_n_epochs"] = 1
    data["tracking"]["tracking_uri"] = uri
    return data


def run_seeds(jobs: list[tuple[dict[str, Any], str, str, int]],
              workers: int) -> list[dict[str, Any]]:
    """Every seed's result, in the jobs' order; a line on stderr as each seed finishes."""
    workers = max(1, min(workers, len(jobs), os.cpu_count() or 1))
    start = time.time()

    def done(i: int, result: dict[str, Any], n: int) -> dict[str, Any]:
        print(f"  seed {jobs[i][3]} done ({n}/{len(jobs)}, {time.time() - start:.0f} s)",
              file=sys.stderr)
        return result

    if workers == 1:
        return [done(i, train_seed(*job), i + 1) for i, job in enumerate(jobs)]
    ctx = multiprocessing.get_context("spawn")  # fork + torch threads can deadlock
    results: dict[int, dict[str, Any]] = {}
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(train_seed, *job): i for i, job in enumerate(jobs)}
        for future in as_completed(futures):
            i = futures[future]
            results[i] = done(i, future.result(), len(results) + 1)
    return [results[i] for i in range(len(jobs))]


def train_seed(cfg_dict: dict[str, Any], name: str, parent: str, seed: int) -> dict[str, Any]:
    from pipeline.logs import quiet_libraries
    from pipeline.prepare import prepare
    from pipeline.train import train

    quiet_libraries()
    start = time.time()
    prepared = prepare(config_from_dict(cfg_dict))
    with prepared.run(run_name=f"reeval {name} seed {seed}", parent_run_id=parent,
                      tags={"reeval": "true", "reeval_seed": seed}) as run:
        result = train(prepared, run)
    if not result.metrics:
        raise ConfigError(f"seed {seed}: no evaluation ran")
    return {"run_id": result.run_id, "metrics": result.metrics, "floor": result.floor,
            "costs": result.costs, "drs": result.drs, "seconds": time.time() - start,
            "features": prepared.evaluator.feature_name}


def seed_summary(per_seed: list[dict[str, float]]) -> dict[str, Any]:
    """The seeds' values, their mean and standard error, per metric."""
    keys = per_seed[0]
    return {"per_seed": per_seed, "mean": {k: mean([p[k] for p in per_seed]) for k in keys},
            "stderr": {k: stderr([p[k] for p in per_seed]) for k in keys}}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def stderr(values: list[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for one value."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def picture(client: Any, run_id: str, path: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, "samples/final.png", tmp)
        except Exception:
            return
        shutil.copyfile(local, path)


def write_best_config(cfg: Config, study: str) -> Path:
    """The configuration as a config file: `python -m pipeline train --config` trains it."""
    data = {k: v for k, v in cfg.to_dict().items() if k not in RUN_ONLY_KEYS}
    data["train"].pop("threads", None)
    data["train"].pop("progress_bar", None)
    if data["data"].get("path"):
        data["data"]["path"] = portable(data["data"]["path"])
    BEST_DIR.mkdir(parents=True, exist_ok=True)
    path = BEST_DIR / f"{study}.yaml"
    header = (f"# The best configuration the {study} study found (re-evaluated on fresh seeds: "
              f"results/{study}.json).\n# Train it: python -m pipeline train --config "
              f"studies/best/{study}.yaml train.seed=N\n")
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
    return path


def portable(path: str) -> str:
    """``path`` relative to the working directory when it lies below it: the file is committed
    beside studies/, and a clone elsewhere reads runs/data/x.csv where an absolute path would
    name this machine's folder (data.path is read relative to where the command runs)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:  # outside the project: the user's own file stays where it is
        return path


def summary_table(report: dict[str, Any]) -> str:
    floor, search = report.get("floor", {}), report.get("search", {})
    lines = [f"{report['study']}: {len(report['seeds'])} fresh seeds {report['seeds']}, "
             f"{report['seconds']:.0f} s",
             f"{'metric':<18} {'mean':>10} {'stderr':>10} {'min':>10} {'real rows':>10} "
             f"{'search':>10}"]

    def cell(values: dict[str, float], k: str) -> str:
        return f"{values[k]:>10.4g}" if k in values else f"{'':>10}"

    for k, v in report["mean"].items():
        low = min(p[k] for p in report["per_seed"])
        lines.append(f"{k:<18} {v:>10.4g} {report['stderr'][k]:>10.3g} {low:>10.4g} "
                     f"{cell(floor, k)} {cell(search, k)}".rstrip())
    drs = report.get("drs") or {"mean": {}}
    for k, v in drs["mean"].items():
        low = min(p[k] for p in drs["per_seed"])
        lines.append(f"{'drs/' + k:<18} {v:>10.4g} {drs['stderr'][k]:>10.3g} {low:>10.4g}")
    if search:
        lines.append("search: the trial's value in the study (its last evaluations, one seed)")
    return "\n".join(lines)
