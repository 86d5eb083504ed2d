"""The LightningModule: a generator and a discriminator trained with manual optimization.

A Lightning "batch" is a chunk of several GAN steps (a (k, B, D) tensor sliced from the data in
memory): Lightning's loop costs ~0.7 ms per batch, a fifth of a small MLP's step, and a chunk
pays it once for k steps. Everything per step (the D step, the G step every n_critic D steps,
the EMA of G, the learning-rate schedule, the running means of the losses) happens inside
``training_step`` exactly as it would with one step per batch, so results do not depend on k.

Validation is the evaluation of the generator: its "dataloader" yields a fixed set of latent
vectors, ``validation_step`` generates from them, and the epoch end scores the samples with the
evaluator (FID, mode collapse, ...). Running it as Lightning's validation loop gives eval mode,
no_grad, ``check_val_every_n_epoch`` and Optuna's pruning callback for free.

One job, over 300 lines: the steps, the EMA, the schedule, the checkpointed state and the
evaluation are hooks of the one LightningModule, which Lightning calls on the same object.

One job past 300 lines: the training step, its schedules and the evaluation hooks are the one
LightningModule.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import lightning.pytorch as L
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.losses import LOSSES
from pipeline.metrics.registry import EVAL_SECONDS, light_metrics_at, val_key
from pipeline.networks import Discriminator, Generator

FULL_PRECISION = ("32-true", "32", "64-true", "64", "bf16-mixed", "bf16-true")  # no loss scaling


def lr_factor(step: int, total_steps: int, decay_start: float) -> float:
    """The learning rates' factor after ``step`` steps: constant, then a linear decay to zero
    over the last (1 - decay_start) of ``total_steps``."""
    start = decay_start * total_steps
    if step < start or total_steps <= start:
        return 1.0
    return max(0.0, (total_steps - step) / (total_steps - start))


class SampleEvaluator(Protocol):
    def evaluate(self, fake: Tensor, only: set[str] | None = None) -> dict[str, float]: ...


class GANModule(L.LightningModule):
    fixed_z: Tensor

    def __init__(
        self,
        generator: Generator,
        discriminator: Discriminator,
        *,
        loss: str,
        n_critic: int,
        gp_weight: float,
        g_lr: float,
        d_lr: float,
        g_betas: Sequence[float],
        d_betas: Sequence[float],
        ema_decay: float,
        lr_decay_start: float,
        total_steps: int,
        log_every_n_steps: int,
        evaluator: SampleEvaluator | None,
        full_every_n_epochs: int | None,
        light_metrics: set[str] | None,
        n_picture: int,
        picture_seed: int,
    ) -> None:
        """Settings as in the config (TrainConfig, EvalConfig), which holds their one default."""
        super().__init__()
        self.automatic_optimization = False
        self.generator = generator
        self.discriminator = discriminator
        self.loss = LOSSES[loss]
        self.n_critic = n_critic
        self.gp_weight = gp_weight
        self.g_lr, self.d_lr = g_lr, d_lr
        self.g_betas = (float(g_betas[0]), float(g_betas[1]))
        self.d_betas = (float(d_betas[0]), float(d_betas[1]))
        # Polyak/EMA averaging of G's weights: the averaged G is the one evaluated, pictured and
        # exported; SGD noise in the live G smears samples between the modes.
        self.g_ema: AveragedModel | None = None
        self.ema_decay = ema_decay
        if ema_decay > 0:
            self.g_ema = AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(ema_decay),
                                       use_buffers=True).requires_grad_(False)
        self._ema_pairs: tuple[list[Tensor], list[Tensor], list[tuple[Tensor, Tensor]]] | None
        self._ema_pairs = None
        self.lr_decay_start = lr_decay_start
        self.total_steps = total_steps
        self.log_every = log_every_n_steps
        self.evaluator = evaluator
        self.full_every = full_every_n_epochs
        self.light_metrics = light_metrics
        # The same z every time, so successive sample pictures show the same latent points move.
        z = torch.randn(n_picture, generator.latent_dim,
                        generator=torch.Generator().manual_seed(picture_seed))
        self.register_buffer("fixed_z", z)
        # The training statistics of the current logging interval, as detached 0-d tensors:
        # averaged once per interval, so a step launches no kernel and waits for no sync for
        # them. Kept in checkpoints, so a resumed run logs the same means.
        self._d_stats: list[Tensor] = []  # d_loss per step
        self._logits: list[tuple[Tensor, Tensor]] = []  # D's real and fake logits per step
        self._g_stats: list[Tensor] = []
        # Real and fake through D in one pass, when no BatchNorm layer sees the batch (with
        # packing, each pack still holds only real or only fake samples: n is a multiple).
        self.joint_d_pass = not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                    for m in discriminator.modules())
        self._d_params = list(discriminator.parameters())
        self.steps = 0  # GAN steps (D steps) so far: the clock of n_critic, the schedule, logs
        self.g_steps = 0
        # (step, {train/<name>: tensor}) per finished interval; the MLflow callback drains it.
        self.pending_logs: list[tuple[int, dict[str, Tensor]]] = []
        self._val_chunks: list[Tensor] = []
        self.last_eval: dict[str, float] = {}  # the latest evaluation, keys val/<name>

    @property
    def evaluated_generator(self) -> Generator:
        """The generator that is evaluated, pictured and exported: the EMA one when enabled."""
        return self.g_ema.module if self.g_ema is not None else self.generator  # type: ignore

    def forward(self, z: Tensor) -> Tensor:
        return self.evaluated_generator(z)

    def configure_optimizers(self) -> Any:
        # fused Adam: one kernel for all parameters, measured 1.3-1.5x faster on these small MLPs.
        fused = self.device.type in ("cpu", "cuda")
        opt_g = torch.optim.Adam(self.generator.parameters(), lr=self.g_lr, betas=self.g_betas,
                                 fused=fused)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.d_lr,
                                 betas=self.d_betas, fused=fused)
        return [opt_g, opt_d]

    def _lr_factor(self, step: int) -> float:
        return lr_factor(step, self.total_steps, self.lr_decay_start)

    # --- training --------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        if self.trainer.precision not in FULL_PRECISION:
            raise ValueError(f"precision {self.trainer.precision!r}: the training step calls "
                             f"backward itself, without Lightning's loss scaling")

    def on_train_start(self) -> None:
        self._ema_pairs = None  # the EMA's tensor lists, remade on the device training runs on

    def training_step(self, chunk: Tensor, batch_idx: int) -> None:
        # The torch optimizers and backward() themselves, not Lightning's wrappers: at full
        # precision these only dispatch callback hooks that nothing here uses, measured at
        # ~100 us per GAN step with three callbacks (3% of a grid25 step). The module counts
        # its own steps (Lightning's global_step stays 0).
        opt_g, opt_d = self.optimizers(use_pl_optimizer=False)  # type: ignore[misc]
        for real in chunk:
            self._gan_step(real, opt_g, opt_d)
            if self.lr_decay_start < 1.0:
                self._set_learning_rates(opt_g, opt_d)

    def _set_learning_rates(self, opt_g: Any, opt_d: Any) -> None:
        """The rates for the next step, a function of the steps taken (so a resumed run picks
        them up from its step count). Set in place rather than by torch's LambdaLR, which warns
        "lr_scheduler.step() before optimizer.step()" whenever n_critic > 1 leaves G's optimizer
        without a step on a GAN step."""
        factor = self._lr_factor(self.steps)
        opt_g.param_groups[0]["lr"] = self.g_lr * factor
        opt_d.param_groups[0]["lr"] = self.d_lr * factor

    def _gan_step(self, real: Tensor, opt_g: Any, opt_d: Any) -> None:
        n = len(real)
        # Discriminator: G's output is a constant here, so no graph through G.
        with torch.no_grad():
            fake = self.generator(self._noise(n))
        real_logits, fake_logits = self._judge(real, fake)
        d_loss = self.loss.d_loss(real_logits, fake_logits)
        if self.loss.penalty is not None:
            d_loss = d_loss + self.gp_weight * self.loss.penalty(self.discriminator, real, fake)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        self._d_stats.append(d_loss.detach())
        self._logits.append((real_logits.detach(), fake_logits.detach()))
        self.steps += 1

        # Generator: one step per n_critic discriminator steps. D's weights are frozen for it
        # (what Lightning's toggle_optimizer does, without its per-call bookkeeping).
        if self.steps % self.n_critic == 0:
            for p in self._d_params:
                p.requires_grad_(False)
            g_loss = self.loss.g_loss(self.discriminator(self.generator(self._noise(n))))
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            for p in self._d_params:
                p.requires_grad_(True)
            self._g_stats.append(g_loss.detach())
            self.g_steps += 1
            if self.g_ema is not None:
                self._update_ema()

        if self.steps % self.log_every == 0:
            self._close_interval()

    def _update_ema(self) -> None:
        """What ``AveragedModel.update_parameters`` does for EMA (the first update copies, later
        ones lerp parameters and float buffers), on tensor lists made once: it regroups them by
        device and dtype on every call, 65 us per step for grid25's G against 9 us here."""
        assert self.g_ema is not None
        if self._ema_pairs is None:  # made on first use: after the move to the device
            ema = [*self.g_ema.module.parameters(), *self.g_ema.module.buffers()]
            live = [*self.generator.parameters(), *self.generator.buffers()]
            floats = [(a, b) for a, b in zip(ema, live, strict=True) if a.is_floating_point()]
            self._ema_pairs = ([a for a, _ in floats], [b for _, b in floats],
                               [(a, b) for a, b in zip(ema, live, strict=True)
                                if not a.is_floating_point()])
        ema_floats, live_floats, others = self._ema_pairs
        with torch.no_grad():
            if self.g_steps == 1:
                torch._foreach_copy_(ema_floats, live_floats)
            else:
                torch._foreach_lerp_(ema_floats, live_floats, 1.0 - self.ema_decay)
            for a, b in others:  # counters such as BatchNorm's num_batches_tracked: the latest
                a.copy_(b)
            self.g_ema.n_averaged += 1

    def _judge(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        """D's logits for real and fake samples: one pass over both (half the kernels, matmuls
        twice as tall), unless batch statistics (BatchNorm) would mix the two."""
        if self.joint_d_pass and len(real) % self.discriminator.pack == 0:
            logits = self.discriminator(torch.cat([real, fake]))
            return logits.split([len(logits) // 2, len(logits) - len(logits) // 2])
        return self.discriminator(real), self.discriminator(fake)

    def _close_interval(self) -> None:
        means = {"train/d_loss": torch.stack(self._d_stats).mean()}
        if self._logits:
            real, fake = zip(*self._logits, strict=True)
            means["train/d_real"] = torch.cat(real).mean()
            means["train/d_fake"] = torch.cat(fake).mean()
        if self._g_stats:
            means["train/g_loss"] = torch.stack(self._g_stats).mean()
        self.pending_logs.append((self.steps, means))
        self._d_stats, self._g_stats, self._logits = [], [], []

    def close_last_interval(self) -> None:
        """At the end of training: the means of a last, partial interval."""
        if self._d_stats:
            self._close_interval()

    def _noise(self, n: int) -> Tensor:
        return torch.randn(n, self.generator.latent_dim, device=self.device)

    # --- checkpoints: what a resumed run needs beyond the weights and optimizer states -------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["gan_state"] = {
            "steps": self.steps, "g_steps": self.g_steps,
            "stats": (self._d_stats, self._logits, self._g_stats),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["gan_state"]
        self.steps, self.g_steps = state["steps"], state["g_steps"]
        d_stats, logits, g_stats = state["stats"]
        self._d_stats = [t.to(self.device) for t in d_stats]
        self._logits = [(r.to(self.device), f.to(self.device)) for r, f in logits]
        self._g_stats = [t.to(self.device) for t in g_stats]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    # --- evaluation ------------------------------------------------------------------------

    def validation_step(self, z: Tensor, batch_idx: int) -> None:
        self._val_chunks.append(self.evaluated_generator(z))

    def on_validation_epoch_start(self) -> None:
        self._val_chunks = []

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None or not self._val_chunks:
            return
        samples = torch.cat(self._val_chunks)
        self._val_chunks = []
        start = time.perf_counter()
        only = light_metrics_at(self.current_epoch + 1, self.trainer.max_epochs or 0,
                                self.full_every, self.light_metrics)
        metrics = dict(self.evaluator.evaluate(samples, only))
        metrics[EVAL_SECONDS] = time.perf_counter() - start
        self.last_eval = {val_key(k): float(v) for k, v in metrics.items()}
        # Into trainer.callback_metrics, where the pruning callback looks for its monitor.
        self.log_dict(self.last_eval, batch_size=len(samples))

    @torch.no_grad()
    def picture_samples(self) -> Tensor:
        """G(fixed z) in eval mode, on the CPU."""
        generator: nn.Module = self.evaluated_generator
        was_training = generator.training
        generator.eval()
        samples = generator(self.fixed_z).float().cpu()
        generator.train(was_training)
        return samples
