"""Sample-quality and mode-collapse metrics for GANs, computed by one Evaluator per run; the
scores of synthetic tables (tabular, privacy) on decoded rows."""

from pipeline.metrics.classifier import (
    CLASSIFIER_VERSION,
    MLPClassifier,
    load_or_train_classifier,
)
from pipeline.metrics.evaluator import Evaluator
from pipeline.metrics.modes import class_metrics, kl_divergence, mixture_mode_metrics
from pipeline.metrics.ndb import NDB
from pipeline.metrics.prdc import precision_recall_density_coverage
from pipeline.metrics.privacy import dcr_share, detection
from pipeline.metrics.registry import (
    FAMILIES,
    MAIN_METRICS,
    METRICS,
    applicable_metrics,
    check_settings,
    resolve_metrics,
    val_key,
)
from pipeline.metrics.tabular import (
    MAX_PAIRS,
    PairSample,
    category_metrics,
    column_pairs,
    quality,
)

__all__ = [
    "CLASSIFIER_VERSION",
    "FAMILIES",
    "MAIN_METRICS",
    "MAX_PAIRS",
    "METRICS",
    "NDB",
    "Evaluator",
    "MLPClassifier",
    "PairSample",
    "applicable_metrics",
    "category_metrics",
    "check_settings",
    "class_metrics",
    "column_pairs",
    "dcr_share",
    "detection",
    "kl_divergence",
    "load_or_train_classifier",
    "mixture_mode_metrics",
    "precision_recall_density_coverage",
    "quality",
    "resolve_metrics",
    "val_key",
]
