"""Classifiers as robgen sees them: a registered architecture wrapped with its normalisation and metadata."""
from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

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
    # Sample options this model samples best with (SampleConfig field names), found by a sweep on training data;
    # `sample` uses them where the caller sets nothing.
    sampling: dict[str, Any] = field(default_factory=dict)

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
        data = dataclasses.asdict(self)
        if not data["sampling"]:  # absent when empty: checkpoints made before the field keep their bytes
            del data["sampling"]
        return json.dumps(data, sort_keys=True)

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

    def dataset_or(self, data: str | None) -> str:
        """`data` when given, else the dataset the model was trained on."""
        if not (data or self.dataset):
            raise RobgenError("the checkpoint does not name its dataset; pass --data")
        return data or self.dataset

    def check_fits(self, spec) -> None:
        """A model runs only on data (a robgen.data.DatasetSpec) with its number of classes and input shape."""
        if self.num_classes != spec.num_classes or tuple(self.input_shape) != tuple(spec.input_shape):
            raise RobgenError(
                f"checkpoint expects {self.num_classes} classes of shape {tuple(self.input_shape)}, but dataset "
                f"{spec.name} has {spec.num_classes} classes of shape {tuple(spec.input_shape)}; pass a matching --data"
            )

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

    @classmethod
    def wrap(
        cls,
        module: nn.Module,
        *,
        classes: int | Sequence[str],
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        dataset: str = "",
        arch: str | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> "Classifier":
        """Any nn.Module that maps (normalised) images to logits, as a robgen classifier taking images in [0, 1].

        `classes` is the number of classes or their names; `mean`/`std` the normalisation the module expects
        (default: none). `arch` (default: the module's own class as "package.module:Class") is how a saved
        checkpoint rebuilds the network: a registered name, or an importable nn.Module class built with no
        arguments. The module goes to eval mode and one forward pass checks that it returns one logit per class.
        """
        names = [] if isinstance(classes, int) else [str(c) for c in classes]
        channels = int(input_shape[0])
        meta = ModelMeta(
            arch=arch or f"{type(module).__module__}:{type(module).__qualname__}",
            num_classes=classes if isinstance(classes, int) else len(names), input_shape=tuple(input_shape),
            mean=tuple(mean) if mean is not None else (0.0,) * channels,
            std=tuple(std) if std is not None else (1.0,) * channels,
            class_names=names, dataset=dataset, recipe=dict(recipe or {}),
        )
        model = cls(module, meta).eval()
        param = next(module.parameters(), None)
        model.to(param.device if param is not None else "cpu")
        with torch.no_grad():
            out = model(torch.zeros(1, *meta.input_shape, device=model.mean.device))
        if not isinstance(out, Tensor) or tuple(out.shape) != (1, meta.num_classes):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise RobgenError(f"the module returns {got} for one {meta.input_shape} image, not {meta.num_classes} "
                              "logits; pass the right classes= and input_shape=")
        return model


def python_arch(arch: str) -> nn.Module:
    """The network of an "importable.module:Class" architecture. Only nn.Module classes outside the standard library
    are built (with no arguments): a checkpoint's metadata can pick installed model code, never call arbitrary
    functions or import a standard module for its side effects."""
    module_name, _, attr = arch.partition(":")
    if module_name.partition(".")[0] in sys.stdlib_module_names:
        raise RobgenError(f"architecture {arch!r} names a standard-library module, not model code")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError) as err:
        raise RobgenError(f"architecture {arch!r} cannot be imported ({err}); install or put on PYTHONPATH the code "
                          "that defines it") from None
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise RobgenError(f"architecture {arch!r} is not an nn.Module class")
    try:
        return obj()
    except TypeError as err:
        raise RobgenError(f"architecture {arch!r} must build with no arguments ({err}); define a subclass whose "
                          "__init__ fixes them") from None


def build_classifier(meta: ModelMeta) -> Classifier:
    """A freshly initialised classifier for `meta`: an architecture from ARCHS, a RobustBench zoo architecture
    (robustbench:MODEL:DATASET:THREAT) or an importable nn.Module class (package.module:Class)."""
    from .. import zoo

    if zoo.is_zoo(meta.arch):
        net = zoo.build_net(meta.arch)
    elif ":" in meta.arch and meta.arch not in ARCHS:
        net = python_arch(meta.arch)
    else:
        net = ARCHS.get(meta.arch)(num_classes=meta.num_classes, in_channels=meta.input_shape[0])
    return Classifier(net, meta)
