"""One registry per kind of name: config accepts exactly the registry's names, and a new entry
(a dataset, an activation, a loss, a metric) works end to end with no edit anywhere else."""

from __future__ import annotations

import optuna
import pytest
import torch
from fit_helper import fit
from torch import nn

from pipeline import losses
from pipeline.config import ConfigError
from pipeline.config_load import config_from_dict, load_config
from pipeline.data import DATASETS, Mixture
from pipeline.metrics import registry, scorers
from pipeline.networks import ACTIVATIONS, NORMS, OUTPUT_ACTIVATIONS, Activation
from pipeline.prepare import cached_dataset
from pipeline.readers.mixtures import ring_centres
from pipeline.study.space import sample
from pipeline.study.spec import parse_study

CHOICES = [
    ("data.name", list(DATASETS)),
    ("model.activation", list(ACTIVATIONS)),
    ("model.g_norm", list(NORMS)),
    ("model.d_norm", list(NORMS)),
    ("model.output_activation", ["auto", *OUTPUT_ACTIVATIONS]),
    ("train.loss", list(losses.LOSSES)),
]


@pytest.mark.parametrize(("key", "names"), CHOICES, ids=[k for k, _ in CHOICES])
def test_config_allows_exactly_the_registry(key: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}=no-such-name"])
    assert str(info.value) == (f"{key}: got 'no-such-name', expected one of "
                               f"{', '.join(names)}")
    for name in names:
        assert load_config(None, [f"{key}={name}"]).flat()[key] == name


def test_eval_metrics_are_the_metric_registry() -> None:
    with pytest.raises(ConfigError, match=r"eval.metrics: got 'fidd', expected one of fid, kid"):
        load_config(None, ["eval.metrics=[fidd]"])
    assert list(registry.METRICS) == [n for f in registry.FAMILIES for n in f.names]
    assert registry.MAIN_METRICS == ("fid", "modes_covered", "high_quality", "reverse_kl",
                                     "classes_covered", "class_kl", "quality",
                                     "category_coverage")


def _spread(ref: scorers.Reference) -> scorers.Scorer:
    """A new metric for the test: the fake samples' mean distance from the origin."""
    return lambda fakes: {"spread": float(fakes.head.norm(dim=1).mean())}


def test_new_entries_need_only_their_registry(tiny_config, monkeypatch: pytest.MonkeyPatch,
                                              store_uri: str) -> None:
    """ring16, softplus, a squared-hinge loss and a 'spread' metric, each added to its registry
    alone, train, evaluate and can be searched by a study."""
    monkeypatch.setitem(DATASETS, "ring16", Mixture(lambda r: ring_centres(16, r), std=0.01))
    monkeypatch.setitem(ACTIVATIONS, "softplus", Activation(lambda _: nn.Softplus()))
    monkeypatch.setitem(losses.LOSSES, "sq-hinge", losses.Loss(
        d_loss=lambda r, f: torch.relu(1 - r).pow(2).mean() + torch.relu(1 + f).pow(2).mean(),
        g_loss=lambda f: -f.mean()))
    family = registry.Family((registry.Metric("spread", "lower"),), lambda traits: True, _spread)
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES, family))
    monkeypatch.setitem(registry.METRICS, "spread", family.metrics[0])

    cfg = tiny_config("data.name=ring16", "model.activation=softplus", "train.loss=sq-hinge",
                      "train.epochs=1", "eval.metrics=[modes_covered, spread]")
    result = fit(cfg)
    assert set(result.metrics) == {"val/modes_covered", "val/spread", "val/eval_seconds"}
    # ring16 is drawn from the seed (a Mixture), so each seed has its own cache entry.
    assert not torch.equal(cached_dataset(cfg.data, 1).train, cached_dataset(cfg.data, 2).train)
    # The mode metric counts ring16's sixteen centres: a sample at every centre covers 16.
    from pipeline.metrics.modes import mixture_mode_metrics
    centres = ring_centres(16)
    assert mixture_mode_metrics(centres, centres, 0.01)["modes_covered"] == 16

    # A study searches the new names: a trial that draws them gets a config that uses them,
    # while a name no registry holds is refused when the study is read.
    study_text = """
base: {data: {name: ring16}, eval: {metrics: [spread]}}
objective: {metric: val/spread, direction: minimize}
search_space:
  model.activation: {type: categorical, choices: [softplus, %s]}
  train.loss: {type: categorical, choices: [sq-hinge, hinge]}
"""
    study = parse_study(study_text % "relu", default_name="extended")
    trial = optuna.trial.FixedTrial({"model.activation": "softplus", "train.loss": "sq-hinge"})
    nested, params = sample(trial, study.space, study.base.to_dict())
    drawn = config_from_dict(nested)
    assert (drawn.data.name, drawn.model.activation, drawn.train.loss) == (
        "ring16", "softplus", "sq-hinge")
    assert params == {"model.activation": "softplus", "train.loss": "sq-hinge"}
    with pytest.raises(ConfigError, match=r"search_space\.model\.activation: value 'swish'"):
        parse_study(study_text % "swish", default_name="extended")
