"""The floors beside every results row, against their closed forms for the mixtures: a perfect
generator (fresh points of the mixture) covers every mode, puts 1 - exp(-9/2) = 98.9% of its
samples within 3 std of a mode (a 2-D Gaussian's radius is Rayleigh), and its mode histogram's
KL to uniform is about (K - 1) / 2N at N samples (the chi-square bias of a multinomial)."""

from __future__ import annotations

import math

import pytest

from pipeline.metrics import Evaluator
from pipeline.readers.mixtures import grid25, ring8


@pytest.mark.parametrize(("make", "modes"), [(ring8, 8), (grid25, 25)])
def test_mixture_floors_match_their_closed_forms(make, modes: int) -> None:
    n = 2500
    floor = Evaluator(make(n=20_000, seed=3), n_samples=n,
                      metrics=["modes_covered", "high_quality", "reverse_kl"]).floor()
    assert floor["modes_covered"] == modes
    assert floor["high_quality"] == pytest.approx(1 - math.exp(-4.5), abs=0.006)  # 0.98889
    expected_kl = (modes - 1) / (2 * n)  # 0.0014 for 8 modes, 0.0048 for 25
    assert floor["reverse_kl"] == pytest.approx(expected_kl, rel=0.8)
    assert floor["reverse_kl"] < 3 * expected_kl
