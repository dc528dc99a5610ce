"""Typed, frozen stage configurations loaded from YAML, with one-line errors naming the field.

Every stage has one pydantic model (frozen, ``extra="forbid"``); the same model is the Prefect flow's parameter
schema. Options are documented once, in the model's ``Field(description=...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from care.errors import CareError

M = TypeVar("M", bound=BaseModel)


class StageConfig(BaseModel):
    """Base of every stage config: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


class ConfigError(CareError):
    """A config file or value is invalid; the message names the file and field."""


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One line per problem: ``source: field.path: message``."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see the config reference in README)"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def validate_config(model: type[M], data: dict[str, Any], source: str = "<config>") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(model: type[M], path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> M:
    """Load ``model`` from a YAML file (optional), then merge ``overrides`` (nested dict, see parse_overrides)."""
    data: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
        data.update(loaded)
    data = deep_merge(data, overrides or {})
    return validate_config(model, data, source)


def parse_overrides(assignments: list[str] | None) -> dict[str, Any]:
    """``["optim.learning_rate=1e-4", "iterations=5"]`` -> nested dict; values are parsed as YAML scalars.

    >>> parse_overrides(["optim.learning_rate=1e-4", "algo=grpo", "rollout.sampling.top_k=0"])
    {'optim': {'learning_rate': 0.0001}, 'algo': 'grpo', 'rollout': {'sampling': {'top_k': 0}}}
    """
    out: dict[str, Any] = {}
    for item in assignments or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. optim.learning_rate=1e-4)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and _looks_numeric(value):
            value = float(value)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _looks_numeric(text: str) -> bool:
    # YAML 1.1 reads "1e-4" (no dot) as a string; users mean a number
    try:
        float(text)
    except ValueError:
        return False
    return True


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``update`` into a copy of ``base``."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged
