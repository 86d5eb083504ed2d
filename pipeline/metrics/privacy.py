"""Can a classifier tell synthetic rows from real ones (detection: SDMetrics' recipe, with seeded
folds, taking every category); are synthetic rows copies of training rows (the DCR share)?

scikit-learn is imported inside ``detection``: it takes seconds to import, and points and images
never need it.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

DETECTION_FOLDS = 3  # SDMetrics' LogisticDetection
# Two squared distances this close (relative to the row's squared norm) are one tie: identical
# rows, frequent in mostly categorical tables, must not come out nearer by a rounding error.
DCR_TIE_RTOL = 1e-9
DCR_BLOCK_BYTES = 32 * 2**20  # one block of the distance matrix (float64)


# --- detection -----------------------------------------------------------------------------------


def _detection_features(real: pd.DataFrame, synth: pd.DataFrame,
                        metadata: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """SDMetrics' detection features (numbers as they are, then a one-hot block per category
    column, sorted categories), with the categories of both sides: SDMetrics fits its one-hot
    encoder on the real rows alone and fails on a synthetic category the real rows lack."""
    sdtypes = {name: meta["sdtype"] for name, meta in metadata["columns"].items()}
    numbers = [name for name, sdtype in sdtypes.items() if sdtype == "numerical"]
    blocks_real = [real[numbers].to_numpy(dtype=np.float64)]
    blocks_synth = [synth[numbers].to_numpy(dtype=np.float64)]
    for name in (n for n, sdtype in sdtypes.items() if sdtype != "numerical"):
        seen = pd.unique(np.concatenate([real[name].to_numpy(dtype=object),
                                         synth[name].to_numpy(dtype=object)]))
        index = pd.Index(sorted(seen, key=lambda v: (type(v).__name__, v)), dtype=object)
        for frame, blocks in ((real, blocks_real), (synth, blocks_synth)):
            codes = index.get_indexer(frame[name].to_numpy(dtype=object))
            blocks.append(np.eye(len(index))[codes])
    return np.concatenate(blocks_real, axis=1), np.concatenate(blocks_synth, axis=1)


def detection(real: pd.DataFrame, synth: pd.DataFrame, metadata: Mapping[str, Any], *,
              seed: int = 0) -> dict[str, float]:
    """How well a logistic regression tells real rows from synthetic ones, SDMetrics' recipe
    (LogisticDetection: robust scaling, lbfgs, ``DETECTION_FOLDS`` stratified folds), folds
    drawn from ``seed``.

    detection: SDMetrics' score, 1 - mean over folds of (2 * max(AUC, 0.5) - 1), in [0, 1],
    higher is better: the number SDV users quote. detection_auc: the same folds' ROC AUC,
    mean of max(AUC, 0.5), so 1 - detection / 2: 0.5 = indistinguishable, 1 = told apart every
    time; lower is better. A fold under 0.5 is noise, not rows more real than the real ones
    (identical rows on both sides give ~0.4: each row's twin in the fitting folds carries the
    other label), so it is clipped as SDMetrics clips it.
    Written by hand (its folds and classifier) because LogisticDetection draws its folds from
    numpy's global generator unseeded, fails on a synthetic category missing from the real
    rows, and drops boolean columns.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import RobustScaler

    if min(len(real), len(synth)) < DETECTION_FOLDS:
        raise ValueError(f"detection needs at least {DETECTION_FOLDS} real and synthetic rows, "
                         f"got {len(real)} and {len(synth)}")
    x_real, x_synth = _detection_features(real, synth, metadata)
    x = np.concatenate([x_real, x_synth])
    y = np.concatenate([np.ones(len(x_real)), np.zeros(len(x_synth))])  # 1 = real, as SDMetrics
    folds = StratifiedKFold(n_splits=DETECTION_FOLDS, shuffle=True, random_state=seed)
    aucs = []
    for fit_rows, test_rows in folds.split(x, y):
        model = Pipeline([("scaler", RobustScaler()),
                          ("classifier", LogisticRegression(solver="lbfgs"))])
        with warnings.catch_warnings():
            # SDMetrics' classifier has the default 100 iterations too; the score is its score.
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x[fit_rows], y[fit_rows])
        aucs.append(roc_auc_score(y[test_rows], model.predict_proba(x[test_rows])[:, 1]))
    auc = np.maximum(np.asarray(aucs), 0.5)
    return {"detection": float(1.0 - np.mean(2.0 * auc - 1.0)), "detection_auc": float(auc.mean())}


# --- privacy -------------------------------------------------------------------------------------


def _nearest_sq(rows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance from each row to its nearest row of ``others``, by blocks."""
    others_sq = np.square(others).sum(axis=1)
    step = max(1, DCR_BLOCK_BYTES // (8 * len(others)))
    out = np.empty(len(rows))
    for start in range(0, len(rows), step):
        block = rows[start : start + step]
        # |b|^2 - 2 a.b in place; a row's own |a|^2 moves no minimum, so it is added after.
        part = block @ others.T
        part *= -2.0
        part += others_sq
        out[start : start + step] = part.min(axis=1)
    return np.maximum(out + np.square(rows).sum(axis=1), 0.0)


def dcr_share(train_encoded: np.ndarray, test_encoded: np.ndarray, synth_encoded: np.ndarray, *,
              seed: int = 0) -> float:
    """Distance to closest record, as a share: of the synthetic rows, the fraction whose nearest
    training row is nearer than their nearest held-out row (a tie counts half), in the encoded
    space. The larger split is subsampled (from ``seed``) to the size of the smaller, so that
    rows drawn fresh from the data's distribution score ~0.5 and copies of the training rows
    ~1.0; when the training split is k times the held-out one, only the copies of the sampled
    training rows are caught, and copying everything scores ~0.5 + 0.5 / k.

    A privacy check to log, never a sensible objective: anything below 0.5 just means rows far
    from the training data, and the easiest way to get there is worse samples.
    """
    train = np.asarray(train_encoded, dtype=np.float64)
    test = np.asarray(test_encoded, dtype=np.float64)
    synth = np.asarray(synth_encoded, dtype=np.float64)
    if not (train.ndim == test.ndim == synth.ndim == 2
            and train.shape[1] == test.shape[1] == synth.shape[1]):
        raise ValueError(f"dcr_share needs 2-D arrays of one width, got {train.shape}, "
                         f"{test.shape} and {synth.shape}")
    if min(len(train), len(test), len(synth)) == 0:
        raise ValueError("dcr_share needs training, held-out and synthetic rows")
    rng = np.random.default_rng(seed)
    size = min(len(train), len(test))
    train = train[rng.choice(len(train), size, replace=False)] if len(train) > size else train
    test = test[rng.choice(len(test), size, replace=False)] if len(test) > size else test
    to_train, to_test = _nearest_sq(synth, train), _nearest_sq(synth, test)
    tie = np.abs(to_train - to_test) <= DCR_TIE_RTOL * (1.0 + np.square(synth).sum(axis=1))
    return float(np.where(tie, 0.5, to_train < to_test).mean())
