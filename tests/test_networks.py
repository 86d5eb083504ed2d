from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline import losses
from pipeline.config import ModelConfig
from pipeline.networks import Discriminator, Generator

_M = ModelConfig()  # the one place the networks' settings have defaults


def make_g(latent_dim: int, out_dim: int, hidden: list[int], **kw: object) -> Generator:
    settings = {"activation": _M.activation, "leaky_slope": _M.leaky_slope, "norm": _M.g_norm,
                "dropout": _M.g_dropout, "output_activation": "none", "heads": [],
                "head_temperature": _M.head_temperature, **kw}
    return Generator(latent_dim, out_dim, hidden, **settings)  # type: ignore[arg-type]


def make_d(in_dim: int, hidden: list[int], **kw: object) -> Discriminator:
    settings = {"activation": _M.activation, "leaky_slope": _M.leaky_slope, "norm": _M.d_norm,
                "dropout": _M.d_dropout, "spectral_norm": _M.spectral_norm, "pack": _M.pack,
                **kw}
    return Discriminator(in_dim, hidden, **settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "gelu", "silu", "tanh"])
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_generator_shapes(activation: str, norm: str) -> None:
    g = make_g(5, 64, [16, 8], activation=activation, norm=norm, dropout=0.1,
               output_activation="tanh")
    out = g(torch.randn(12, 5))
    assert out.shape == (12, 64)
    assert out.abs().max() <= 1.0
    linears = [m for m in g.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 16), (16, 8), (8, 64)]


def test_generator_unbounded_for_points() -> None:
    g = make_g(2, 2, [8])
    with torch.no_grad():
        g.net[-1].bias.fill_(10.0)
    assert g(torch.randn(4, 2)).min() > 5.0


def test_discriminator_packing() -> None:
    d = make_d(2, [16], pack=4)
    assert d(torch.randn(10, 2)).shape == (2,)  # remainder of 2 samples dropped
    first = d.net[0]
    assert first.in_features == 8


def test_discriminator_spectral_norm() -> None:
    d = make_d(3, [32, 32], spectral_norm=True)
    names = [n for n, _ in d.named_parameters()]
    assert any("parametrizations.weight" in n for n in names)
    for _ in range(20):  # power iterations converge in training mode
        d(torch.randn(8, 3))
    layer = d.net[0]
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), ord=2)
    assert sigma.item() == pytest.approx(1.0, abs=0.05)


def test_dropout_only_when_asked() -> None:
    assert not any(isinstance(m, nn.Dropout) for m in make_d(2, [8]).modules())
    assert any(isinstance(m, nn.Dropout) for m in make_d(2, [8], dropout=0.3).modules())


def test_table_head_gives_a_valid_row_and_scripts() -> None:
    """A numeric value (none), a mode-specific scalar (tanh) and two one-hot blocks: each
    softmax block is a distribution, near one-hot at CTGAN's temperature, and argmax samples it
    (its frequencies follow the softmax, not only its mode); TorchScript takes the head."""
    heads = [[0, 1, "none"], [1, 1, "tanh"], [2, 3, "softmax"], [5, 2, "softmax"]]
    g = make_g(4, 7, [8], output_activation="table", heads=heads)
    out = g(torch.randn(4000, 4)).detach()
    assert out.shape == (4000, 7)
    assert out[:, 1].abs().max() < 1.0
    for start, width in ((2, 3), (5, 2)):
        block = out[:, start : start + width]
        assert torch.allclose(block.sum(dim=1), torch.ones(4000), atol=1e-5)
        assert block.max(dim=1).values.median() > 0.9  # near one-hot at temperature 0.2
    # logits fixed at log(0.7), log(0.3): argmax picks the first block member ~70% of the time
    head = g.out
    logits = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.1, 0.7, 0.3]])).repeat(20000, 1)
    picks = head(logits)[:, 5:7].argmax(dim=1).float().mean()
    assert picks.item() == pytest.approx(0.3, abs=0.02)
    scripted = torch.jit.script(g)
    assert scripted(torch.randn(5, 4)).shape == (5, 7)


@pytest.mark.parametrize("kind", sorted(losses.LOSSES))
def test_losses_prefer_the_right_side(kind: str) -> None:
    loss = losses.LOSSES[kind]
    good_d = loss.d_loss(torch.full((8,), 3.0), torch.full((8,), -3.0))
    bad_d = loss.d_loss(torch.full((8,), -3.0), torch.full((8,), 3.0))
    assert good_d < bad_d
    assert loss.g_loss(torch.full((8,), 3.0)) < loss.g_loss(torch.full((8,), -3.0))


def test_bce_matches_torch() -> None:
    r, f = torch.randn(16), torch.randn(16)
    bce = nn.functional.binary_cross_entropy_with_logits
    expected = bce(r, torch.ones(16)) + bce(f, torch.zeros(16))
    assert torch.allclose(losses.LOSSES["bce"].d_loss(r, f), expected)
    assert torch.allclose(losses.LOSSES["bce"].g_loss(f), bce(f, torch.ones(16)))


def test_the_losses_with_a_penalty() -> None:
    # the losses that read train.gp_weight (a study samples it only for these)
    assert [n for n, loss in losses.LOSSES.items() if loss.penalty is not None] == [
        "bce-r1", "hinge-r1", "wgan-gp"]
    assert losses.LOSSES["wgan-gp"].penalty is losses.gradient_penalty


def test_r1_penalty_is_half_the_squared_gradient_norm() -> None:
    # D(x) = x . w has gradient w everywhere: R1 = |w|^2 / 2, whatever the samples.
    w = torch.tensor([3.0, 4.0])
    r1 = losses.r1_penalty(lambda x: x @ w, torch.randn(16, 2), torch.randn(16, 2))
    assert r1.item() == pytest.approx(12.5)
    # with packing (D sees 2 samples as one row), the norm covers each sample's own gradient
    packed = losses.r1_penalty(lambda x: x.reshape(-1, 4) @ torch.cat([w, w]),
                               torch.randn(16, 2), torch.randn(16, 2))
    assert packed.item() == pytest.approx(12.5)


def test_gradient_penalty_zero_for_unit_slope() -> None:
    # D(x) = x . w with ||w|| = 1 has gradient norm exactly 1 everywhere.
    w = torch.tensor([0.6, 0.8])
    gp = losses.gradient_penalty(lambda x: x @ w, torch.randn(32, 2), torch.randn(32, 2))
    assert gp.item() == pytest.approx(0.0, abs=1e-10)
    gp2 = losses.gradient_penalty(lambda x: x @ (3 * w), torch.randn(32, 2), torch.randn(32, 2))
    assert gp2.item() == pytest.approx(4.0, rel=1e-5)
