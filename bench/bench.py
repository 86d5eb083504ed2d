"""``python -m bench.bench`` (``make bench``): how close the project's trials (bench/project.py)
come to a plain PyTorch loop (bench/plain.py) and to the hardware, variants interleaved so that
machine noise cancels. Writes ``bench/results.json`` (keys below) and ``results.md``; prints both.

- ``train_ratio``: training steps/s of the project's LightningModule in its Trainer as a sweep
  configures it (MLflow logging and callbacks on, one thread as each of two workers has), over
  the plain loop: same networks, fused Adam, losses and batches.
- ``trial_ratio``: the same for one whole trial (a real Optuna trial through the study's
  objective: MLflow run, params, evaluation every epoch, pictures, weights, pruning reports)
  against the plain loop running the same evaluations with the same metrics code.
- ``eval_fraction``: evaluation plus MLflow logging, as a share of the trial's wall time (how
  the logging outside validation is timed: bench/project.py).
- ``startup_seconds``: a trial's fixed cost outside Lightning's fit loop, in a running worker.
- ``workers_speedup``: trials/hour of a small study with 2 worker processes over 1, from trial
  timestamps (steady state: a worker's one-off imports are not a per-trial cost).
- ``pruning``: epochs the grid25 study (its pruner, epochs and search space; short epochs) spends
  over the same study unpruned (same random-sampler seed, so both try the same settings), and
  the ratio of their best objectives.
- ``gflops``: achieved GFLOP/s of the project's training step at the image size (counted from
  the layer sizes, both threads) and the machine's large-matmul peak measured in this run; and
  (``*_matmuls``) the same step's matmuls timed alone, the most the step could reach.

``--quick``: every measurement at toy sizes, in a minute (for the tests); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml

from bench.flops import matmul_peak, matmuls_only, step_flops
from bench.plain import plain_train, plain_trial
from bench.project import TrialTiming, project_train, project_trial, with_train
from pipeline.config import PROJECT_ROOT, Config, config_from_dict
from pipeline.logs import quiet_libraries
from pipeline.prepare import cached_dataset, cached_evaluator
from pipeline.study.spec import StudyDefinition, load_study_file, parse_study
from pipeline.study.store import open_storage
from pipeline.study.sweep import run_sweep
from pipeline.tracking import get_client

TARGETS = {  # key -> (description, check)
    "train_ratio": (">= 0.95 at both sizes", lambda v: min(v.values()) >= 0.95),
    "trial_ratio": (">= 0.90 at both sizes", lambda v: min(v.values()) >= 0.90),
    "eval_fraction": ("<= 0.10", lambda v: max(v.values()) <= 0.10),
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
    trial_epochs: dict[str, int]  # epochs of a benchmarked trial (images: of the full data)
    trial_reps: dict[str, int]  # repetitions of the whole-trial comparison
    trial_steps: dict[str, int | None]  # steps per epoch (None = the study's own)
    study: dict[str, int]  # sizes of the workers and pruning studies
    gflops_steps: int
    images: str  # the image dataset: fashion_mnist, or digits in quick mode


# images trials: 5 epochs of Fashion-MNIST (~70 s), the fashion_mnist study's cycle of four
# light evaluations and one full one (its trials are two such cycles), so that evaluation weighs
# in a benchmarked trial what it weighs in the study's.
FULL = Sizes({"grid25": 2000, "images": 200}, 5, {"grid25": 32, "images": 5},
             {"grid25": 5, "images": 2}, {"grid25": None, "images": None},
             # workers: trials of 4 x 250 steps (~5 s): shorter ones measure mostly the fixed
             # per-trial costs (1.48 at 4 x 100 steps), not the parallel training
             {"n_trials": 16, "pruning_steps": 20, "epochs": 4, "steps": 250,
              "worker_trials": 8}, 150, "fashion_mnist")
QUICK = Sizes({"grid25": 40, "images": 10}, 1, {"grid25": 2, "images": 1},
              {"grid25": 1, "images": 1}, {"grid25": 10, "images": 5},
              {"n_trials": 3, "pruning_steps": 2, "pruning_epochs": 4, "epochs": 2, "steps": 5,
               "worker_trials": 2}, 5, "digits")


def study_config(study: str, overrides: dict[str, Any], tmp: Path) -> Config:
    """A study's base config (what its trials start from), with overrides, tracked in tmp."""
    base = load_study_file(PROJECT_ROOT / "studies" / f"{study}.yaml").base.to_dict()
    for section, values in overrides.items():
        base[section].update(values)
    base["tracking"].update(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="bench")
    base["train"].update(progress_bar=False)
    return config_from_dict(base)


