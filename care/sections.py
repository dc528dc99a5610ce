"""Typed partial sections of a stage config, and a stage config's variant with other defaults.

A config that composes stages types each stage's options as a **section**: the stage config's own fields
(descriptions, constraints, defaults) less the ones the composer fills in. ``PipelineConfig.rl`` is RLConfig
without model, data_root, frames and seed; ``RLConfig.eval`` is EvalConfig without checkpoint, data_root and
frames. Like every stage config a section is frozen and rejects unknown keys, so ``rl: {iterationz: 3}`` fails
as ``rl.iterationz: unknown key`` when the config is loaded, and the composer's Prefect parameter schema shows
every option of the section. The stage's checks across fields run when the composer builds the stage config.

A section stands for what was written: its dump holds only the keys that were set, nested ones included. So a
stage default that depends on another option (the algorithm's KL settings, care.algo.algorithms) still applies
when the composer builds the stage config from the dump, a section dumped and loaded again is the same section,
and a config's identity (``care.identity.run_id``) does not change when an unset default does.
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import copy
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field, create_model, model_serializer

from care.config import StageConfig

M = TypeVar("M", bound=BaseModel)


class Section(StageConfig):
    """Base of the partial sections: dumps only the keys that were set (see the module docstring)."""

    @model_serializer(mode="wrap")
    def _as_written(self, handler):
        return _only_set(self, handler(self))


def _only_set(model: BaseModel, dumped: Any) -> Any:
    if not isinstance(dumped, dict):
        return dumped
    kept = {}
    for name, out in dumped.items():
        if name not in model.model_fields_set:
            continue
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            out = _only_set(value, out)
        elif isinstance(value, list | tuple) and isinstance(out, list | tuple):
            out = [_only_set(v, o) if isinstance(v, BaseModel) else o for v, o in zip(value, out, strict=True)]
        kept[name] = out
    return kept


def section_of(model: type[BaseModel], *, omit: Iterable[str] = (), keep: Iterable[str] | None = None,
               optional: bool = False) -> type[Section]:
    """A ``Section`` with ``model``'s fields less ``omit`` (only ``keep``, when given); ``optional``: every field
    defaults to None (unset = "as the composer has it"). Subclass it to name and document the section.

    >>> from care.media.sampling import FrameSampling
    >>> Timing = section_of(FrameSampling, keep=["temporal"])
    >>> list(Timing.model_fields), Timing().model_dump(), Timing(temporal="fixed_1s").model_dump()
    (['temporal'], {}, {'temporal': 'fixed_1s'})
    """
    omitted, kept = set(omit), None if keep is None else set(keep)
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if name in omitted or (kept is not None and name not in kept):
            continue
        if optional:
            typed = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            fields[name] = (typed | None, Field(None, description=info.description))
        else:
            fields[name] = (info.annotation, copy(info))
    return create_model(f"{model.__name__}Section", __base__=Section, __module__=__name__, **fields)


def with_defaults(model: type[M], **defaults: Any) -> type[M]:
    """A subclass of ``model`` whose fields named in ``defaults`` default to those values, their descriptions and
    constraints kept (pydantic drops both when a subclass re-declares a field). Subclass it to name it.

    >>> from care.media.sampling import FrameSampling
    >>> Sixteen = with_defaults(FrameSampling, nframes=16)
    >>> Sixteen().nframes, Sixteen.model_fields["nframes"].description == FrameSampling.model_fields["nframes"].description
    (16, True)
    """
    fields: dict[str, Any] = {}
    for name, value in defaults.items():
        info = model.model_fields[name]
        typed = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        fields[name] = (typed, Field(value, description=info.description))
    return create_model(f"{model.__name__}Defaults", __base__=model, __module__=__name__, **fields)
