"""GAN losses on discriminator logits: (d_loss(real, fake), g_loss(fake)) per kind.

All take raw logits (D has no sigmoid); BCE uses softplus, which is BCE-with-logits written out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def d_loss(kind: str, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    if kind == "bce":
        # -log sigmoid(r) - log(1 - sigmoid(f))
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "lsgan":
        return 0.5 * ((real_logits - 1.0).pow(2).mean() + fake_logits.pow(2).mean())
    if kind == "wgan-gp":
        return fake_logits.mean() - real_logits.mean()
    raise ValueError(f"unknown loss {kind!r}")


def g_loss(kind: str, fake_logits: Tensor) -> Tensor:
    if kind == "bce":
        # Non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z))).
        return F.softplus(-fake_logits).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake_logits.mean()
    if kind == "lsgan":
        return 0.5 * (fake_logits - 1.0).pow(2).mean()
    raise ValueError(f"unknown loss {kind!r}")


def gradient_penalty(discriminator: nn.Module | Callable[[Tensor], Tensor], real: Tensor,
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
