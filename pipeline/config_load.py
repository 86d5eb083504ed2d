"""Loading a config: YAML files and ``key=value`` overrides -> a validated ``Config``.

Config flows one way: ``conf/defaults.yaml`` <- a config file <- command-line overrides, merged as
plain dicts, then built into the dataclasses of ``pipeline.config``, each value checked against
its type hint. Malformed YAML, a repeated key, an alias, an unknown key or a wrong type raises
``ConfigError`` with a one-line message that names the key; a value such a message echoes is
shown with its secrets masked and cut short (``mask_secrets``, ``cut``, ``shown``: the one place
every module that prints a user's value or a URI takes them from).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import PROJECT_ROOT, Config
from pipeline.errors import ConfigError

DEFAULTS_FILE = PROJECT_ROOT / "conf" / "defaults.yaml"


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    extra: Mapping[str, Any] | None = None,
    defaults: str | Path | None = DEFAULTS_FILE,
) -> Config:
    """Defaults <- YAML file <- ``extra`` (nested, e.g. a study's base) <- ``key=value``."""
    merged: dict[str, Any] = {}
    if defaults is not None and Path(defaults).exists():
        merged = deep_merge(merged, read_yaml(defaults))
    if path is not None:
        merged = deep_merge(merged, read_yaml(path))
    merged = deep_merge(merged, extra or {})
    merged = deep_merge(merged, parse_overrides(overrides))
    return config_from_dict(merged)


MAX_YAML_BYTES = 1_000_000  # a config or study file is a few KB: more is a wrong file
MAX_YAML_DEPTH = 50  # nesting levels; a config has 2 or 3
SHOWN_CHARS = 200  # what an error message echoes of a value


# A URL's password (scheme://user:PASSWORD@host, up to the last '@' before the host) and
# query parameters that carry a secret (?password=, &access_token=, ;sig= ...).
_USERINFO_PASSWORD = re.compile(r"(://[^:/@\s'\"]*:)[^\s'\"/]*@")
_QUERY_SECRET = re.compile(
    r"((?:^|[?&;\s])(?:[a-z_]*(?:password|passwd|pwd|secret|token|api_?key)|key|sig|signature"
    r"|auth)=)[^&;\s'\"]*", re.IGNORECASE)


def mask_secrets(value: Any) -> Any:
    """Passwords in URIs hidden, for every kind (postgresql://u:pw@, http://u:pw@, ?password=):
    the one function everything that prints, logs or tags a URI, or an error holding one, uses.
    Anything but a string is returned as is."""
    if isinstance(value, str):
        return _QUERY_SECRET.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", value))
    return value


def cut(text: str) -> str:
    """Text for an error message: secrets masked, cut to SHOWN_CHARS (a pasted blob keeps the
    message short)."""
    text = mask_secrets(text)
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[:SHOWN_CHARS]}... ({len(text):,} characters)"


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, secrets masked and cut to SHOWN_CHARS."""
    return cut(repr(value))


def read_text_file(path: Path, what: str = "file") -> str:
    """A small UTF-8 text file. At most MAX_YAML_BYTES + 1 bytes are read, so /dev/zero, an
    image or a multi-gigabyte file given by mistake fails at once."""
    try:
        if path.is_dir():
            raise ConfigError(f"{path}: a folder, not a {what}")
        if path.is_fifo() or path.is_socket():  # opening one would wait for a writer
            raise ConfigError(f"{path}: not a regular file, expected a {what}")
        with open(path, "rb") as fh:
            data = fh.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file, not a YAML {what}")
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES:,} bytes, not a YAML {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}), not a YAML {what}"
                          ) from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    data = parse_yaml(read_text_file(path), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML this project does not accept (a repeated key, an anchor)."""


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without its two silent traps: a key given twice (PyYAML keeps the
    last one, so an edit lower down the file silently wins) and anchors/aliases (``&a``/``*a``:
    a few lines of aliases expand to billions of values; a config file never needs them)."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(problem="anchors and aliases (&name, *name) are not allowed; write "
                                   "the value out", problem_mark=event.start_mark)
        if self.depth >= MAX_YAML_DEPTH:  # before Python's recursion limit, and at once
            raise _Refused(problem=f"nested more than {MAX_YAML_DEPTH} levels deep",
                           problem_mark=event.start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<': merged keys may be overridden, that is what it is for
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if seen:
                raise _Refused(problem=f"duplicate key {shown(key)} (first at line "
                                       f"{first[key] + 1})", problem_mark=key_node.start_mark)
            first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text -> Python values; malformed YAML, a repeated key or an alias is a ConfigError
    naming ``source`` and the line."""
    if len(text) > MAX_YAML_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_YAML_BYTES:,} characters, not YAML "
                          f"this project reads")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds no objects
    except _Refused as exc:
        mark = exc.problem_mark
        raise ConfigError(f"{source}: line {mark.line + 1 if mark else '?'}: "
                          f"{exc.problem}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{source}: malformed YAML{line}: {cut(str(problem))}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{source}: unreadable value ({cut(str(exc).split(';')[0])})"
                          ) from None


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["train.epochs=2", "model.g_hidden=[64,64]"]`` -> nested dict; values parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {shown(item)}: expected key=value, e.g. train.epochs=2")
        # a repeated key or an alias is refused here too
        value = parse_yaml(raw, f"{cut(key)}: value {shown(raw)}") if raw.strip() else None
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {shown(item)}: {shown(part)} is a value, not a "
                                  f"section")
        node[parts[-1]] = value
    return nested


def config_from_dict(data: Mapping[str, Any]) -> Config:
    config = build_dataclass(Config, data, prefix="")
    config.validate()
    return config


def build_dataclass(cls: type, data: Any, prefix: str) -> Any:
    """A dataclass from a mapping, each value checked against its type hint; unknown keys fail."""
    where = prefix.rstrip(".") or "config"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: got {data!r}, expected a mapping")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown key '{prefix}{unknown[0]}' (allowed in {where}: {', '.join(names)})"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            kwargs[name] = build_dataclass(hint, value, prefix=f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(f"{prefix}{name}", value, hint)
    return cls(**kwargs)


def coerce(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a type hint (int, float, str, bool, list[...], X | None)."""
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: got {value!r}, expected a mapping")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [o for o in options if o is not type(None)]
        return coerce(key, value, inner)
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: got {value!r}, expected a list of {inner.__name__}")
        return [coerce(key, v, inner) for v in value]
    if hint is float and isinstance(value, str):
        # PyYAML reads 1e-3 (no dot) as a string; users write learning rates that way.
        try:
            return float(value)
        except ValueError:
            pass
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        raise ConfigError(f"{key}: got {value!r}, expected {hint.__name__}")
    return float(value) if hint is float else value


def deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: sections merged key by key, any other value replaced."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
