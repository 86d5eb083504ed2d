"""``python -m bench.bench`` (``make bench``): how close the project's trials (bench/project.py)
come to a plain PyTorch loop (bench/plain.py) and to the hardware, variants interleaved so that
machine noise cancels. Writes ``bench/results.json`` (keys below) and ``results.md``; prints both.

Three sizes: ``grid25`` (its study's 2-D trials), ``images`` (Fashion-MNIST) and ``table`` (the
table study's base and schedule on a synthetic table of 10,000 rows and 20 mixed columns that
bench/table.py writes into the run's temporary folder).

- ``train_ratio``: training steps/s of the project's LightningModule in its Trainer as a sweep
  configures it (MLflow logging and callbacks on, one thread as each of two workers has), over
  the plain loop: same networks, fused Adam, losses and batches.
- ``trial_ratio``: the same for one whole trial (a real Optuna trial through the study's
  objective: MLflow run, params, evaluation every epoch, pictures, weights, pruning reports)
  against the plain loop running the same evaluations with the same metrics code.
- ``eval_fraction``: evaluation plus MLflow logging, as a share of the trial's wall time (how
  the logging outside validation is timed: bench/project.py).
- ``trial_cpu_ratio``: ``trial_ratio`` in this process's CPU seconds (the fastest of each
  side's repetitions): a check on the wall-clock ratio that other processes' load hardly moves,
  though blind to I/O waits (MLflow's SQLite writes).
- ``trial_breakdown``: where a measured project trial's wall time went (fit loop, validation,
  logging outside validation, everything outside the fit loop).
- ``startup_seconds``: a trial's fixed cost outside Lightning's fit loop, in a running worker
  (grid25 and images trials; a table trial's is in ``trial_breakdown``).
- ``workers_speedup``: trials/hour of a small study with 2 worker processes over 1, from trial
  timestamps (steady state: a worker's one-off imports are not a per-trial cost).
- ``pruning``: epochs the grid25 study (its pruner, epochs and search space; short epochs) spends
  over the same study unpruned (same random-sampler seed, so both try the same settings), and
  the ratio of their best objectives.
- ``gflops``: achieved GFLOP/s of the project's training step at the image size (counted from
  the layer sizes, both threads) and the machine's large-matmul peak measured in this run; and
  (``*_matmuls``) the same step's matmuls timed alone, the most the step could reach.

- ``table_eval_seconds``: one full evaluation of the table study (2,000 rows, every table
  metric) at 20 and at 100 columns, where SDMetrics' pair trends would grow with the square of
  the columns; ``table_quality_pairs``: the pair rule each evaluator logs (tag
  ``quality_pairs``); ``table_eval_breakdown``: its light evaluation and each metric family alone.
- ``measured``: which keys each run measured, when, and the load average (``uptime``'s 1, 5 and
  15 minutes) at its start and end.

``--quick``: every measurement at toy sizes, in a minute (for the tests); its numbers mean nothing.
``--only table``: just the table's keys, merged into the results.json already in ``--out`` (the
other keys kept, each run's keys listed under "Measured" in results.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from bench.flops import matmul_peak, matmuls_only, step_flops
from bench.plain import plain_train, plain_trial
from bench.project import TrialTiming, project_train, project_trial, with_train
from bench.table import write_table
from pipeline.config import PROJECT_ROOT, Config
from pipeline.config_load import config_from_dict
from pipeline.logs import quiet_libraries
from pipeline.metrics import FAMILIES, MAIN_METRICS, Evaluator
from pipeline.metrics.registry import VAL_PREFIX
from pipeline.prepare import cached_dataset, cached_evaluator, set_threads
from pipeline.study.spec import StudyDefinition, load_study_file, parse_study
from pipeline.study.storage import open_storage
from pipeline.study.sweep import run_sweep
from pipeline.tracking import get_client

TARGETS = {  # key -> (description, check)
    "train_ratio": (">= 0.95 at every size", lambda v: min(v.values()) >= 0.95),
    "trial_ratio": (">= 0.90 at every size", lambda v: min(v.values()) >= 0.90),
    "eval_fraction": ("<= 0.10 at every size", lambda v: max(v.values()) <= 0.10),
    "startup_seconds": ("<= 0.5", lambda v: v <= 0.5),
    "workers_speedup": (">= 1.8", lambda v: v >= 1.8),
    "pruning": ("epoch_fraction <= 0.5, best_ratio within 10%",
                lambda v: v["epoch_fraction"] <= 0.5 and abs(v["best_ratio"] - 1) <= 0.10),
    "gflops": (">= 45% of peak at batch 64, >= 65% at 256",
               lambda v: v["images_b64"] >= 0.45 * v["peak"]
               and v["images_b256"] >= 0.65 * v["peak"]),
}


@dataclass
class Sizes:
    """How big each measurement is; --quick shrinks all of them."""

    train_steps: dict[str, int]  # steps per timed repetition of train_ratio
    reps: int  # interleaved repetitions (after one warm-up each)
    # epochs of a benchmarked trial (images: of the full data; None = the study's budget)
    trial_epochs: dict[str, int | None]
    trial_reps: dict[str, int]  # repetitions of the whole-trial comparison
    trial_steps: dict[str, int | None]  # steps per epoch (None = the study's own)
    study: dict[str, int]  # sizes of the workers and pruning studies
    gflops_steps: int
    images: str  # the image dataset: fashion_mnist, or digits in quick mode
    table_rows: int  # rows of the benchmark's tables (bench/table.py)
    table_columns: int  # columns of the table its trials train on
    table_wide_columns: int  # the wide table of table_eval_seconds
    table_eval_reps: int  # interleaved repetitions of the table evaluations
    table_eval: dict[str, Any]  # eval.* overrides of the table study's base (quick: a schedule
    # that evaluates, lightly and fully, within its 2 epochs)
    # train_ratio's repetitions where not ``reps``
    train_reps: dict[str, int] = dataclasses.field(default_factory=dict)


# images trials: 5 epochs of Fashion-MNIST (~70 s), the fashion_mnist study's cycle of four
# light evaluations and one full one (its trials are two such cycles), so that evaluation weighs
# in a benchmarked trial what it weighs in the study's.
# table trials: the table study's own (40 epochs of 50 steps, 8 evaluations, the last one full)
# on 10,000 rows of 20 columns; its evaluations also timed alone, and on 100 columns.
# The table trial's 10 repetitions: with 5, two runs 20 minutes apart measured 1.045 and 0.817
# of the plain loop on this shared machine, their code differing only by 0.3 s taken from both.
FULL = Sizes({"grid25": 2000, "images": 200, "table": 250}, 5,
             {"grid25": 32, "images": 5, "table": None},
             {"grid25": 5, "images": 2, "table": 10},
             {"grid25": None, "images": None, "table": None},
             # workers: trials of 4 x 250 steps (~5 s): shorter ones measure mostly the fixed
             # per-trial costs (1.48 at 4 x 100 steps), not the parallel training
             {"n_trials": 16, "pruning_steps": 20, "epochs": 4, "steps": 250,
              "worker_trials": 8}, 150, "fashion_mnist",
             table_rows=10_000, table_columns=20, table_wide_columns=100, table_eval_reps=3,
             table_eval={},
             # the table's steps vary 10-21 ms from one repetition to the next on this shared
             # machine (14 +- 4 ms): shorter repetitions, more of them, for the fastest to be
             # the code's own
             train_reps={"table": 10})
QUICK = Sizes({"grid25": 40, "images": 10, "table": 10}, 1,
              {"grid25": 2, "images": 1, "table": 2},
              {"grid25": 1, "images": 1, "table": 1},
              {"grid25": 10, "images": 5, "table": 5},
              {"n_trials": 3, "pruning_steps": 2, "pruning_epochs": 4, "epochs": 2, "steps": 5,
               "worker_trials": 2}, 5, "digits",
              # 8 columns (28 pairs, 3 of them categorical); 24: 276 pairs, over MAX_PAIRS,
              # so that the subsampling rule runs too
              table_rows=300, table_columns=8, table_wide_columns=24, table_eval_reps=1,
              table_eval={"n_samples": 100, "every_n_epochs": 1, "full_every_n_epochs": 2})
# Which study each size's trials come from (their objective, for the table).
STUDIES = {"grid25": "grid25", "images": "fashion_mnist", "table": "table"}
ONLY = ("table",)  # what --only can run on its own


def study_config(study: str, overrides: dict[str, Any], tmp: Path) -> Config:
    """A study's base config (what its trials start from), with overrides, tracked in tmp."""
    base = load_study_file(PROJECT_ROOT / "studies" / f"{study}.yaml").base.to_dict()
    for section, values in overrides.items():
        base[section].update(values)
    base["tracking"].update(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="bench")
    base["train"].update(progress_bar=False)
    return config_from_dict(base)


