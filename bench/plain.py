"""The reference of the benchmark's ratios: the project's GAN training as a plain PyTorch loop,
no Lightning, no MLflow, no callbacks. It computes what ``pipeline.module.GANModule`` computes
(tests/test_bench.py compares the losses and G's EMA step by step), so that a ratio against it
is the cost of the project's machinery alone.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import Tensor, nn

from pipeline import prepare
from pipeline.batches import TensorBatches
from pipeline.config import Config
from pipeline.dataset import Dataset
from pipeline.losses import LOSSES
from pipeline.metrics import MAIN_METRICS, Evaluator
from pipeline.metrics.registry import light_metrics_at
from pipeline.module import lr_factor
from pipeline.networks import Discriminator, Generator


def floats(module: nn.Module) -> list[Tensor]:
    return [x for x in (*module.parameters(), *module.buffers()) if x.is_floating_point()]


class PlainGAN:
    """The module's training as directly as PyTorch allows: fused Adam, grads set to None, D
    frozen by flag in G's step, G's EMA in one foreach call, learning rates set in place."""

    def __init__(self, cfg: Config, dataset: Dataset, device: str = "cpu") -> None:
        t = cfg.train
        torch.manual_seed(t.seed)  # the module's initial weights (prepare.build_module)
        self.g = Generator(**prepare.generator_kwargs(cfg.model, dataset)).to(device)
        self.d = Discriminator(**prepare.discriminator_kwargs(cfg.model, dataset)).to(device)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=t.g_lr,
                                      betas=(t.g_betas[0], t.g_betas[1]), fused=True)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=t.d_lr,
                                      betas=(t.d_betas[0], t.d_betas[1]), fused=True)
        self.loss = LOSSES[t.loss]
        self.gp_weight, self.n_critic = t.gp_weight, t.n_critic
        self.d_params = list(self.d.parameters())
        self.joint = not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                             for m in self.d.modules())
        # G's parameters and float buffers, as the module's AveragedModel(use_buffers=True)
        self.ema_decay = t.ema_decay
        self.ema_g = copy.deepcopy(self.g).requires_grad_(False) if t.ema_decay > 0 else None
        self.ema = floats(self.ema_g) if self.ema_g is not None else []
        self.live = floats(self.g)
        self.lrs = (t.g_lr, t.d_lr)
        self.decay_start, self.total = t.lr_decay_start, 0
        self.steps = self.g_steps = 0
        self.z_dim = cfg.model.latent_dim
        self.device = device

    def step(self, real: Tensor) -> tuple[Tensor, Tensor | None]:
        """One GAN step; D's loss and G's (None when n_critic skips G), detached."""
        n = len(real)
        with torch.no_grad():
            fake = self.g(torch.randn(n, self.z_dim, device=self.device))
        if self.joint and n % self.d.pack == 0:  # one pass over real and fake (no BatchNorm)
            logits = self.d(torch.cat([real, fake]))
            half = len(logits) // 2
            real_logits, fake_logits = logits[:half], logits[half:]
        else:
            real_logits, fake_logits = self.d(real), self.d(fake)
        d_loss = self.loss.d_loss(real_logits, fake_logits)
        if self.loss.penalty is not None:
            d_loss = d_loss + self.gp_weight * self.loss.penalty(self.d, real, fake)
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        self.steps += 1
        g_loss = None
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
            self.g_steps += 1
            if self.ema:
                with torch.no_grad():  # the first average is G itself, as AveragedModel's
                    if self.g_steps == 1:
                        torch._foreach_copy_(self.ema, self.live)
                    else:
                        torch._foreach_lerp_(self.ema, self.live, 1 - self.ema_decay)
        if self.decay_start < 1.0:
            factor = lr_factor(self.steps, self.total, self.decay_start)
            for opt, lr in zip((self.opt_g, self.opt_d), self.lrs, strict=True):
                opt.param_groups[0]["lr"] = lr * factor
        return d_loss.detach(), None if g_loss is None else g_loss.detach()

    @torch.no_grad()
    def samples(self, z: Tensor) -> Tensor:
        g = self.ema_g if self.ema_g is not None else self.g
        g.eval()
        out = g(z)
        g.train()
        return out


def plain_train(cfg: Config, steps: int) -> float:
    """Seconds for ``steps`` GAN steps of the plain loop."""
    dataset = prepare.cached_dataset(cfg.data, cfg.train.seed)
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
    dataset = prepare.cached_dataset(cfg.data, cfg.train.seed)
    gan = PlainGAN(cfg, dataset)
    t = cfg.train
    batches = TensorBatches(dataset.train, t.batch_size, seed=t.seed, steps=t.steps_per_epoch)
    gan.total = t.epochs * batches.steps
    seed = t.seed + prepare.EVAL_SEED_OFFSET  # the module's evaluation points
    eval_z = torch.randn(cfg.eval.n_samples, cfg.model.latent_dim,
                         generator=torch.Generator().manual_seed(seed))
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
