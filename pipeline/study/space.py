"""A study's search space: parameter specs -> Optuna suggestions -> config overrides.

Keys are the dotted config keys (``train.g_lr``), plus a few that expand into list-valued keys:

- ``model.g_layers`` / ``model.d_layers``: the number of hidden layers; ``model.g_width`` /
  ``model.d_width`` then give the distribution of each layer's width, sampled once per existing
  layer as ``model.g_width_0``, ``model.g_width_1``, ... (conditional on the layer count).
- ``train.beta1`` / ``train.beta2`` (both optimizers) or ``train.g_beta1``, ``train.d_beta2``, ...

Conditional parameters: ``when: {key: value or [values]}`` samples a parameter only when the
(sampled or fixed) config has that value. ``model.leaky_slope`` is only sampled for an activation
that uses it and ``train.gp_weight`` only for a loss with a penalty (wgan-gp), without saying so.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from pipeline.config_load import build_dataclass, coerce, config_from_dict
from pipeline.errors import ConfigError
from pipeline.losses import LOSSES
from pipeline.networks import ACTIVATIONS

LAYER_KEYS = {  # count key -> (width key, config list key)
    "model.g_layers": ("model.g_width", "model.g_hidden"),
    "model.d_layers": ("model.d_width", "model.d_hidden"),
}
WIDTH_KEYS = {width: (count, target) for count, (width, target) in LAYER_KEYS.items()}
BETA_KEYS = {  # pseudo key -> the (list key, index) pairs it sets
    "train.beta1": [("train.g_betas", 0), ("train.d_betas", 0)],
    "train.beta2": [("train.g_betas", 1), ("train.d_betas", 1)],
    "train.g_beta1": [("train.g_betas", 0)],
    "train.g_beta2": [("train.g_betas", 1)],
    "train.d_beta1": [("train.d_betas", 0)],
    "train.d_beta2": [("train.d_betas", 1)],
}
# Keys that only matter for some values of others: predicates on the flat config, read from the
# registries (which activations use a slope, which losses have a penalty).
IMPLICIT_WHEN: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    "model.leaky_slope": lambda flat: any(
        ACTIVATIONS[name].uses_slope
        for name in (flat["model.activation"], flat["model.d_activation"]) if name),
    "train.gp_weight": lambda flat: LOSSES[flat["train.loss"]].penalty is not None,
}
TYPES = ("float", "int", "categorical")


@dataclass
class ParamSpec:
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    when: dict[str, Any] | None = None


def parse_space(raw: Any, base: Mapping[str, Any]) -> dict[str, ParamSpec]:
    """Validate a ``search_space`` mapping against the base config; raises ConfigError."""
    if not isinstance(raw, Mapping) or not raw:
        raise ConfigError("search_space: expected a non-empty mapping of config keys to specs")
    known = set(config_from_dict(base).flat()) | set(LAYER_KEYS) | set(WIDTH_KEYS) | set(BETA_KEYS)
    space: dict[str, ParamSpec] = {}
    for key, spec_raw in raw.items():
        where = f"search_space.{key}"
        if key not in known:
            raise ConfigError(f"{where}: unknown key (expected a config key such as train.g_lr, "
                              f"or one of {', '.join([*LAYER_KEYS, *WIDTH_KEYS, *BETA_KEYS])})")
        spec = build_dataclass(ParamSpec, spec_raw, prefix=f"{where}.")
        _check_param(where, spec)
        for cond_key in (spec.when or {}):
            if cond_key not in known:
                raise ConfigError(f"{where}.when: unknown key {cond_key!r}")
        space[key] = spec
    for width, (count, _) in WIDTH_KEYS.items():
        if count in space and width not in space:
            raise ConfigError(f"search_space.{count}: needs {width} (the width of each layer)")
    for key, spec in space.items():
        for value in _extremes(spec):
            try:
                config_from_dict(apply({key: value}, base, expand_widths=True))
            except ConfigError as exc:
                raise ConfigError(
                    f"search_space.{key}: value {value!r} is invalid ({exc})") from None
    return space


def check_pairs(space: Mapping[str, ParamSpec], base: Mapping[str, Any]) -> None:
    """Every two parameters at their extremes together (each categorical choice, each end of a
    range), as ``sample`` would apply them. The config's rules relate two settings at a time
    (epochs and the evaluation interval, a loss and its penalty), so a space that passes can
    reach no invalid trial through them; otherwise that mistake fails every trial that draws
    it, after the study was created. The sweep runs it before creating anything (~1 ms a
    pair of values: a second for 15 parameters), not every reader of a study file."""
    order = sorted(space, key=lambda k: _is_conditional(k, space[k]))
    base_flat = config_from_dict(base).flat()
    after: dict[tuple[str, str], Mapping[str, Any]] = {}  # (key, repr(value)) -> flat config
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            for va, vb in itertools.product(_extremes(space[a]), _extremes(space[b])):
                chosen = {a: va} if _applies(a, space[a], base_flat) else {}
                if chosen and _is_conditional(b, space[b]):
                    flat = after.setdefault((a, repr(va)), config_from_dict(
                        apply(chosen, base, expand_widths=True)).flat())
                else:
                    flat = base_flat
                if not chosen or not _applies(b, space[b], flat):
                    continue  # one is never drawn beside the other's value
                try:
                    config_from_dict(apply({a: va, b: vb}, base, expand_widths=True))
                except ConfigError as exc:
                    raise ConfigError(f"search_space: {a}={va!r} with {b}={vb!r} makes an "
                                      f"invalid config ({exc})") from None


def _applies(key: str, spec: ParamSpec, current: Mapping[str, Any]) -> bool:
    """Whether ``sample`` suggests ``key`` given the config so far (``current``, flat)."""
    if key in WIDTH_KEYS:
        return True
    implicit = IMPLICIT_WHEN.get(key)
    return (implicit is None or implicit(current)) and all(
        _matches(current[k], v) for k, v in (spec.when or {}).items())


def _check_param(where: str, spec: ParamSpec) -> None:
    if spec.type not in TYPES:
        raise ConfigError(f"{where}.type: got {spec.type!r}, expected one of {', '.join(TYPES)}")
    if spec.type == "categorical":
        if not spec.choices:
            raise ConfigError(f"{where}.choices: expected a non-empty list")
        for choice in spec.choices:
            if not isinstance(choice, (str, int, float, bool)) and choice is not None:
                raise ConfigError(f"{where}.choices: {choice!r} is not a str, number or bool")
        return
    if spec.low is None or spec.high is None:
        raise ConfigError(f"{where}: a {spec.type} parameter needs low and high")
    if not (math.isfinite(spec.low) and math.isfinite(spec.high)):
        raise ConfigError(f"{where}: low and high must be finite numbers, got {spec.low} and "
                          f"{spec.high}")
    if spec.low > spec.high:
        raise ConfigError(f"{where}: low ({spec.low}) is greater than high ({spec.high})")
    if spec.log and spec.low <= 0:
        raise ConfigError(f"{where}: log scale needs low > 0, got {spec.low}")
    if spec.log and spec.step is not None:
        raise ConfigError(f"{where}: step and log cannot be combined")
    if spec.type == "int" and not all(float(v).is_integer() for v in (spec.low, spec.high)):
        raise ConfigError(f"{where}: an int parameter needs whole-number low and high")


def _extremes(spec: ParamSpec) -> list[Any]:
    if spec.type == "categorical":
        return list(spec.choices or [])
    if spec.type == "int":
        return [int(spec.low or 0), int(spec.high or 0)]
    return [spec.low, spec.high]


def suggest(trial: optuna.trial.BaseTrial, key: str, spec: ParamSpec) -> Any:
    if spec.type == "categorical":
        return trial.suggest_categorical(key, spec.choices or [])
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1),
                                 log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def sample(
    trial: optuna.trial.BaseTrial, space: Mapping[str, ParamSpec], base: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Suggest every applicable parameter; returns (nested config dict, sampled params)."""
    sampled: dict[str, Any] = {}
    # Unconditional parameters first, so conditions can see sampled values.
    order = sorted(space, key=lambda k: _is_conditional(k, space[k]))
    for key in order:
        spec = space[key]
        if key in WIDTH_KEYS:
            count_key, target = WIDTH_KEYS[key]
            n = sampled.get(count_key, len(_get(base, target)))
            for i in range(n):
                sampled[f"{key}_{i}"] = suggest(trial, f"{key}_{i}", spec)
            continue
        if _applies(key, spec, config_from_dict(apply(sampled, base)).flat()):
            sampled[key] = suggest(trial, key, spec)
    return apply(sampled, base), sampled