def configs(sizes: Sizes, tmp: Path) -> dict[str, Config]:
    """grid25: its study's setting (3x128 G and D, hinge + R1, EMA, batch 256); images: 784-dim
    (or digits when quick), z of 100, G 256-512-1024, D 512-256, batch 64, non-saturating BCE,
    on the fashion_mnist study's base without its stabilizers (EMA, dropout, decay): the plain
    GAN step the issue sizes, whose matmuls the gflops figure counts."""
    images_arch = {"latent_dim": 100, "g_hidden": [256, 512, 1024], "d_hidden": [512, 256],
                   "g_norm": "none", "d_dropout": 0.0}
    return {
        "grid25": study_config("grid25", {}, tmp),
        "images": study_config("fashion_mnist", {
            "data": {"name": sizes.images}, "model": images_arch,
            "train": {"batch_size": 64, "loss": "bce", "ema_decay": 0.0,
                      "lr_decay_start": 1.0},
            "eval": {"n_samples": 1000 if sizes.images == "digits" else 10_000}}, tmp),
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


def run(sizes: Sizes, out_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, Any] = {"quick": sizes is QUICK}
    with tempfile.TemporaryDirectory(prefix="fcgan-bench-") as tmp_name:
        tmp = Path(tmp_name)
        cfgs = configs(sizes, tmp)
        get_client(cfgs["grid25"].tracking.tracking_uri or "")  # the store, made once

        torch.set_num_threads(1)  # as each of two sweep workers on two cores
        results["train_ratio"], results["train_ms_per_step"] = {}, {}
        for kind, cfg in cfgs.items():
            steps = sizes.train_steps[kind]
            times = interleaved({"plain": partial(plain_train, cfg, steps),
                                 "project": partial(project_train, cfg, steps)}, sizes.reps)
            results["train_ratio"][kind] = times["plain"] / times["project"]
            results["train_ms_per_step"][kind] = {k: 1e3 * v / steps for k, v in times.items()}
            log(f"train {kind}: ratio {results['train_ratio'][kind]:.3f} "
                f"{results['train_ms_per_step'][kind]}")

        results["trial_ratio"], results["eval_fraction"], results["trial_seconds"] = {}, {}, {}
        startups = []
        for kind, cfg in cfgs.items():
            cfg = with_train(cfg, epochs=sizes.trial_epochs[kind],
                             steps_per_epoch=sizes.trial_steps[kind] or cfg.train.steps_per_epoch)
            evaluator = cached_evaluator(cfg.data, cfg.eval, cfg.train.seed, "cpu")
            timings: list[TrialTiming] = []
            times = interleaved({"plain": partial(plain_trial, cfg, evaluator),
                                 "project": partial(project_trial, cfg, tmp, kind, timings)},
                                sizes.trial_reps[kind])
            timing = timings[len(timings) // 2]  # a measured one, not the warm-up
            results["trial_ratio"][kind] = times["plain"] / times["project"]
            results["eval_fraction"][kind] = (
                timing.validation + timing.logging_outside_validation) / timing.wall
            results["trial_seconds"][kind] = times
            startups += [t.wall - t.fit_loop for t in timings[1:]]
            log(f"trial {kind}: ratio {results['trial_ratio'][kind]:.3f}, eval fraction "
                f"{results['eval_fraction'][kind]:.3f}, {times}")
        results["startup_seconds"] = statistics.median(startups)
        log(f"startup {results['startup_seconds']:.3f} s")

        torch.set_num_threads(2)
        workers = workers_speedup(sizes, tmp)
        results["workers_speedup"] = workers["speedup"]
        results["trials_per_hour"] = {"1 worker": workers["1"], "2 workers": workers["2"]}
        log(f"workers: {workers}")

        results["pruning"] = pruning(sizes, tmp)
        log(f"pruning: {results['pruning']}")

        torch.set_num_threads(2)
        results["gflops"] = {"peak": matmul_peak(1.0 if sizes is QUICK else 4.0)}
        images = cfgs["images"]
        for batch in (64, 256):
            cfg = with_train(images, batch_size=batch)
            dataset = cached_dataset(cfg.data, cfg.train.seed)
            seconds = interleaved({"project": partial(project_train, cfg, sizes.gflops_steps)},
                                  sizes.reps)["project"]
            results["gflops"][f"images_b{batch}"] = (
                step_flops(cfg, dataset) * sizes.gflops_steps / seconds / 1e9)
            results["gflops"][f"images_b{batch}_matmuls"] = matmuls_only(
                cfg, dataset, 0.5 if sizes is QUICK else 3.0)
        log(f"gflops: {results['gflops']}")
    results["targets"] = {key: {"target": text, "met": bool(check(results[key]))}
                          for key, (text, check) in TARGETS.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (out_dir / "results.md").write_text(summary(results))
    return results


def summary(results: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, dict):
            return ", ".join(f"{k} {fmt(v)}" for k, v in value.items())
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["# Benchmark" + (" (quick mode: sizes too small to mean anything)"
                              if results["quick"] else ""), "",
             f"{torch.get_num_threads()} threads available; `python -m bench.bench`.", "",
             "| key | measured | target | met |", "|---|---|---|---|"]
    for key, target in results["targets"].items():
        met = "yes" if target["met"] else "**no**"
        lines.append(f"| `{key}` | {fmt(results[key])} | {target['target']} | {met} |")
    lines += ["", "Details:", ""]
    for key in ("train_ms_per_step", "trial_seconds", "trials_per_hour"):
        lines.append(f"- `{key}`: {fmt(results[key])}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes, seconds long (checks that it runs; numbers meaningless)")
    parser.add_argument("--out", default="bench", help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    run(QUICK if args.quick else FULL, out, partial(print, file=sys.stderr, flush=True))
    print(out / "results.json", out / "results.md", sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
