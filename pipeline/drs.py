"""Discriminator Rejection Sampling (Azadi et al. 2019): G's samples filtered by D.

A discriminator trained to optimality with the logistic (BCE) loss has the logit
log p_data(x) / p_g(x), so accepting a sample x with probability p_data / (M p_g) turns G's
distribution into the data's. DRS reads D's logit as that ratio and accepts with

    F(x) = D(x) - D_M - log(1 - exp(D(x) - D_M - eps)) - gamma,   p(x) = sigmoid(F(x)),

where D_M is the largest logit seen so far and gamma shifts F so that a given share of each
batch is accepted with probability above one half (the paper's 95th percentile).

The run's own D was trained against the live G with the run's loss (hinge, WGAN-GP, R1...),
whose logits are not that ratio, and the G evaluated is the EMA one. ``calibrate`` therefore
trains a copy of D further with BCE against the evaluated G (G fixed) before sampling, as the
paper trains its D further. DRS filters the generator; it never replaces it: its metrics are
logged beside the raw generator's (``drs/<metric>``) and reported in a row of their own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CALIBRATION_STEPS = 1000  # BCE steps on a copy of D: the logit settles within a few hundred
GAMMA_QUANTILE = 0.95  # the paper's shift: F's 95th percentile of each batch is moved to 0
EPS = 1e-6  # keeps log(1 - exp(.)) finite at the largest logit
BURN_IN = 10_000  # G's samples whose largest logit starts D_M
MIN_ACCEPTANCE = 1e-3  # below it, sampling would draw > 1,000 candidates per sample: refused


def calibrate(discriminator: nn.Module, generator: nn.Module, real: Tensor, *, batch_size: int,
              lr: float, seed: int, steps: int = CALIBRATION_STEPS) -> nn.Module:
    """A copy of ``discriminator`` trained ``steps`` more steps with BCE on ``real`` rows
    against ``generator``'s samples (``generator`` fixed); the run's D is left as it was."""
    d = copy.deepcopy(discriminator).train().requires_grad_(True)
    opt = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
    device = real.device
    gen = torch.Generator(device=device).manual_seed(seed)
    with evaluating(generator):
        for _ in range(steps):
            rows = real[torch.randint(len(real), (batch_size,), generator=gen, device=device)]
            with torch.no_grad():
                fake = generator(latent(generator, batch_size, gen))
            loss = F.softplus(-d(rows)).mean() + F.softplus(d(fake)).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return d.eval().requires_grad_(False)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode, and back in its own mode even when sampling raises (a refused
    DRS must not leave the run's G in eval mode for the epochs that follow)."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def latent(generator: nn.Module, n: int, gen: torch.Generator) -> Tensor:
    dim: int = generator.latent_dim  # type: ignore[assignment]  # Generator's attribute
    return torch.randn(n, dim, generator=gen, device=gen.device)


def log_odds(logits: Tensor, d_max: float) -> Tensor:
    """F(x) before the shift: sigmoid(F) = exp(D(x) - D_M), the exact rejection sampler's
    acceptance p_data / (M p_g), written as log-odds so that a shift can raise it."""
    shifted = logits - d_max
    return shifted - torch.log1p(-torch.exp(shifted - EPS))


def acceptance(logits: Tensor, d_max: float) -> Tensor:
    """Each sample's acceptance probability, given the largest logit seen (``d_max``): the
    exact acceptance accepts almost nothing once D_M is an outlier, the shift bounds that."""
    f = log_odds(logits, d_max)
    return torch.sigmoid(f - torch.quantile(f, GAMMA_QUANTILE))


@torch.no_grad()
def rejection_sample(generator: nn.Module, discriminator: nn.Module, n: int, *, seed: int,
                     batch: int) -> tuple[Tensor, float]:
    """``n`` samples of ``generator`` accepted by DRS, and the share of candidates accepted."""
    device = next(discriminator.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with evaluating(generator):
        d_max = -math.inf
        for start in range(0, BURN_IN, batch):
            logits = discriminator(generator(latent(generator, min(batch, BURN_IN - start), gen)))
            d_max = max(d_max, float(logits.max()))
        kept: list[Tensor] = []
        n_kept = drawn = 0
        while n_kept < n:
            fake = generator(latent(generator, batch, gen))
            logits = discriminator(fake)
            d_max = max(d_max, float(logits.max()))
            accept = torch.rand(len(fake), generator=gen, device=device) < acceptance(logits, d_max)
            kept.append(fake[accept])
            n_kept += int(accept.sum())
            drawn += len(fake)
            if drawn >= batch * 10 and n_kept / drawn < MIN_ACCEPTANCE:
                raise ValueError(f"DRS accepted {n_kept} of {drawn} samples: D rejects nearly "
                                 "everything G makes")
    return torch.cat(kept)[:n], n_kept / drawn