def apply(
    sampled: Mapping[str, Any], base: Mapping[str, Any], *, expand_widths: bool = False
) -> dict[str, Any]:
    """Write sampled values (real and pseudo keys) into a copy of the nested base config."""
    out = copy.deepcopy(dict(base))
    for key, value in sampled.items():
        if key in LAYER_KEYS:
            width_key, target = LAYER_KEYS[key]
            widths = [sampled.get(f"{width_key}_{i}") for i in range(int(value))]
            default = (_get(out, target) or [128])[0]
            _set(out, target, [w if w is not None else default for w in widths])
        elif key in WIDTH_KEYS and expand_widths:  # validation: every layer at this width
            target = WIDTH_KEYS[key][1]
            _set(out, target, [value] * len(_get(out, target)))
        elif key.rpartition("_")[0] in WIDTH_KEYS:
            width_key, _, index = key.rpartition("_")
            count_key, target = WIDTH_KEYS[width_key]
            if count_key not in sampled:
                widths = list(_get(out, target))
                widths[int(index)] = value
                _set(out, target, widths)
        elif key in BETA_KEYS:
            for list_key, position in BETA_KEYS[key]:
                betas = list(_get(out, list_key))
                betas[position] = value
                _set(out, list_key, betas)
        else:
            _set(out, key, value)
    return out