def table_config(sizes: Sizes, tmp: Path, path: Path) -> Config:
    """The table study's base (2x256 G and D, PacGAN 8, hinge + R1, EMA, batch 128, its
    evaluation schedule) on the table at ``path``; the objective's metric in eval.always, as the
    study's Objective puts it there, so that the plain loop's light evaluations compute it too."""
    objective = load_study_file(PROJECT_ROOT / "studies" / "table.yaml").spec.objective
    return study_config("table", {
        "data": {"path": str(path)},
        "eval": {"always": [objective.metric.removeprefix(VAL_PREFIX)], **sizes.table_eval}}, tmp)


def configs(sizes: Sizes, tmp: Path, table: Path) -> dict[str, Config]:
    """grid25: its study's setting (3x128 G and D, hinge + R1, EMA, batch 256); images: 784-dim
    (or digits when quick), z of 100, G 256-512-1024, D 512-256, batch 64, non-saturating BCE,
    on the fashion_mnist study's base without its stabilizers (EMA, dropout, decay): the plain
    GAN step the issue sizes, whose matmuls the gflops figure counts; table: the table study's
    base on the 20-column table ``table``."""
    images_arch = {"latent_dim": 100, "g_hidden": [256, 512, 1024], "d_hidden": [512, 256],
                   "g_norm": "none", "d_dropout": 0.0}
    return {
        "grid25": study_config("grid25", {}, tmp),
        "images": study_config("fashion_mnist", {
            "data": {"name": sizes.images}, "model": images_arch,
            "train": {"batch_size": 64, "loss": "bce", "ema_decay": 0.0,
                      "lr_decay_start": 1.0},
            "eval": {"n_samples": 1000 if sizes.images == "digits" else 10_000}}, tmp),
        "table": table_config(sizes, tmp, table),
    }


