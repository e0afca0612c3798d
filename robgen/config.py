"""What every operation config shares: a frozen dataclass per operation (TrainConfig, SampleConfig, ScoreConfig,
EvalConfig, ...) is the single source of its defaults; the API fills it from keyword options and the CLI builds its
options' defaults from its fields."""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, TypeVar

from .errors import RobgenError

C = TypeVar("C")


def defaults(cls: type) -> dict[str, Any]:
    """The config's fields and their defaults, in declaration order."""
    return {f.name: f.default for f in fields(cls)}


def with_options(cls: type[C], options: dict[str, Any], what: str, base: C | None = None, *,
                 skip_none: bool = False) -> C:
    """`base` (default: cls()) with `options` replacing its fields (None values left out with skip_none); an option
    that is not a field is a one-line RobgenError naming the known ones."""
    known = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise RobgenError(f"unknown {what} option {unknown[0]!r}; known: {', '.join(known)}")
    given = {k: v for k, v in options.items() if not (skip_none and v is None)}
    return replace(base if base is not None else cls(), **given)
