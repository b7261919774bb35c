"""Configs: YAML files selected by name, overridden by ``key=value`` arguments, checked strictly.

A config is a tree of dataclasses. ``load_config("small", ["target.epochs=3"], PrepareConfig)``
reads ``forgetkit/configs/small.yaml`` (or a path to any YAML file), applies the overrides
(dotted keys; values parsed as YAML scalars) and builds the dataclasses, raising
:class:`ConfigError` for an unknown key or a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from importlib import resources
from pathlib import Path

import yaml

from forgetkit.errors import ConfigError, SettingError, first_line
from forgetkit.io import fingerprint

CONFIG_PACKAGE = "forgetkit.configs"


def shipped_configs(kind: str = "") -> list[str]:
    """Names of the YAML configs shipped in ``forgetkit/configs/<kind>``."""
    root = resources.files(CONFIG_PACKAGE).joinpath(kind) if kind else resources.files(CONFIG_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def config_path(name_or_path: str, kind: str = "") -> Path:
    """Resolve a shipped config name (``small``) or a path to a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    root = resources.files(CONFIG_PACKAGE).joinpath(kind) if kind else resources.files(CONFIG_PACKAGE)
    candidate = Path(str(root.joinpath(f"{name_or_path}.yaml")))
    if not candidate.is_file():
        known = ", ".join(shipped_configs(kind)) or "none"
        raise ConfigError(f"unknown config '{name_or_path}' (shipped: {known}; or give a path to a .yaml file)")
    return candidate


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys from ``key=value`` strings (values parsed as YAML: ``3``, ``1e-3``, ``[a,b]``)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        set_dotted(data, key, value)
    return data


def set_dotted(data: dict, key: str, value) -> None:
    """``data["a"]["b"] = value`` for ``key`` ``"a.b"``, creating sections as needed."""
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def build(cls: type, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown key '{key}' (known here: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except SettingError as exc:  # a range check of the dataclass: name the setting by its full dotted key
        raise SettingError(f"{where}.{exc.setting}" if where and not exc.setting.startswith(f"{where}.")
                           else exc.setting, exc.problem) from None
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(tp, value, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin in (list, tuple):
        (item,) = typing.get_args(tp)[:1] or (typing.Any,)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        items = [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is typing.Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int and isinstance(value, bool):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {type(value).__name__} ({value!r})")
    return value


def load_config(name_or_path: str, overrides: list[str] | None, cls: type, kind: str = ""):
    """Load a config by shipped name or path, apply overrides, and build ``cls``."""
    path = config_path(name_or_path, kind)
    data = apply_overrides(read_yaml(path), list(overrides or []))
    try:
        return build(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path.name}: {exc}") from None


# Field metadata of a setting added after configs were first cached: left out of `plain_config` (and so of
# every cache key) while it has its default, so that what was cached before the setting existed is kept.
ADDED_SETTING = {"forgetkit_added_setting": True}


def flag_setting(default, help: str, *, added: bool = False, const=None, metavar: str | None = None):
    """A dataclass field that is also a command-line flag (``cli.add_setting_flags``): its ``help``; for an
    optional value, ``const`` is what the bare flag gives; ``added`` as ``ADDED_SETTING``."""
    metadata = {"help": help, **(ADDED_SETTING if added else {})}
    metadata.update({k: v for k, v in (("const", const), ("metavar", metavar)) if v is not None})
    return dataclasses.field(default=default, metadata=metadata)


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def plain_config(obj):
    """A (nested) config dataclass as plain dicts and lists, like ``dataclasses.asdict``, without the
    ``ADDED_SETTING`` fields that hold their defaults."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain_config(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("forgetkit_added_setting") and getattr(obj, f.name) == _default(f))}
    if isinstance(obj, dict):
        return {k: plain_config(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(plain_config(v) for v in obj)
    return obj


def config_hash(obj) -> str:
    """Stable hash of a (nested) dataclass or plain value: the key of a cached stage."""
    def plain(value):
        raise TypeError(f"cannot hash a {type(value).__name__} config value")

    return fingerprint([json.dumps(plain_config(obj), sort_keys=True, default=plain).encode()])
