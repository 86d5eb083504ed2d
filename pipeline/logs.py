"""Process-wide logging and warning settings, applied by the entry points (CLI, study workers).

Kept out of the library modules: importing pipeline.train must not change a caller's logging.
"""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    # Lightning prints device and model banners for every fit; a study runs hundreds of fits.
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    # MLflow announces every store it opens ("Creating initial MLflow database tables...").
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # Lightning 2.6 trips over its own deprecation on every fit; nothing for a user to act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