def study_definition(sizes: Sizes, tmp: Path, *, name: str, pruner: dict[str, Any] | None,
                     n_trials: int, epochs: int | None, steps: int) -> StudyDefinition:
    """The grid25 study (its base config, search space, objective and, unless replaced, its
    pruner) with short epochs, a random sampler (so that two such studies try the same settings
    in the same order) and a temporary store."""
    shipped = load_study_file(PROJECT_ROOT / "studies" / "grid25.yaml")
    raw = yaml.safe_load(shipped.text)
    base = shipped.base.to_dict()
    base["train"]["steps_per_epoch"] = steps
    base["tracking"].update(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="bench")
    raw.update(name=name, base=base, config=None, enqueue=[],
               budget={"n_trials": n_trials, "epochs": epochs or base["train"]["epochs"]},
               sampler={"name": "random", "seed": 0})
    if pruner is not None:
        raw["pruner"] = pruner
    return parse_study(json.dumps(raw), default_name=name)


def trials_per_hour(study: optuna.Study) -> float:
    spans = [(t.datetime_start, t.datetime_complete) for t in study.trials]
    starts = [a for a, b in spans if a and b]
    ends = [b for a, b in spans if a and b]
    return 3600.0 * len(ends) / (max(ends) - min(starts)).total_seconds()


