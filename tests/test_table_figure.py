"""The table picture drawn again on one figure is the figure drawn afresh."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.plots import TableFigure, figure_image, table_figure


def frame(seed: int, scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(size=300) * scale, "colour": rng.choice(list("abc"), 300),
                         "n": rng.integers(0, 9, 300) * scale})


def pixels(fig: object) -> np.ndarray:
    return np.asarray(figure_image(fig))  # type: ignore[arg-type]


def test_a_redrawn_table_figure_is_the_figure_drawn_afresh() -> None:
    real = frame(0)
    picture = TableFigure(real, real.columns, ["colour"])
    first = pixels(picture.draw(frame(1), title="epoch 1"))
    # Another synthetic side: narrower numbers, one category missing, values off the bins.
    later = frame(2, scale=0.2).assign(colour="b")
    later.loc[:9, "x"] = 50.0
    again = pixels(picture.draw(later, title="epoch 2"))
    assert np.array_equal(again, pixels(table_figure(later, real, ["colour"], title="epoch 2")))
    assert not np.array_equal(first, again)


def test_an_export_picture_has_the_synthetic_rows_alone() -> None:
    synth = frame(3)
    fig = table_figure(synth, None, ["colour"])
    legend = fig.axes[0].get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["synthetic"]