def fixed_params(
    params: Any, space: Mapping[str, ParamSpec], base: Mapping[str, Any], *, where: str
) -> dict[str, Any]:
    """A trial to enqueue (``{space key: value}``) as Optuna parameter names; raises ConfigError.

    Values must lie in the search space. A width pseudo key gives every layer that width
    (``model.g_width: 128`` -> ``model.g_width_0``, ``_1``, ...). Keys left out are sampled.
    """
    if not isinstance(params, Mapping) or not params:
        raise ConfigError(f"{where}: expected a mapping of search_space keys to values")
    fixed: dict[str, Any] = {}
    for key, value in params.items():
        if key not in space:
            raise ConfigError(f"{where}.{key}: not in search_space (only searched keys can be "
                              f"fixed; change the base config for the others)")
        if space[key].type == "float" and isinstance(value, str):
            value = coerce(f"{where}.{key}", value, float)  # YAML reads 5e-4 as a string
        if not _contains(space[key], value):
            raise ConfigError(f"{where}.{key}: {value!r} is outside the search space "
                              f"({_describe(space[key])})")
        if key in WIDTH_KEYS:
            count_key, target = WIDTH_KEYS[key]
            count_spec = space.get(count_key)
            n = (params[count_key] if count_key in params
                 else int(count_spec.high or 0) if count_spec is not None
                 else len(_get(base, target)))
            fixed.update({f"{key}_{i}": value for i in range(int(n))})
        else:
            fixed[key] = value
    try:
        config_from_dict(apply(fixed, base))
    except ConfigError as exc:
        raise ConfigError(f"{where}: not a valid config ({exc})") from None
    return fixed


def _contains(spec: ParamSpec, value: Any) -> bool:
    if spec.type == "categorical":
        return value in (spec.choices or [])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if spec.type == "int" and not float(value).is_integer():
        return False
    return (spec.low or 0) <= value <= (spec.high or 0)


def _describe(spec: ParamSpec) -> str:
    if spec.type == "categorical":
        return f"choices {spec.choices}"
    return f"{spec.type} in [{spec.low}, {spec.high}]"


def _is_conditional(key: str, spec: ParamSpec) -> bool:
    return bool(spec.when) or key in IMPLICIT_WHEN or key in WIDTH_KEYS


def _matches(actual: Any, wanted: Any) -> bool:
    return actual in wanted if isinstance(wanted, list) else actual == wanted


def _get(nested: Mapping[str, Any], dotted: str) -> Any:
    """Look up a key in the base, which is always a complete resolved config (Config.to_dict)."""
    section, _, name = dotted.partition(".")
    return nested[section][name]


def _set(nested: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, name = dotted.partition(".")
    nested.setdefault(section, {})[name] = value
