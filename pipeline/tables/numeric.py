"""The numeric column encodings: standardised, mapped to a normal through their quantiles, or
CTGAN's mode-specific normalisation; each decodes back into the column's range and dtype."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import ndtri

from pipeline.errors import DataError
from pipeline.tables.columns import Column, Span

NUMERIC_ENCODINGS = ("standard", "quantile", "mode")  # the one list of names; config validates it
MAX_QUANTILES = 1000  # as sklearn's QuantileTransformer: fine enough, and small as JSON
QUANTILE_TAIL = 1e-7  # the outermost knots sit at +-5.2 sigma (sklearn's BOUNDS_THRESHOLD)
MODE_MIN_WEIGHT = 0.005  # CTGAN drops mixture components lighter than this
MODE_SCALE = 4.0  # CTGAN: (x - mu) / (4 sigma) puts a mode's values inside (-1, 1)
MODE_CLIP = 0.99


class Numeric(Column):
    """Shared by the numeric encodings: the observed range, and the dtype to decode into."""

    kind = "numeric"
    encoding = ""

    def __init__(self, name: str, dtype: Any, low: float, high: float) -> None:
        super().__init__(name, dtype)
        self.low, self.high = low, high
        self.integer = pd.api.types.is_integer_dtype(dtype)

    @staticmethod
    def floats(values: pd.Series) -> np.ndarray:
        array = values.to_numpy(dtype=np.float64, na_value=np.nan)
        if not np.isfinite(array).all():
            raise DataError(f"column {values.name!r}: {int((~np.isfinite(array)).sum())} rows "
                            "are NaN or +-inf")
        return array

    @staticmethod
    def range_of(values: np.ndarray, integer: bool) -> tuple[float, float]:
        low, high = float(values.min()), float(values.max())
        return (float(round(low)), float(round(high))) if integer else (low, high)

    def encode(self, values: pd.Series) -> np.ndarray:
        return self.encode_floats(self.floats(values))

    def decode(self, block: np.ndarray) -> pd.Series:
        values = np.clip(self.decode_floats(block), self.low, self.high)
        if self.integer:
            values = np.rint(values)
        return pd.Series(values, name=self.name).astype(self.dtype)

    def encode_floats(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def decode_floats(self, block: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def spans(self, start: int) -> list[Span]:
        return [Span(self.name, start, 1, "none")]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "encoding": self.encoding, "min": self.low, "max": self.high}


class Standard(Numeric):
    encoding = "standard"

    def __init__(self, name: str, dtype: Any, low: float, high: float, mean: float,
                 std: float) -> None:
        super().__init__(name, dtype, low, high)
        self.mean, self.std = mean, std

    @classmethod
    def fit(cls, name: str, dtype: Any, x: np.ndarray, low: float, high: float,
            **_: Any) -> Standard:
        std = float(x.std())
        return cls(name, dtype, low, high, float(x.mean()), std if std > 0 else 1.0)

    def encode_floats(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std)[:, None]

    def decode_floats(self, block: np.ndarray) -> np.ndarray:
        return block[:, 0] * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "mean": self.mean, "std": self.std}


class Quantile(Numeric):
    """Piecewise-linear between the empirical quantiles and the matching normal quantiles: a
    value between two knots maps linearly between their z, so decoding is exact interpolation
    back (sklearn's QuantileTransformer maps to [0, 1] first, which loses digits at the tails)."""

    encoding = "quantile"

    def __init__(self, name: str, dtype: Any, low: float, high: float,
                 quantiles: np.ndarray) -> None:
        super().__init__(name, dtype, low, high)
        if len(quantiles) < 2 or np.any(np.diff(quantiles) < 0):
            raise ValueError("quantiles must be at least 2 and non-decreasing")
        self.quantiles = quantiles
        levels = np.linspace(0.0, 1.0, len(quantiles))
        self.z = ndtri(np.clip(levels, QUANTILE_TAIL, 1.0 - QUANTILE_TAIL))

    @classmethod
    def fit(cls, name: str, dtype: Any, x: np.ndarray, low: float, high: float,
            **_: Any) -> Quantile:
        levels = np.linspace(0.0, 1.0, max(2, min(MAX_QUANTILES, len(x))))
        quantiles = np.maximum.accumulate(np.quantile(x, levels))  # monotone despite rounding
        return cls(name, dtype, low, high, quantiles)

    def encode_floats(self, x: np.ndarray) -> np.ndarray:
        # Forward and backward interpolation averaged (as sklearn does): a value repeated over
        # many knots lands in the middle of their z range, not at its edge.
        q, z = self.quantiles, self.z
        up = np.interp(x, q, z)
        down = -np.interp(-x, -q[::-1], -z[::-1])
        return (0.5 * (up + down))[:, None]

    def decode_floats(self, block: np.ndarray) -> np.ndarray:
        return np.interp(block[:, 0], self.z, self.quantiles)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "quantiles": self.quantiles.tolist()}