def workers_speedup(sizes: Sizes, tmp: Path) -> dict[str, float]:
    """Trials per hour of one study with 1 worker (both threads) and with 2 (one each)."""
    rates = {}
    for workers in (1, 2):
        defn = study_definition(sizes, tmp, name=f"workers{workers}", pruner={"name": "none"},
                                n_trials=sizes.study["worker_trials"],
                                epochs=sizes.study["epochs"], steps=sizes.study["steps"])
        journal = str(tmp / f"workers{workers}.journal")
        run_sweep(defn, workers=workers, storage=journal, progress=False)
        rates[workers] = trials_per_hour(optuna.load_study(study_name=defn.name,
                                                           storage=open_storage(journal)))
    return {"1": rates[1], "2": rates[2], "speedup": rates[2] / rates[1]}


def pruning(sizes: Sizes, tmp: Path) -> dict[str, float]:
    """The grid25 study as shipped (its epochs, search space and pruner) against the same study
    unpruned, both trying the same random settings; epochs shortened to a few steps each."""
    results = {}
    for label, pruner in (("pruned", None), ("unpruned", {"name": "none"})):
        defn = study_definition(sizes, tmp, name=f"pruning-{label}", pruner=pruner,
                                n_trials=sizes.study["n_trials"], epochs=sizes.study.get(
                                    "pruning_epochs"), steps=sizes.study["pruning_steps"])
        journal = str(tmp / f"{label}.journal")
        run_sweep(defn, workers=1, storage=journal, progress=False)
        study = optuna.load_study(study_name=defn.name, storage=open_storage(journal))
        epochs = sum(len(t.intermediate_values) for t in study.trials)
        results[label] = (epochs, study.best_value)
    return {
        "epoch_fraction": results["pruned"][0] / results["unpruned"][0],
        "best_ratio": results["pruned"][1] / results["unpruned"][1],
        "epochs_pruned": results["pruned"][0], "epochs_unpruned": results["unpruned"][0],
        "best_pruned": results["pruned"][1], "best_unpruned": results["unpruned"][1],
    }


def interleaved(variants: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """Seconds of each variant, run A B A B ... after one warm-up each: the fastest of its
    repetitions. On a shared machine another process only ever slows a run down (by 10% and
    more here, from one run to the next), so the minimum is the cost of the code itself."""
    for run in variants.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, run in variants.items():
            times[name].append(run())
    return {name: min(values) for name, values in times.items()}


def table_evaluations(sizes: Sizes, tmp: Path, cfg: Config,
                      files: dict[int, Path]) -> dict[str, dict[str, Any]]:
    """One full evaluation of ``eval.n_samples`` rows (the training split's, as a trained
    generator's would look) per table width, its light one and each metric family alone; the
    fastest of interleaved repetitions. And the pair rule each width's evaluator logs."""
    variants: dict[str, Callable[[], float]] = {}
    pairs: dict[str, str | None] = {}
    for columns, path in files.items():
        wide = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(path)))
        dataset = cached_dataset(wide.data, wide.train.seed)
        evaluator = cached_evaluator(wide.data, wide.eval, wide.train.seed, "cpu")
        pick = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(0))
        rows = dataset.train[pick[: wide.eval.n_samples]]
        width = f"{columns}_columns"
        pairs[width] = evaluator.pair_rule
        variants[f"{width}/full"] = partial(timed_evaluation, evaluator, rows, None)
        variants[f"{width}/light"] = partial(timed_evaluation, evaluator, rows,
                                             {*MAIN_METRICS, *wide.eval.always})
        for family in FAMILIES:
            if set(family.names) & set(evaluator.metrics):
                label = next((m.name for m in family.metrics if m.main), family.names[0])
                variants[f"{width}/{label}"] = partial(timed_evaluation, evaluator, rows,
                                                       {family.names[0]})
    times = interleaved(variants, sizes.table_eval_reps)
    breakdown: dict[str, dict[str, float]] = {}
    for name, seconds in times.items():
        width, part = name.split("/")
        breakdown.setdefault(width, {})[part] = seconds
    return {"table_eval_seconds": {w: parts["full"] for w, parts in breakdown.items()},
            "table_eval_breakdown": breakdown, "table_quality_pairs": pairs}


