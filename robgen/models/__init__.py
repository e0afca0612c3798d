"""Classifiers as robgen sees them: a registered architecture wrapped with its normalisation and metadata."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ..errors import RobgenError
from .nets import ARCHS

__all__ = ["ARCHS", "Classifier", "ModelMeta", "build_classifier"]


@dataclass
class ModelMeta:
    """Everything needed to rebuild and use a classifier, stored as JSON beside its weights."""

    arch: str
    num_classes: int
    input_shape: tuple[int, int, int] = (3, 32, 32)
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    class_names: list[str] = field(default_factory=list)
    dataset: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 1:
            raise RobgenError(f"num_classes must be a positive whole number, got {self.num_classes!r}")
        if len(self.input_shape) != 3 or not all(isinstance(v, int) and v > 0 for v in self.input_shape):
            raise RobgenError(f"input_shape must be 3 positive whole numbers (channels, height, width), got "
                              f"{list(self.input_shape)}")
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if not self.class_names:
            self.class_names = [str(k) for k in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise RobgenError(f"{len(self.class_names)} class names given for {self.num_classes} classes")
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise RobgenError(f"mean/std need {channels} values (one per channel), got {self.mean} / {self.std}")
        if not all(0 < s < float("inf") for s in self.std):  # a zero std makes every logit NaN
            raise RobgenError(f"std must be positive and finite (inputs are divided by it), got {self.std}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelMeta":
        """Metadata from a checkpoint header; anything malformed is a one-line error saying what (the caller adds
        which file)."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise RobgenError(f"its robgen metadata is not JSON ({err.msg})") from None
        if not isinstance(data, dict):
            raise RobgenError(f"its robgen metadata is a JSON {type(data).__name__}, not an object")
        missing = [k for k in ("arch", "num_classes") if k not in data]
        if missing:
            raise RobgenError(f"its robgen metadata lacks {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError) as err:
            raise RobgenError(f"its robgen metadata is malformed ({err})") from None

    def class_index(self, cls: int | str) -> int:
        """A class given by index or name; out-of-range or unknown names raise a one-line error."""
        if isinstance(cls, str) and not cls.lstrip("-").isdigit():
            if cls not in self.class_names:
                raise RobgenError(f"unknown class {cls!r}; this model's classes: {', '.join(self.class_names)}")
            return self.class_names.index(cls)
        index = int(cls)
        if not 0 <= index < self.num_classes:
            names = ", ".join(f"{i}={n}" for i, n in enumerate(self.class_names))
            raise RobgenError(
                f"unknown class {index} for a {self.num_classes}-class model; "
                f"valid: 0..{self.num_classes - 1} ({names})"
            )
        return index


class Classifier(nn.Module):
    """Takes images in [0, 1], normalises them, returns logits. `net` holds the RobustBench-compatible weights."""

    def __init__(self, net: nn.Module, meta: ModelMeta):
        super().__init__()
        self.net = net
        self.meta = meta
        channels = meta.input_shape[0]
        self.register_buffer("mean", torch.tensor(meta.mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(meta.std).view(1, channels, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def build_classifier(meta: ModelMeta) -> Classifier:
    """A freshly initialised classifier for `meta` (architecture looked up in ARCHS)."""
    net = ARCHS.get(meta.arch)(num_classes=meta.num_classes, in_channels=meta.input_shape[0])
    return Classifier(net, meta)
