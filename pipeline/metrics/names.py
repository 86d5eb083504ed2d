"""The metric names the Evaluator can return, and which dataset kind each applies to.

Kept in one place so that config validation, the Evaluator and MLflow logging agree on spelling.
"""

from __future__ import annotations

from collections.abc import Sequence

# Computed on any dataset, in its feature space (coordinates or classifier features).
COMMON_METRICS = ("fid", "kid", "precision", "recall", "density", "coverage")
# Need the known mixture centres (PacGAN / VEEGAN protocol).
MODE_METRICS = ("modes_covered", "high_quality", "reverse_kl")
# Need class labels (for the classifier) and many dimensions (NDB's k-means bins).
IMAGE_METRICS = ("classes_covered", "class_kl", "ndb_fraction")

METRICS_BY_KIND: dict[str, tuple[str, ...]] = {
    "points": COMMON_METRICS + MODE_METRICS,
    "images": COMMON_METRICS + IMAGE_METRICS,
}
ALL_METRICS = COMMON_METRICS + MODE_METRICS + IMAGE_METRICS


def applicable_metrics(kind: str, has_centres: bool = True) -> tuple[str, ...]:
    """All metrics that can be computed for a dataset of this kind."""
    if kind not in METRICS_BY_KIND:
        raise ValueError(
            f"unknown dataset kind {kind!r}; expected one of {sorted(METRICS_BY_KIND)}"
        )
    names = METRICS_BY_KIND[kind]
    if kind == "points" and not has_centres:
        names = tuple(name for name in names if name not in MODE_METRICS)
    return names


def resolve_metrics(
    kind: str, requested: Sequence[str] | None, has_centres: bool = True
) -> tuple[str, ...]:
    """The requested names, checked (None means every applicable metric), in canonical order."""
    allowed = applicable_metrics(kind, has_centres)
    if requested is None:
        return allowed
    if isinstance(requested, str):  # a bare string would otherwise be split into letters
        requested = [requested]
    unknown = [name for name in requested if name not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown metric name(s) {unknown}; allowed names are {list(ALL_METRICS)}")
    inapplicable = [name for name in requested if name not in allowed]
    if inapplicable:
        raise ValueError(
            f"metric(s) {inapplicable} do not apply to this {kind} dataset"
            f"{'' if has_centres or kind != 'points' else ' (it has no mixture centres)'}; "
            f"allowed names here are {list(allowed)}"
        )
    if not requested:
        raise ValueError(f"no metrics requested; allowed names here are {list(allowed)}")
    return tuple(name for name in allowed if name in set(requested))
