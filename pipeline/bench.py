"""``python -m pipeline.bench``: how close the project's trials come to a hand-written loop and to
the hardware, in one run, with the variants interleaved so that machine noise cancels.

Writes ``bench/results.json`` (the keys below) and ``bench/results.md``, and prints both paths.

- ``train_ratio``: training steps/s of the project's LightningModule in its Trainer, as a sweep
  configures it (MLflow logging and callbacks on, one thread as each of two workers has), over
  the best plain PyTorch loop written here: same networks, fused Adam, losses and batches.
- ``trial_ratio``: the same for one whole trial (a real Optuna trial through the study's
  objective: MLflow run, params, evaluation every epoch, pictures, weights, pruning reports)
  against the plain loop running the same evaluations with the same metrics code.
- ``eval_fraction``: evaluation plus MLflow logging, as a share of the trial's wall time.
- ``startup_seconds``: a trial's fixed cost outside Lightning's fit loop, in a running worker.
- ``workers_speedup``: trials/hour of a small study with 2 worker processes over 1, from trial
  timestamps (steady state: a worker's one-off imports are not a per-trial cost).
- ``pruning``: epochs the grid25 study (its pruner, epochs and search space; short epochs) spends
  over the same study unpruned (same random-sampler seed, so both try the same settings), and
  the ratio of their best objectives.
- ``gflops``: achieved GFLOP/s of the project's training step at the image size (counted from
  the layer sizes, both threads) and the machine's large-matmul peak measured in this run; and
  (``*_matmuls``) the same step's matmuls timed alone, the most the step could reach.

``--quick`` runs every measurement at toy sizes in seconds (for the test suite): its numbers
mean nothing.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import optuna
import torch

from pipeline import train as train_module
from pipeline.callbacks import MlflowMetrics, StopOnRequest
from pipeline.config import PROJECT_ROOT, Config, config_from_dict
from pipeline.data import Dataset, TensorBatches
from pipeline.logs import quiet_libraries
from pipeline.losses import LOSSES
from pipeline.metrics import Evaluator
from pipeline.metrics.registry import MAIN_METRICS, light_metrics_at
from pipeline.module import lr_factor
from pipeline.networks import Discriminator, Generator
from pipeline.study import objective as objective_module
from pipeline.study.spec import StudyDefinition, parse_study
from pipeline.study.store import create_or_load, open_storage
from pipeline.study.sweep import run_sweep
from pipeline.tracking import RunLogger, get_client, mlflow_run, start_run
from pipeline.train import (
    STEPS_PER_BATCH,
    build_module,
    cached_dataset,
    cached_evaluator,
    discriminator_kwargs,
    generator_kwargs,
    make_trainer,
)

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


# --- configurations ------------------------------------------------------------------------------


def study_config(study: str, overrides: dict[str, Any], tmp: Path) -> Config:
    """A study's base config (what its trials start from), with overrides, tracked in tmp."""
    from pipeline.study.spec import load_study_file

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


def with_train(cfg: Config, **train: Any) -> Config:
    data = cfg.to_dict()
    data["train"].update(train)
    return config_from_dict(data)


# --- the best plain loop -------------------------------------------------------------------------


