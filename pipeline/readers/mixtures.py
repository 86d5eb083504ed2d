"""PacGAN's 2-D Gaussian mixtures (ring8, grid25), drawn from a seed, with known mode centres."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from pipeline.dataset import Dataset


def ring_centres(k: int, radius: float = 1.0) -> Tensor:
    # 2*pi*i/k for i < k: linspace(0, 2*pi, k) would repeat angle 0 as 2*pi and lose a mode.
    angles = 2 * math.pi * torch.arange(k, dtype=torch.float64) / k
    return (radius * torch.stack([angles.cos(), angles.sin()], dim=1)).float()


def grid_centres(side: int, spacing: float = 2.0) -> Tensor:
    """side x side centres, ``spacing`` apart, centred on the origin."""
    axis = spacing * (torch.arange(side, dtype=torch.float32) - (side - 1) / 2)
    xs, ys = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def ring8_centres(radius: float = 1.0) -> Tensor:
    return ring_centres(8, radius)


def grid25_centres() -> Tensor:
    return grid_centres(5)


def mixture(name: str, centres: Tensor, n: int, std: float, seed: int) -> Dataset:
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(len(centres), (n,), generator=gen)
    points = centres[which] + std * torch.randn(n, 2, generator=gen)
    return Dataset(name=name, kind="points", train=points, centres=centres, std=std,
                   source={"drawn_by": "pipeline.readers.mixtures.mixture",
                           "modes": str(len(centres)), "n": str(n), "std": str(std),
                           "seed": str(seed)})


def ring8(n: int = 100_000, radius: float = 1.0, std: float = 0.01, seed: int = 0) -> Dataset:
    return mixture("ring8", ring8_centres(radius), n, std, seed)


def grid25(n: int = 100_000, std: float = 0.05, seed: int = 0) -> Dataset:
    return mixture("grid25", grid25_centres(), n, std, seed)
