"""Fixtures for the sampling and grid tests: a tiny image folder and random cnn-tiny checkpoints."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]


def write_folder(root: Path, per_class: int = 8, size: int = 32, gray: bool = False) -> Path:
    """train/ and test/ trees of 3 classes of noisy coloured (or grey-level) squares."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, colour in enumerate(COLOURS):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                base = np.array(colour[:1] if gray else colour)
                pixels = np.clip(base + rng.normal(0, 30, (size, size, len(base))), 0, 255).astype(np.uint8)
                Image.fromarray(pixels[..., 0] if gray else pixels).save(folder / f"{i:04d}.png")
    return root


def make_ckpt(path: Path, dataset: str, shape=(3, 32, 32), nan: bool = False) -> Path:
    from robgen.models import ModelMeta, build_classifier
    from robgen.models.checkpoint import save_classifier

    torch.manual_seed(0)
    c = shape[0]
    meta = ModelMeta("cnn-tiny", 3, shape, (0.5,) * c, (0.25,) * c, ["class0", "class1", "class2"], dataset=dataset)
    model = build_classifier(meta)
    if nan:
        with torch.no_grad():
            model.net.linear.weight.fill_(float("nan"))
    return save_classifier(model, path)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBGEN_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("tinydata"))


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory, folder) -> Path:
    return make_ckpt(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", f"folder:{folder}")