class PlainGAN:
    """The same training as the module, written as directly as PyTorch allows: fused Adam,
    grads set to None, D's parameters frozen by flag in G's step, EMA with one foreach lerp,
    the learning rate set in place, no syncs."""

    def __init__(self, cfg: Config, dataset: Dataset, device: str = "cpu") -> None:
        t = cfg.train
        torch.manual_seed(t.seed)
        self.g = Generator(**generator_kwargs(cfg.model, dataset)).to(device)
        self.d = Discriminator(**discriminator_kwargs(cfg.model, dataset)).to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=t.g_lr,
                                      betas=(t.g_betas[0], t.g_betas[1]), fused=True)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=t.d_lr,
                                      betas=(t.d_betas[0], t.d_betas[1]), fused=True)
        self.loss = LOSSES[t.loss]
        self.gp_weight, self.n_critic = t.gp_weight, t.n_critic
        self.d_params = list(self.d.parameters())
        self.joint = not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                             for m in self.d.modules())
        self.ema: list[torch.Tensor] | None = None
        self.ema_decay = t.ema_decay
        if t.ema_decay > 0:
            self.ema_g = Generator(**generator_kwargs(cfg.model, dataset)).to(device)
            self.ema_g.load_state_dict(self.g.state_dict())
            self.ema = list(self.ema_g.parameters())
        self.lrs = (t.g_lr, t.d_lr)
        self.decay_start, self.total = t.lr_decay_start, 0
        self.steps = 0
        self.z_dim = cfg.model.latent_dim
        self.device = device

    def step(self, real: torch.Tensor) -> None:
        n = len(real)
        with torch.no_grad():
            fake = self.g(torch.randn(n, self.z_dim, device=self.device))
        if self.joint and n % self.d.pack == 0:  # one pass over real and fake (no BatchNorm)
            logits = self.d(torch.cat([real, fake]))
            real_logits, fake_logits = logits.split([len(logits) // 2, len(logits) // 2])
        else:
            real_logits, fake_logits = self.d(real), self.d(fake)
        d_loss = self.loss.d_loss(real_logits, fake_logits)
        if self.loss.penalty is not None:
            d_loss = d_loss + self.gp_weight * self.loss.penalty(self.d, real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        self.steps += 1
        if self.steps % self.n_critic == 0:
            for p in self.d_params:
                p.requires_grad = False
            g_loss = self.loss.g_loss(self.d(self.g(torch.randn(n, self.z_dim,
                                                                device=self.device))))
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            for p in self.d_params:
                p.requires_grad = True
            if self.ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(self.ema, list(self.g.parameters()), 1 - self.ema_decay)
        if self.decay_start < 1.0:
            factor = lr_factor(self.steps, self.total, self.decay_start)
            for opt, lr in zip((self.opt_g, self.opt_d), self.lrs, strict=True):
                opt.param_groups[0]["lr"] = lr * factor

    @torch.no_grad()
    def samples(self, z: torch.Tensor) -> torch.Tensor:
        g = self.ema_g if self.ema is not None else self.g
        g.eval()
        out = g(z)
        g.train()
        return out


def plain_train(cfg: Config, steps: int) -> float:
    """Seconds for ``steps`` GAN steps of the plain loop."""
    dataset = cached_dataset(cfg.data, cfg.train.seed)
    gan = PlainGAN(cfg, dataset)
    gan.total = steps
    batches = TensorBatches(dataset.train, cfg.train.batch_size, seed=cfg.train.seed, steps=steps)
    start = time.perf_counter()
    for real in batches:
        gan.step(real)
    return time.perf_counter() - start


def plain_trial(cfg: Config, evaluator: Evaluator) -> float:
    """Seconds for a whole trial of the plain loop: the same epochs, steps and evaluations."""
    start = time.perf_counter()
    dataset = cached_dataset(cfg.data, cfg.train.seed)
    gan = PlainGAN(cfg, dataset)
    t = cfg.train
    batches = TensorBatches(dataset.train, t.batch_size, seed=t.seed, steps=t.steps_per_epoch)
    gan.total = t.epochs * batches.steps
    eval_z = torch.randn(cfg.eval.n_samples, cfg.model.latent_dim,
                         generator=torch.Generator().manual_seed(t.seed + 2))
    # The module's schedule: every metric every full_every_n_epochs and at the last epoch, the
    # main ones (and eval.always) in between.
    light = {*MAIN_METRICS, *cfg.eval.always}
    for epoch in range(1, t.epochs + 1):
        for real in batches:
            gan.step(real)
        if epoch % cfg.eval.every_n_epochs == 0:
            evaluator.evaluate(gan.samples(eval_z), light_metrics_at(
                epoch, t.epochs, cfg.eval.full_every_n_epochs, light))
    return time.perf_counter() - start


# --- the project's side ------------------------------------------------------------------------


def project_train(cfg: Config, steps: int) -> float:
    """Seconds for ``steps`` GAN steps of the module in its Trainer, as a sweep runs it: the fit
    loop's time (Lightning's one-off set-up is a trial's fixed cost: startup_seconds)."""
    dataset = cached_dataset(cfg.data, cfg.train.seed)
    cfg = with_train(cfg, epochs=1)
    module = build_module(cfg, dataset, evaluator=None, steps_per_epoch=steps)
    batches = TensorBatches(dataset.train, cfg.train.batch_size, seed=cfg.train.seed,
                            steps=steps, chunk=STEPS_PER_BATCH)
    uri = cfg.tracking.tracking_uri or ""
    with mlflow_run(uri, cfg.tracking.experiment, run_name="bench train") as run:
        tracker = MlflowMetrics(run, dataset, sample_every_n_epochs=cfg.train.sample_every_n_epochs)
        stopwatch = Stopwatch()
        trainer = make_trainer(cfg, "cpu", [tracker, StopOnRequest(), stopwatch])
        trainer.fit(module, train_dataloaders=batches)
        return stopwatch.fit_seconds


class Stopwatch(L.Callback):
    """Lightning's fit loop and the validation windows inside it (evaluation, its logging,
    pictures, pruning reports). Last in the callback list, so it closes a window after every
    other callback has logged in it."""

    def __init__(self) -> None:
        self.fit_seconds = 0.0
        self.validation_seconds = 0.0
        self.validating = False
        self._t0 = self._v0 = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds = time.perf_counter() - self._t0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._v0 = time.perf_counter()
        self.validating = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validation_seconds += time.perf_counter() - self._v0
        self.validating = False


@dataclass
class TrialTiming:
    wall: float
    fit_loop: float  # Lightning's fit loop, validation included
    validation: float
    logging_outside_validation: float  # MLflow writes and pictures outside validation windows


@contextmanager
def timed_logging(stopwatch: Stopwatch) -> Iterator[list[float]]:
    """Time every MLflow write of the run outside validation windows (params, losses flushed at
    epoch ends, the final picture, the weights)."""
    spent = [0.0]
    names = ("log_params", "log_metrics", "log_metric_points", "set_tags", "log_figure",
             "log_image", "log_text", "log_dir")
    originals = {name: getattr(RunLogger, name) for name in names}

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(self: RunLogger, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                if not stopwatch.validating:
                    spent[0] += time.perf_counter() - start
        return timed

    for name, method in originals.items():
        setattr(RunLogger, name, wrap(method))
    try:
        yield spent
    finally:
        for name, method in originals.items():
            setattr(RunLogger, name, method)


def timed_trial(cfg: Config, tmp: Path, kind: str, timings: list[TrialTiming]) -> float:
    timing = project_trial(cfg, tmp, f"trial-{kind}-{len(timings)}")
    timings.append(timing)
    return timing.wall


def trial_definition(cfg: Config, name: str) -> StudyDefinition:
    """A study whose one trial is exactly ``cfg`` (a one-choice parameter samples nothing else),
    pruned as the grid25 study prunes."""
    text = json.dumps({
        "base": cfg.to_dict(),
        "budget": {"n_trials": 1},
        "objective": {"metric": "val/fid", "direction": "minimize"},
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "median", "n_startup_trials": 5},
        "search_space": {"train.seed": {"type": "categorical", "choices": [cfg.train.seed]}},
    })
    return parse_study(text, default_name=name)


def project_trial(cfg: Config, tmp: Path, name: str) -> TrialTiming:
    """One real trial in a running worker: Optuna study, objective, fit, MLflow, pruning."""
    defn = trial_definition(cfg, name)
    study, _ = create_or_load(defn, str(tmp / f"{name}.journal"))
    uri = cfg.tracking.tracking_uri or ""
    parent = start_run(get_client(uri), "bench", run_name=f"bench {name}")
    stopwatch = Stopwatch()
    objective = objective_module.Objective(defn, parent, uri, threads=1, device="cpu")
    real_fit = train_module.fit

    def fit_with_watch(cfg: Config, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), stopwatch]
        return real_fit(cfg, **kwargs)

    train_module.fit = fit_with_watch  # type: ignore[assignment]  # the objective's fit
    try:
        with timed_logging(stopwatch) as logging_spent:
            start = time.perf_counter()
            study.optimize(objective, n_trials=1)
            wall = time.perf_counter() - start
    finally:
        train_module.fit = real_fit  # type: ignore[assignment]
    trial = study.trials[-1]
    if trial.state != optuna.trial.TrialState.COMPLETE:
        raise RuntimeError(f"benchmark trial {name} ended {trial.state.name}")
    return TrialTiming(wall, stopwatch.fit_seconds, stopwatch.validation_seconds,
                       logging_spent[0])


# --- studies -----------------------------------------------------------------------------------


def study_definition(sizes: Sizes, tmp: Path, *, name: str, pruner: dict[str, Any] | None,
                     n_trials: int, epochs: int | None, steps: int) -> StudyDefinition:
    """The grid25 study (its base config, search space, objective and, unless replaced, its
    pruner) with short epochs, a random sampler (so that two such studies try the same settings
    in the same order) and a temporary store."""
    import yaml

    from pipeline.study.spec import load_study_file

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


# --- FLOPs ---------------------------------------------------------------------------------------


def step_matmuls(cfg: Config, dataset: Dataset) -> list[tuple[int, int, int]]:
    """The (m, k, n) of every matmul in one GAN step (D step + G step), from the layer sizes.

    Per linear layer a->b on r rows: forward (r, a) x (a, b), weight gradient (b, r) x (r, a),
    input gradient (r, b) x (b, a) (not for a first layer whose input needs no gradient). D step:
    G forward (no grad), D forward and backward on real and fake in one pass. G step: G and D
    forward, D's input gradients only (its weights are frozen), G's backward. D sees rows of
    ``pack`` samples.
    """
    m = cfg.model
    n = cfg.train.batch_size
    g = list(itertools.pairwise([m.latent_dim, *m.g_hidden, dataset.dim]))
    d = list(itertools.pairwise([dataset.dim * m.pack, *m.d_hidden, 1]))
    d_rows = n // m.pack
    return [
        *[(n, a, b) for a, b in g],  # D step: G forward
        *[(2 * d_rows, a, b) for a, b in d],  # D forward, real and fake
        *[(b, 2 * d_rows, a) for a, b in d],  # D weight gradients
        *[(2 * d_rows, b, a) for a, b in d[1:]],  # D input gradients
        *[(n, a, b) for a, b in g], *[(d_rows, a, b) for a, b in d],  # G step: forwards
        *[(d_rows, b, a) for a, b in d],  # D input gradients, down to G's output
        *[(b, n, a) for a, b in g],  # G weight gradients
        *[(n, b, a) for a, b in g[1:]],  # G input gradients
    ]


def step_flops(cfg: Config, dataset: Dataset) -> float:
    """Matmul FLOPs of one GAN step: 2mkn for each of step_matmuls."""
    return float(sum(2 * m * k * n for m, k, n in step_matmuls(cfg, dataset)))


def matmuls_only(cfg: Config, dataset: Dataset, seconds: float) -> float:
    """GFLOP/s of a step's matmuls alone (contiguous operands, nothing between them): the
    ceiling of the step's own figure, since everything else in it (Adam, activations, autograd's
    bookkeeping) adds time and no counted FLOPs."""
    shapes = step_matmuls(cfg, dataset)
    operands = [(torch.randn(m, k), torch.randn(k, n)) for m, k, n in shapes]
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for a, b in operands:
            torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return step_flops(cfg, dataset) / best / 1e9


def matmul_peak(seconds: float = 3.0) -> float:
    """GFLOP/s of large float32 matmuls on all threads: the best of several."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = 0.0
    deadline = time.perf_counter() + seconds
    a @ b
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


# --- the run -----------------------------------------------------------------------------------


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
                                 "project": partial(timed_trial, cfg, tmp, kind, timings)},
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
             f"{torch.get_num_threads()} threads available; `python -m pipeline.bench`.", "",
             "| key | measured | target | met |", "|---|---|---|---|"]
    for key, target in results["targets"].items():
        met = "yes" if target["met"] else "**no**"
        lines.append(f"| `{key}` | {fmt(results[key])} | {target['target']} | {met} |")
    lines += ["", "Details:", ""]
    for key in ("train_ms_per_step", "trial_seconds", "trials_per_hour"):
        lines.append(f"- `{key}`: {fmt(results[key])}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes, seconds long (checks that it runs; numbers meaningless)")
    parser.add_argument("--out", default="bench", help="folder for results.json and results.md")
    args = parser.parse_args(argv)
    out = Path(args.out)
    run(QUICK if args.quick else FULL, out, lambda line: print(line, file=sys.stderr,
                                                                flush=True))
    print(out / "results.json")
    print(out / "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
