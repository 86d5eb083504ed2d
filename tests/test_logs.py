"""Entry points silence the libraries' per-fit banners, whichever Lightning namespace owns them."""

from __future__ import annotations

import logging


def test_lightning_banners_stay_quiet_after_mlflow_loads_pytorch_lightning() -> None:
    from pipeline.logs import quiet_libraries

    quiet_libraries()
    # What a trial does after quiet_libraries: log its model with MLflow's pytorch flavour,
    # which imports the standalone pytorch_lightning package.
    import lightning_utilities.core.rank_zero as rank_zero
    import mlflow.pytorch  # noqa: F401

    assert rank_zero.log.getEffectiveLevel() >= logging.WARNING
    for name in ("lightning.pytorch", "pytorch_lightning"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
