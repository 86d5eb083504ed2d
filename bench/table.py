"""The benchmark's table: a seeded synthetic mix of the column kinds a user's table has, written
to a file for ``data.name=table data.path=FILE``.

Columns come in groups of 20, each group drawn around its own hidden segment (one of 4, unequal
shares) so that its columns depend on one another the way a real table's do:

- 6 Gaussian mixtures: ``height`` (a mode per segment), ``weight`` (linear in height plus noise),
  ``score`` (bimodal, the mode picked by the segment), ``temp`` (3 modes), ``ratio`` (a
  correlated pair with score), ``offset`` (plain Gaussian);
- 3 skewed numbers: ``income`` (log-normal, scale per segment), ``spend`` (a share of income),
  ``wait`` (exponential);
- 3 integer counts with many values (numbers, not categories, for the reader): ``visits``
  (Poisson, rate per segment), ``items`` (negative binomial, grows with spend), ``age``
  (18-90, shifted per segment);
- 8 categories of 3 to 10 values: ``segment`` itself (4), ``region`` (5, skewed by segment),
  ``plan`` (3, from income's tercile, 10% flipped), ``device`` (6), ``channel`` (8, follows
  device), ``grade`` (10, height's decile with noise), ``colour`` (7, independent), ``tier``
  (3, from plan and segment).

Group ``g`` > 0 suffixes its names with ``_g``; a 100-column table is 5 groups, independent of
one another; a table of fewer columns than 20 takes a group's first ones (the kinds are
interleaved). CSV, so that the file goes through the reader a user's file goes through.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

GROUP_COLUMNS = 20
COLOURS = ("red", "orange", "yellow", "green", "blue", "indigo", "violet")


def _group(rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    segment = rng.choice(4, size=rows, p=[0.4, 0.3, 0.2, 0.1])
    height = np.array([160.0, 170.0, 178.0, 186.0])[segment] + rng.normal(0, 6, rows)
    weight = 0.9 * height - 85 + rng.normal(0, 7, rows)
    score = np.where(segment % 2 == 0, rng.normal(-2, 0.5, rows), rng.normal(2, 0.8, rows))
    temp = rng.choice([-5.0, 10.0, 25.0], size=rows) + rng.normal(0, 2, rows)
    ratio = 0.6 * score + rng.normal(0, 0.7, rows)
    offset = rng.normal(3, 1.5, rows)
    income = rng.lognormal(np.array([10.0, 10.4, 10.8, 11.5])[segment], 0.5)
    spend = income * rng.beta(2, 8, rows)
    wait = rng.exponential(12.0, rows)
    visits = rng.poisson(np.array([3.0, 8.0, 15.0, 30.0])[segment])
    items = rng.negative_binomial(2, 1 / (1 + spend / 4000))
    age = np.clip(np.round(np.array([30, 40, 50, 60])[segment] + rng.normal(0, 12, rows)), 18, 90)
    region_p = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.1, 0.5, 0.2, 0.1, 0.1],
                         [0.1, 0.1, 0.2, 0.5, 0.1], [0.2, 0.2, 0.2, 0.2, 0.2]])
    region = np.minimum(4, (rng.random((rows, 1)) > region_p[segment].cumsum(axis=1)).sum(axis=1))
    plan = np.digitize(np.log(income), np.quantile(np.log(income), [1 / 3, 2 / 3]))
    plan = np.where(rng.random(rows) < 0.1, rng.integers(0, 3, rows), plan)
    device = rng.choice(6, size=rows, p=[0.3, 0.25, 0.2, 0.1, 0.1, 0.05])
    channel = np.where(rng.random(rows) < 0.7, device + rng.integers(0, 3, rows),
                       rng.integers(0, 8, rows))
    grade = np.clip(np.digitize(height + rng.normal(0, 4, rows),
                                np.quantile(height, np.linspace(0.1, 0.9, 9))), 0, 9)
    colour = rng.integers(0, 7, rows)
    tier = np.minimum(2, (plan + (segment == 3)).astype(int))

    def names(prefix: str, codes: np.ndarray) -> np.ndarray:
        return np.char.add(prefix, codes.astype(str))

    # Kinds interleaved, so that a table of fewer columns than a group still mixes them.
    return {
        "height": height.round(1), "segment": names("seg", segment), "income": income.round(0),
        "visits": visits, "region": names("region", region), "weight": weight.round(1),
        "plan": np.array(["basic", "plus", "pro"])[plan], "score": score.round(3),
        "spend": spend.round(2), "items": items, "device": names("dev", device),
        "temp": temp.round(2), "channel": names("ch", channel), "wait": wait.round(2),
        "grade": names("g", grade), "ratio": ratio.round(3), "age": age.astype(int),
        "colour": np.array(COLOURS)[colour], "offset": offset.round(3),
        "tier": np.array(["bronze", "silver", "gold"])[tier],
    }


def synthetic_table(rows: int, columns: int = GROUP_COLUMNS, seed: int = 0) -> pd.DataFrame:
    """``rows`` rows of ``columns`` columns, drawn from ``seed``: whole groups of 20, then the
    first columns of one more."""
    if rows <= 0 or columns <= 0:
        raise ValueError(f"a table needs rows and columns, got rows={rows}, columns={columns}")
    rng = np.random.default_rng(seed)
    parts: dict[str, np.ndarray] = {}
    for g in range(math.ceil(columns / GROUP_COLUMNS)):
        for name, values in _group(rows, rng).items():
            parts[f"{name}_{g}" if g else name] = values
    return pd.DataFrame(parts).iloc[:, :columns]


def write_table(folder: Path, rows: int, columns: int = GROUP_COLUMNS, seed: int = 0) -> Path:
    """The table as ``folder/table_<columns>.csv``; its path."""
    path = folder / f"table_{columns}.csv"
    synthetic_table(rows, columns, seed).to_csv(path, index=False)
    return path
