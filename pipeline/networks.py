"""The generator and discriminator: plain ``nn.Module`` MLPs, no Lightning, plain arguments.

Both are rebuilt from the same keyword arguments when a model is exported, so every constructor
argument is a JSON-friendly value (ints, floats, strings, lists).

``ACTIVATIONS`` and ``NORMS`` are the registries of layer choices: config validation and the
study search spaces read their names from here, so adding one is one entry.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Activation:
    make: Callable[[float], nn.Module]  # leaky slope -> layer
    uses_slope: bool = False  # reads model.leaky_slope (a study samples it only then)


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(lambda _: nn.ReLU()),
    "leaky_relu": Activation(nn.LeakyReLU, uses_slope=True),
    "elu": Activation(lambda _: nn.ELU()),
    "gelu": Activation(lambda _: nn.GELU()),
    "silu": Activation(lambda _: nn.SiLU()),
    "tanh": Activation(lambda _: nn.Tanh()),
}

HEAD_ACTIVATIONS = {"none": 0, "tanh": 1, "softmax": 2}  # a table span's output -> its code
GUMBEL_EPS = 1e-10  # keeps log(-log(u)) finite at u = 0 or 1


class TableHead(nn.Module):
    """G's output layer for tables: per span of the encoded row (see pipeline.tables), identity,
    tanh, or a Gumbel-softmax over a one-hot block (a categorical column, a numeric column's
    mode), as CTGAN does. Gumbel noise in every forward pass, evaluation too, makes the argmax
    of a block a sample of its softmax rather than its mode: decoding by argmax then keeps the
    categories' frequencies instead of collapsing each column onto its likeliest category."""

    def __init__(self, heads: Sequence[Sequence[object]], temperature: float) -> None:
        super().__init__()
        self.spans: list[tuple[int, int, int]] = [
            (int(str(start)), int(str(width)), HEAD_ACTIVATIONS[str(act)])
            for start, width, act in heads]
        self.temperature = temperature
        self.eps = GUMBEL_EPS  # an attribute: TorchScript reads no module-level floats

    def forward(self, x: Tensor) -> Tensor:
        parts: list[Tensor] = []
        for start, width, code in self.spans:
            block = x[:, start : start + width]
            if code == 2:
                # F.gumbel_softmax(hard=False), written out: its exponential sampler has no
                # ONNX operator, a uniform one does (RandomUniformLike).
                uniform = torch.rand_like(block).clamp(self.eps, 1.0 - self.eps)
                gumbel = -torch.log(-torch.log(uniform))
                block = torch.softmax((block + gumbel) / self.temperature, dim=1)
            elif code == 1:
                block = torch.tanh(block)
            parts.append(block)
        return torch.cat(parts, dim=1)


def output_layer(name: str, heads: Sequence[Sequence[object]], temperature: float) -> nn.Module:
    if name == "table":
        if not heads:
            raise ValueError("output_activation 'table' needs the table's spans (heads)")
        return TableHead(heads, temperature)
    return {"none": nn.Identity, "tanh": nn.Tanh}[name]()


OUTPUT_ACTIVATIONS = ("none", "tanh", "table")  # table: per-column heads (TableHead)

NORMS: dict[str, Callable[[int], nn.Module] | None] = {
    "none": None,
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
}


def activation_layer(name: str, leaky_slope: float = 0.2) -> nn.Module:
    return ACTIVATIONS[name].make(leaky_slope)


def norm_layer(name: str, width: int) -> nn.Module | None:
    make = NORMS[name]
    return None if make is None else make(width)


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    *,
    activation: str,
    leaky_slope: float,
    norm: str,
    dropout: float,
    spectral_norm: bool = False,
) -> nn.Sequential:
    """Linear -> [norm] -> activation -> [dropout] per hidden layer, then a linear output."""
    layers: list[nn.Module] = []
    widths = [in_dim, *hidden]
    for width_in, width_out in itertools.pairwise(widths):
        layers.append(linear(width_in, width_out, spectral_norm))
        norm_mod = norm_layer(norm, width_out)
        if norm_mod is not None:
            layers.append(norm_mod)
        layers.append(activation_layer(activation, leaky_slope))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(linear(widths[-1], out_dim, spectral_norm))
    return nn.Sequential(*layers)


def linear(width_in: int, width_out: int, spectral_norm: bool) -> nn.Module:
    layer = nn.Linear(width_in, width_out)
    if spectral_norm:
        return nn.utils.parametrizations.spectral_norm(layer)
    return layer


class Generator(nn.Module):
    """z (B, latent_dim) -> samples (B, out_dim); tanh output for images scaled to [-1, 1]."""

    def __init__(
        self,
        latent_dim: int,
        out_dim: int,
        hidden: Sequence[int],
        *,
        activation: str,
        leaky_slope: float,
        norm: str,
        dropout: float,
        output_activation: str,
        heads: Sequence[Sequence[object]],  # tables: [start, width, activation] per span
        head_temperature: float,  # Gumbel-softmax temperature of TableHead
    ) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.out_dim = out_dim
        self.net = mlp(
            latent_dim, hidden, out_dim,
            activation=activation, leaky_slope=leaky_slope, norm=norm, dropout=dropout,
        )
        self.out = output_layer(output_activation, heads, head_temperature)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(self.net(z))


class Discriminator(nn.Module):
    """samples (B, in_dim) -> one logit per pack of ``pack`` samples (B // pack,).

    PacGAN packing: D sees ``pack`` samples concatenated, which lets it notice a lack of
    diversity. A trailing remainder that does not fill a pack is dropped. No sigmoid: the losses
    work on logits.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: Sequence[int],
        *,
        activation: str,
        leaky_slope: float,
        norm: str,
        dropout: float,
        spectral_norm: bool,
        pack: int,
    ) -> None:
        super().__init__()
        self.pack = pack
        self.net = mlp(
            in_dim * pack, hidden, 1,
            activation=activation, leaky_slope=leaky_slope, norm=norm, dropout=dropout,
            spectral_norm=spectral_norm,
        )

    def forward(self, x: Tensor) -> Tensor:
        usable = (len(x) // self.pack) * self.pack
        packed = x[:usable].reshape(usable // self.pack, -1)
        return self.net(packed).squeeze(-1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