def timed_evaluation(evaluator: Evaluator, rows: torch.Tensor, only: set[str] | None) -> float:
    start = time.perf_counter()
    evaluator.evaluate(rows, only)
    return time.perf_counter() - start


def cpu_timed(variant: Callable[[], float], cpu_seconds: list[float]) -> float:
    """``variant``'s own result (its wall seconds); the CPU seconds this process spent on it
    appended to ``cpu_seconds``: another process's load barely moves those, only I/O waits and
    sleeps are missing from them."""
    start = time.process_time()
    wall = variant()
    cpu_seconds.append(time.process_time() - start)
    return wall


def run(sizes: Sizes, out_dir: Path, log: Callable[[str], None],
        only: str | None = None) -> dict[str, Any]:
    """Every measurement, or with ``only`` (one of ONLY) just that size's, merged into the
    results already in ``out_dir`` (the other keys kept; results.md says which were measured
    when). Writes results.json and results.md; returns the results written."""
    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    load = {"start": list(os.getloadavg())}  # uptime's 1, 5 and 15 minutes
    measured: dict[str, Any] = {"when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                                "run": f"--only {only}" if only else "full", "load_average": load}
    results: dict[str, Any] = {"quick": sizes is QUICK}
    with tempfile.TemporaryDirectory(prefix="fcgan-bench-") as tmp_name:
        tmp = Path(tmp_name)
        tables = {columns: write_table(tmp, sizes.table_rows, columns)
                  for columns in (sizes.table_columns, sizes.table_wide_columns)}
        cfgs = configs(sizes, tmp, tables[sizes.table_columns])
        if only is not None:
            cfgs = {only: cfgs[only]}
        get_client(next(iter(cfgs.values())).tracking.tracking_uri or "")  # the store, made once

        set_threads(1)  # as each of two sweep workers on two cores (BLAS pools too)
        results["train_ratio"], results["train_ms_per_step"] = {}, {}
        for kind, cfg in cfgs.items():
            steps = sizes.train_steps[kind]
            times = interleaved({"plain": partial(plain_train, cfg, steps),
                                 "project": partial(project_train, cfg, steps)},
                                sizes.train_reps.get(kind, sizes.reps))
            results["train_ratio"][kind] = times["plain"] / times["project"]
            results["train_ms_per_step"][kind] = {k: 1e3 * v / steps for k, v in times.items()}
            log(f"train {kind}: ratio {results['train_ratio'][kind]:.3f} "
                f"{results['train_ms_per_step'][kind]}")

        for key in ("trial_ratio", "eval_fraction", "trial_seconds", "trial_breakdown",
                    "trial_cpu_ratio"):
            results[key] = {}
        startups = []
        for kind, cfg in cfgs.items():
            cfg = with_train(cfg, epochs=sizes.trial_epochs[kind] or cfg.train.epochs,
                             steps_per_epoch=sizes.trial_steps[kind] or cfg.train.steps_per_epoch)
            objective = (load_study_file(PROJECT_ROOT / "studies" / f"{STUDIES[kind]}.yaml")
                         .spec.objective if kind == "table" else None)
            evaluator = cached_evaluator(cfg.data, cfg.eval, cfg.train.seed, "cpu")
            timings: list[TrialTiming] = []
            cpu: dict[str, list[float]] = {"plain": [], "project": []}
            times = interleaved({
                "plain": partial(cpu_timed, partial(plain_trial, cfg, evaluator), cpu["plain"]),
                "project": partial(cpu_timed, partial(project_trial, cfg, tmp, kind, timings,
                                                      objective), cpu["project"])},
                sizes.trial_reps[kind])
            results["trial_cpu_ratio"][kind] = min(cpu["plain"][1:]) / min(cpu["project"][1:])
            timing = timings[len(timings) // 2]  # a measured one, not the warm-up
            results["trial_ratio"][kind] = times["plain"] / times["project"]
            results["eval_fraction"][kind] = (
                timing.validation + timing.logging_outside_validation) / timing.wall
            results["trial_seconds"][kind] = times
            results["trial_breakdown"][kind] = {
                "wall": timing.wall, "fit_loop": timing.fit_loop,
                "validation": timing.validation,
                "logging_outside_validation": timing.logging_outside_validation,
                "outside_fit_loop": timing.wall - timing.fit_loop}
            if kind != "table":  # startup_seconds keeps its meaning: the 2-D and image trials
                startups += [t.wall - t.fit_loop for t in timings[1:]]
            log(f"trial {kind}: ratio {results['trial_ratio'][kind]:.3f}, eval fraction "
                f"{results['eval_fraction'][kind]:.3f}, {times}, "
                f"{results['trial_breakdown'][kind]}")
        if startups:
            results["startup_seconds"] = statistics.median(startups)
            log(f"startup {results['startup_seconds']:.3f} s")

        if "table" in cfgs:
            results.update(table_evaluations(sizes, tmp, cfgs["table"], tables))
            log(f"table evaluations: {results['table_eval_breakdown']}, "
                f"pairs {results['table_quality_pairs']}")

        if only is None:
            set_threads(2)
            workers = workers_speedup(sizes, tmp)
            results["workers_speedup"] = workers["speedup"]
            results["trials_per_hour"] = {"1 worker": workers["1"], "2 workers": workers["2"]}
            log(f"workers: {workers}")

            results["pruning"] = pruning(sizes, tmp)
            log(f"pruning: {results['pruning']}")

            set_threads(2)
            results["gflops"] = {"peak": matmul_peak(1.0 if sizes is QUICK else 4.0)}
            images = cfgs["images"]
            for batch in (64, 256):
                cfg = with_train(images, batch_size=batch)
                dataset = cached_dataset(cfg.data, cfg.train.seed)
                seconds = interleaved({"project": partial(project_train, cfg,
                                                          sizes.gflops_steps)},
                                      sizes.reps)["project"]
                results["gflops"][f"images_b{batch}"] = (
                    step_flops(cfg, dataset) * sizes.gflops_steps / seconds / 1e9)
                results["gflops"][f"images_b{batch}_matmuls"] = matmuls_only(
                    cfg, dataset, 0.5 if sizes is QUICK else 3.0)
            log(f"gflops: {results['gflops']}")
    load["end"] = list(os.getloadavg())
    measured["keys"] = measured_keys(results)
    results["measured"] = [measured]
    if only is not None:
        results = merge(read_results(out_dir), results)
    results["targets"] = {key: {"target": text, "met": bool(check(results[key]))}
                          for key, (text, check) in TARGETS.items() if key in results}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / "results.md").write_text(summary(results))
    return results


# Keys that hold one value per size: a run of one size replaces only that size's entry.
PER_SIZE = ("train_ratio", "train_ms_per_step", "trial_ratio", "eval_fraction", "trial_seconds",
            "trial_breakdown", "trial_cpu_ratio")
BOOKKEEPING = ("quick", "targets", "measured")


def measured_keys(results: dict[str, Any]) -> list[str]:
    """The keys a run measured, per size where a key has one value per size (train_ratio.table)."""
    keys: list[str] = []
    for key, value in results.items():
        if key in BOOKKEEPING:
            continue
        keys += [f"{key}.{size}" for size in value] if key in PER_SIZE else [key]
    return keys


def read_results(out_dir: Path) -> dict[str, Any]:
    """The results.json in ``out_dir``, or none yet."""
    path = out_dir / "results.json"
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path}: not JSON ({exc}); --only merges into a benchmark's "
                         "results") from None
    if not isinstance(results, dict):
        raise BenchError(f"{path}: not a benchmark's results (a JSON object)")
    return results


