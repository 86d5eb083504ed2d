"""Sample-quality and mode-collapse metrics for GANs, computed by one Evaluator per run."""

from pipeline.metrics.classifier import (
    CLASSIFIER_VERSION,
    MLPClassifier,
    load_or_train_classifier,
)
from pipeline.metrics.evaluator import Evaluator
from pipeline.metrics.modes import class_metrics, kl_divergence, mixture_mode_metrics
from pipeline.metrics.names import (
    ALL_METRICS,
    COMMON_METRICS,
    IMAGE_METRICS,
    METRICS_BY_KIND,
    MODE_METRICS,
    applicable_metrics,
    resolve_metrics,
)
from pipeline.metrics.ndb import NDB
from pipeline.metrics.prdc import precision_recall_density_coverage

__all__ = [
    "ALL_METRICS",
    "CLASSIFIER_VERSION",
    "COMMON_METRICS",
    "IMAGE_METRICS",
    "METRICS_BY_KIND",
    "MODE_METRICS",
    "NDB",
    "Evaluator",
    "MLPClassifier",
    "applicable_metrics",
    "class_metrics",
    "kl_divergence",
    "load_or_train_classifier",
    "mixture_mode_metrics",
    "precision_recall_density_coverage",
    "resolve_metrics",
]
