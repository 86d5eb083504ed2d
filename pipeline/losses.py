"""GAN losses on discriminator logits, one small object per loss: the registry ``LOSSES``.

All take raw logits (D has no sigmoid); BCE uses softplus, which is BCE-with-logits written out.
A loss gives D's loss, G's loss and any penalty on D; the training step asks for all three and
never branches on a loss's name. Adding a loss is one entry in ``LOSSES`` (config validation and
the study search spaces read their choices from it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Loss:
    d_loss: Callable[[Tensor, Tensor], Tensor]  # (real logits, fake logits) -> D's loss
    g_loss: Callable[[Tensor], Tensor]  # fake logits -> G's loss
    # A penalty on D computed from real and fake samples (WGAN-GP's gradient penalty), scaled by
    # train.gp_weight; None when the loss has none.
    penalty: Callable[[Callable[[Tensor], Tensor], Tensor, Tensor], Tensor] | None = None


def gradient_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor,
                     fake: Tensor) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): (||grad D(x_hat)|| - 1)^2 on real/fake interpolates.

    One mixing weight per sample; with packing, D's input is the packed interpolate, so the norm
    is taken over each pack's concatenated gradient.
    """
    alpha = torch.rand(len(real), 1, device=real.device, dtype=real.dtype)
    mixed = (alpha * real + (1.0 - alpha) * fake).requires_grad_(True)
    out = discriminator(mixed)
    (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    pack = len(real) // max(len(out), 1)
    usable = len(out) * pack
    norms = grad[:usable].reshape(len(out), -1).norm(2, dim=1)
    return (norms - 1.0).pow(2).mean()


def r1_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor,
               fake: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): 1/2 E ||grad D(x)||^2 on real samples, which keeps D flat on
    the data so that G is pulled towards every mode (on grid25 it ended the modes one seed in
    five used to lose). The weight (gamma) is train.gp_weight."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    return 0.5 * grad.pow(2).reshape(len(real), -1).sum(dim=1).mean()


def _wasserstein_g(fake: Tensor) -> Tensor:
    return -fake.mean()


def _hinge_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def _bce_d(real: Tensor, fake: Tensor) -> Tensor:
    return F.softplus(-real).mean() + F.softplus(fake).mean()


def _bce_g(fake: Tensor) -> Tensor:
    # Non-saturating: G maximises log D(G(z)) rather than minimising log(1 - D(G(z))).
    return F.softplus(-fake).mean()


LOSSES: dict[str, Loss] = {
    "bce": Loss(d_loss=_bce_d, g_loss=_bce_g),
    "hinge": Loss(d_loss=_hinge_d, g_loss=_wasserstein_g),
    "bce-r1": Loss(d_loss=_bce_d, g_loss=_bce_g, penalty=r1_penalty),
    "hinge-r1": Loss(d_loss=_hinge_d, g_loss=_wasserstein_g, penalty=r1_penalty),
    "lsgan": Loss(
        d_loss=lambda real, fake: 0.5 * ((real - 1.0).pow(2).mean() + fake.pow(2).mean()),
        g_loss=lambda fake: 0.5 * (fake - 1.0).pow(2).mean(),
    ),
    "wgan-gp": Loss(
        d_loss=lambda real, fake: fake.mean() - real.mean(),
        g_loss=_wasserstein_g,
        penalty=gradient_penalty,
    ),
}
