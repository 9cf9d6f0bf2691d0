"""Loading: built-in defaults, then a YAML file, then OXYD_<SECTION>_<KEY> variables."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from oxyd.config.checks import _COLLECTED, ConfigError, _check, _report, _require, _unknown
from oxyd.config.sections import Config

# Environment variables that are not config keys.
RESERVED_ENV = {"OXYD_CONFIG", "OXYD_ADMIN_TOKEN", "OXYD_BACKUP_KEY", "OXYD_URL", "OXYD_TOKEN"}


def _coerce(value: Any, tp: Any, path: str, from_env: bool) -> Any:
    """Convert one raw value to the field's type, or raise ConfigError naming `path`."""
    optional = False
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = True, args[0]
    if value is None or (from_env and value == "" and optional):
        _require(optional, path, "must not be empty")
        return None
    if tp is bool:
        if from_env and isinstance(value, str):
            low = value.strip().lower()
            _require(low in ("1", "0", "true", "false", "yes", "no"), path, "must be true or false")
            return low in ("1", "true", "yes")
        _require(isinstance(value, bool), path, "must be true or false")
        return value
    if tp is int:
        if from_env and isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise ConfigError(f"{path}: must be an integer") from None
        _require(isinstance(value, int) and not isinstance(value, bool), path, "must be an integer")
        return value
    if tp is float:
        if from_env and isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{path}: must be a number") from None
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _require(
            ok and value == value and value not in (float("inf"), float("-inf")),
            path,
            "must be a number",
        )
        return float(value)
    if tp is str:
        if path == "cluster.node" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `node: 2` in YAML is an ordinal, as `node: "2"` is
        _require(isinstance(value, str), path, "must be a string")
        return value
    if tp is Path:
        _require(isinstance(value, str) and value != "", path, "must be a path")
        return Path(value)
    if typing.get_origin(tp) is tuple:
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        _require(
            isinstance(value, list) and all(isinstance(v, str) for v in value),
            path,
            "must be a list of strings",
        )
        return tuple(value)
    raise AssertionError(f"unhandled config type {tp!r} at {path}")


def _build(cls: type, raw: dict[str, Any], prefix: str, env_keys: set[str]) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            _report(_unknown(f"{prefix}{key}", str(key), names))
    kwargs = {}
    for name in names:
        if name not in raw:
            continue
        sub, path = hints[name], f"{prefix}{name}"
        try:
            if dataclasses.is_dataclass(sub):
                section = raw[name] if raw[name] is not None else {}
                _require(isinstance(section, dict), path, "must be a mapping")
                kwargs[name] = _build(sub, section, f"{path}.", env_keys)
            else:
                kwargs[name] = _coerce(raw[name], sub, path, path in env_keys)
        except ConfigError as e:  # reported with the others; the default stands in meanwhile
            if _COLLECTED.get() is None:
                raise
            _COLLECTED.get().extend(e.errors)
    return cls(**kwargs)


def _env_overrides(env: dict[str, str]) -> tuple[dict[str, Any], set[str]]:
    hints = typing.get_type_hints(Config)
    sections = {
        name: {g.name for g in dataclasses.fields(tp)}
        for name, tp in hints.items()
        if dataclasses.is_dataclass(tp)
    }
    out: dict[str, Any] = {}
    paths: set[str] = set()
    for var, value in env.items():
        if not var.startswith("OXYD_") or var in RESERVED_ENV:
            continue
        rest = var[len("OXYD_") :].lower()
        if rest == "data_dir":
            out["data_dir"] = value
            paths.add("data_dir")
            continue
        section, _, key = rest.partition("_")
        if section not in sections:
            continue  # not ours: other OXYD_* variables are left alone
        if key not in sections[section]:
            where = f" (from environment variable {var})"
            _report(_unknown(f"{section}.{key}", key, sections[section], where))
            continue
        out.setdefault(section, {})[key] = value
        paths.add(f"{section}.{key}")
    return out, paths


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(merged.get(k), dict):
            merged[k] = {**merged[k], **v}
        else:
            merged[k] = v
    return merged


def load(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Defaults <- YAML file (`path`, else $OXYD_CONFIG) <- OXYD_* environment variables."""
    env = dict(os.environ) if env is None else env
    if path is None:
        path = env.get("OXYD_CONFIG") or None
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"config file {path}: cannot be read ({e.strerror})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path}: not valid YAML ({e})") from None
        if loaded is not None:
            _check(isinstance(loaded, dict), f"config file {path}", "must be a mapping of sections")
            raw = loaded
    errors: list[str] = []
    token = _COLLECTED.set(errors)
    try:
        over, env_paths = _env_overrides(env)
        cfg = _build(Config, _merge(raw, over), "", env_paths)
        for f in dataclasses.fields(cfg):
            sub = getattr(cfg, f.name)
            if dataclasses.is_dataclass(sub):
                try:
                    sub.validate(f.name)
                except ConfigError as e:  # a check that cannot go on raises: keep the rest
                    errors.extend(e.errors)
    finally:
        _COLLECTED.reset(token)
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)))
    return cfg
