"""Shared fixtures: tiny image folders and tiny checkpoints, made in temporary directories."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

COLOURS = [(220, 40, 40), (40, 200, 60), (50, 60, 220)]


def write_image_folder(root: Path, per_class: int = 8, size: int = 32, seed: int = 0) -> Path:
    """train/ and test/ ImageFolder trees of 3 learnable classes (noisy red, green, blue squares)."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for k, colour in enumerate(COLOURS):
            folder = root / split / f"class{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Caches go to a temporary folder; the tests run on one thread for repeatable timing and results."""
    monkeypatch.setenv("ROBGEN_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tinydata"))


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_folder) -> Path:
    """A random cnn-tiny classifier for the tiny folder's 3 classes, saved as a robgen checkpoint."""
    from robgen.models import ModelMeta, build_classifier
    from robgen.models.checkpoint import save_classifier

    torch.manual_seed(0)
    meta = ModelMeta(
        "cnn-tiny", 3, (3, 32, 32), (0.5,) * 3, (0.25,) * 3, ["class0", "class1", "class2"],
        dataset=f"folder:{tiny_folder}",
    )
    return save_classifier(build_classifier(meta), tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")