def merge(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` over ``old``: per-size keys merged size by size, the others replaced; each earlier
    record of what was measured keeps the keys that ``new`` did not measure again."""
    if old and old.get("quick") != new["quick"]:
        raise BenchError("results.json holds a " + ("quick" if old.get("quick") else "full")
                         + " run: merging a " + ("quick" if new["quick"] else "full")
                         + " one into it would mix toy and real numbers (use another --out)")
    merged = {k: v for k, v in old.items() if k not in ("targets", "measured")}
    for key, value in new.items():
        if key in PER_SIZE and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        elif key != "measured":
            merged[key] = value
    history = old.get("measured") or (
        [{"when": None, "run": "an earlier run", "keys": measured_keys(old)}] if old else [])
    again = {k for record in new["measured"] for k in record["keys"]}
    kept = [{**record, "keys": [k for k in record["keys"] if k not in again]}
            for record in history]
    merged["measured"] = [r for r in kept if r["keys"]] + new["measured"]
    return merged


class BenchError(Exception):
    """A benchmark that cannot run as asked: one line for the command to print."""


def summary(results: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["# Benchmark" + (" (quick mode: sizes too small to mean anything)"
                              if results["quick"] else ""), "",
             f"{os.cpu_count()} cores; `python -m bench.bench`.", "",
             "| key | measured | target | met |", "|---|---|---|---|"]
    for key, target in results["targets"].items():
        met = "yes" if target["met"] else "**no**"
        lines.append(f"| `{key}` | {fmt(results[key])} | {target['target']} | {met} |")
    lines += ["", "Details:", ""]
    for key in ("train_ms_per_step", "trial_seconds", "trial_cpu_ratio", "trial_breakdown",
                "trials_per_hour",
                "table_eval_seconds", "table_quality_pairs"):
        if key in results:
            lines.append(f"- `{key}`: {fmt(results[key])}")
    for width, parts in results.get("table_eval_breakdown", {}).items():
        lines.append(f"- `table_eval_breakdown.{width}` (seconds): {fmt(parts)}")
    lines += ["", "Measured:", ""]
    for record in results.get("measured", []):
        when = record["when"] or "time not recorded"
        load = record.get("load_average")
        seen = (f", load average {load['start'][0]:.1f} at the start, {load['end'][0]:.1f} at "
                f"the end" if load else "")
        lines.append(f"- {when} ({record['run']}{seen}): {grouped(record['keys'])}")
    return "\n".join(lines) + "\n"


def grouped(keys: list[str]) -> str:
    """[train_ratio.grid25, train_ratio.table, pruning] -> `train_ratio` (grid25, table),
    `pruning`."""
    sizes: dict[str, list[str]] = {}
    for key in keys:
        top, _, size = key.partition(".")
        sizes.setdefault(top, []).extend([size] if size else [])
    return ", ".join(f"`{top}`" + (f" ({', '.join(s)})" if s else "")
                     for top, s in sizes.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes, seconds long (checks that it runs; numbers meaningless)")
    parser.add_argument("--only", choices=ONLY,
                        help="just this size's measurements, merged into the results in --out")
    parser.add_argument("--out", default="bench", help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    sizes = QUICK if args.quick else FULL
    try:
        if args.only is not None:  # before minutes of measuring, not after
            merge(read_results(out), {"quick": sizes is QUICK, "measured": []})
        run(sizes, out, partial(print, file=sys.stderr, flush=True), args.only)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out / "results.json", out / "results.md", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
