from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline.__main__ import main
from pipeline.config import PROJECT_ROOT, Config, ConfigError
from pipeline.config_load import DEFAULTS_FILE, config_from_dict, load_config, read_yaml


def test_defaults_file_matches_dataclasses() -> None:
    assert config_from_dict(read_yaml(DEFAULTS_FILE)) == Config()


def test_flat_is_dotted_keys_to_values() -> None:
    default = Config().flat()
    flat = load_config(None, ["train.epochs=3", "model.g_hidden=[64, 32]"]).flat()
    assert set(flat) == set(default)
    assert {k: v for k, v in flat.items() if v != default[k]} == {
        "train.epochs": 3, "model.g_hidden": [64, 32]}
    assert {k: flat[k] for k in ("data.name", "train.seed", "model.activation")} == {
        "data.name": "grid25", "train.seed": 0, "model.activation": "relu"}


def test_overrides_are_typed_and_dotted() -> None:
    cfg = load_config(None, ["train.epochs=3", "model.g_hidden=[64, 32]", "train.g_lr=1e-3",
                             "data.std=0.1", "train.steps_per_epoch=null"])
    assert cfg.train.epochs == 3
    assert cfg.model.g_hidden == [64, 32]
    assert cfg.train.g_lr == pytest.approx(1e-3)
    assert isinstance(cfg.train.g_lr, float)
    assert cfg.data.std == 0.1
    assert cfg.train.steps_per_epoch is None


def test_file_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\n  seed: 3\n")
    cfg = load_config(f, ["train.seed=4"])
    assert (cfg.train.epochs, cfg.train.seed) == (7, 4)
    assert cfg.data.name == "grid25"  # from the defaults


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epoch=2", "unknown key 'train.epoch'"),
        ("trainer.epochs=2", "unknown key 'trainer'"),
        ("train.epochs=two", "train.epochs: got 'two', expected int"),
        ("train.epochs=2.5", "train.epochs: got 2.5, expected int"),
        ("train.epochs=0", "train.epochs: got 0, expected an integer in [1, 1000000]"),
        ("model.g_hidden=[64, 0]", "model.g_hidden: got 0"),
        ("model.d_hidden=[]", "model.d_hidden: got 0 layers, expected 1 to 32 hidden layers"),
        ("train.g_lr=0", "train.g_lr: got 0.0, expected a number in (0, 1]"),
        ("train.d_lr=-1e-4", "train.d_lr: got -0.0001"),
        ("model.activation=swish", "model.activation: got 'swish', expected one of relu"),
        ("data.name=cifar", "data.name: got 'cifar', expected one of ring8"),
        ("train.loss=wasserstein", "train.loss: got 'wasserstein'"),
        ("model.spectral_norm=maybe", "model.spectral_norm: got 'maybe', expected bool"),
        ("train.g_betas=[0.5]", "train.g_betas"),
        ("model.g_dropout=1.5", "model.g_dropout: got 1.5"),
        ("oops", "expected key=value"),
    ],
)
def test_bad_values_are_one_line_errors(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_malformed_yaml(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_config(f)


def test_cli_config_error_exits_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    db = tmp_path / "mlflow.db"
    code = main(["train", f"tracking.tracking_uri=sqlite:///{db}", "model.activation=swish"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: model.activation: got 'swish'")
    assert len(err.splitlines()) == 1
    assert not db.exists()
    assert not (tmp_path / "runs").exists()


def test_seed_article_config() -> None:
    cfg = load_config(PROJECT_ROOT / "conf" / "seed_article.yaml")
    assert cfg.model.g_hidden == [128] and cfg.model.d_hidden == [128]
    assert cfg.model.latent_dim == 100
    assert cfg.train.loss == "bce"
    assert cfg.train.g_lr == cfg.train.d_lr == pytest.approx(2e-4)
    assert cfg.train.g_betas == cfg.train.d_betas == [0.5, 0.999]


def test_flat_key_count() -> None:
    # A new config field changes these numbers: update them, and conf/defaults.yaml with them.
    per_section = Counter(key.split(".")[0] for key in Config().flat())
    assert per_section == {"data": 12, "model": 14, "train": 18, "eval": 7, "tracking": 4}, (
        "a config field was added or removed: update the counts in this test and "
        "conf/defaults.yaml")
    assert sum(per_section.values()) == 55