class Mode(Numeric):
    """CTGAN's mode-specific normalisation: a Bayesian Gaussian mixture finds the column's modes;
    a value is (x - mu_k) / (4 sigma_k) for its mode k ("tanh"), then the one-hot of k.

    The mode is not drawn from the posterior as CTGAN does: it is the most probable mode among
    those whose +-3.96 sigma window holds the value (the most probable of all where none does,
    and the value is clipped to the window). So `transform` is a pure function (the same frame,
    the same vector, before and after a JSON round trip), and as `fit` widens each mode to hold
    its values, every fitted value decodes back without being clipped."""

    encoding = "mode"

    def __init__(self, name: str, dtype: Any, low: float, high: float, means: np.ndarray,
                 stds: np.ndarray, weights: np.ndarray) -> None:
        super().__init__(name, dtype, low, high)
        if not len(means) == len(stds) == len(weights):
            raise ValueError("means, stds and weights differ in length")
        self.means, self.stds, self.weights = means, stds, weights

    @classmethod
    def fit(cls, name: str, dtype: Any, x: np.ndarray, low: float, high: float, *,
            max_modes: int, seed: int, **_: Any) -> Mode:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import BayesianGaussianMixture

        # Fitted in standard units: the mixture's covariance floor (reg_covar) is absolute, so
        # a column in millimetres and one in millions would otherwise get different modes.
        centre, scale = float(x.mean()), float(x.std()) or 1.0
        mixture = BayesianGaussianMixture(
            n_components=max(1, min(max_modes, len(x))),
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=0.001, random_state=seed)  # CTGAN's (rdt's) settings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(((x - centre) / scale)[:, None])
        keep = mixture.weights_ > MODE_MIN_WEIGHT
        means = centre + scale * mixture.means_[keep, 0]
        stds = scale * np.sqrt(mixture.covariances_[keep].reshape(-1))
        weights = mixture.weights_[keep] / mixture.weights_[keep].sum()
        # A heavy tail's outliers lie beyond every mode's +-3.96 sigma window, where CTGAN clips
        # them (they come back at the window's edge); each mode is widened to hold the values
        # most probable under it, so every fitted value has a window and decodes back.
        mode = _log_posterior(x, means, stds, weights).argmax(axis=1)
        for k in np.unique(mode):
            reach = np.abs(x[mode == k] - means[k]).max() / (MODE_SCALE * MODE_CLIP)
            stds[k] = max(stds[k], reach * (1 + 1e-6))
        order = np.argsort(means)  # modes left to right: easier to read in the JSON
        return cls(name, dtype, low, high, means[order], stds[order], weights[order])

    def spans(self, start: int) -> list[Span]:
        return [Span(self.name, start, 1, "tanh"),
                Span(self.name, start + 1, len(self.means), "softmax")]

    def encode_floats(self, x: np.ndarray) -> np.ndarray:
        scaled = (x[:, None] - self.means) / (MODE_SCALE * self.stds)  # (N, K)
        log_post = _log_posterior(x, self.means, self.stds, self.weights)
        inside = np.abs(scaled) < MODE_CLIP
        log_post = np.where(inside | ~inside.any(axis=1, keepdims=True), log_post, -np.inf)
        mode = log_post.argmax(axis=1)
        rows = np.arange(len(x))
        block = np.zeros((len(x), 1 + len(self.means)))
        block[:, 0] = np.clip(scaled[rows, mode], -MODE_CLIP, MODE_CLIP)
        block[rows, 1 + mode] = 1.0
        return block

    def decode_floats(self, block: np.ndarray) -> np.ndarray:
        mode = block[:, 1:].argmax(axis=1)
        return np.clip(block[:, 0], -1.0, 1.0) * MODE_SCALE * self.stds[mode] + self.means[mode]

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "means": self.means.tolist(), "stds": self.stds.tolist(),
                "weights": self.weights.tolist()}


def _log_posterior(x: np.ndarray, means: np.ndarray, stds: np.ndarray,
                   weights: np.ndarray) -> np.ndarray:
    """(N, K) log posterior of each mode, up to a per-row constant."""
    return np.log(weights) - np.log(stds) - 0.5 * ((x[:, None] - means) / stds) ** 2


NUMERIC: dict[str, type[Standard] | type[Quantile] | type[Mode]] = {
    "standard": Standard, "quantile": Quantile, "mode": Mode}
assert tuple(NUMERIC) == NUMERIC_ENCODINGS
