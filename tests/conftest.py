"""Shared fixtures: tiny image folders and tiny checkpoints, made in temporary directories."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = {"class0": (220, 40, 40), "class1": (40, 200, 60), "class2": (50, 60, 220)}


def write_image_folder(
    root: Path,
    colours: dict[str, tuple[int, int, int]] = COLOURS,
    per_class: int = 8,
    test_per_class: int | None = None,
    size: int = 32,
    gray: bool = False,
    noise: float = 30,
) -> Path:
    """train/ and test/ ImageFolder trees, one class per colour (noisy flat images): learnable in a few steps."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class or per_class)):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array(colour[:1] if gray else colour)
            for i in range(n):
                pixels = np.clip(base + rng.normal(0, noise, (size, size, len(base))), 0, 255).astype(np.uint8)
                Image.fromarray(pixels[..., 0] if gray else pixels).save(folder / f"{i:04d}.png")
    return root


def make_ckpt(
    path: Path, dataset: str, num_classes: int = 3, shape=(3, 32, 32), nan: bool = False
) -> Path:
    """A random cnn-tiny classifier saved as a robgen checkpoint (nan=True poisons its head)."""
    from robgen.models import ModelMeta, build_classifier
    from robgen.models.checkpoint import save_classifier

    torch.manual_seed(0)
    c = shape[0]
    names = list(COLOURS) if num_classes == len(COLOURS) else []
    model = build_classifier(ModelMeta("cnn-tiny", num_classes, shape, (0.5,) * c, (0.25,) * c, names, dataset))
    if nan:
        with torch.no_grad():
            model.net.linear.weight.fill_(float("nan"))
    return save_classifier(model.eval(), path)


class Recorder:
    """Wraps a function, recording the arguments of every call (to check what an entry point hands on)."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Caches go to a temporary folder; one thread, since threads only add overhead for tiny models."""
    monkeypatch.setenv("ROBGEN_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tinydata"))


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory, folder) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", f"folder:{folder}")
