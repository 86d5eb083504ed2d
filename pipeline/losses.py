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


def _wasserstein_g(fake: Tensor) -> Tensor:
    return -fake.mean()


LOSSES: dict[str, Loss] = {
    # Non-saturating: G maximises log D(G(z)) rather than minimising log(1 - D(G(z))).
    "bce": Loss(
        d_loss=lambda real, fake: F.softplus(-real).mean() + F.softplus(fake).mean(),
        g_loss=lambda fake: F.softplus(-fake).mean(),
    ),
    "hinge": Loss(
        d_loss=lambda real, fake: F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean(),
        g_loss=_wasserstein_g,
    ),
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


def losses_with_penalty() -> list[str]:
    """The losses that read train.gp_weight (a study samples it only for these)."""
    return [name for name, loss in LOSSES.items() if loss.penalty is not None]
