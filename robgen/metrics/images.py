"""The image sets robgen scores: a sample run, an .npz or an image tree, and the reference images (a dataset or a
folder read as --data reads it), as uint8 NCHW RGB with labels and a content fingerprint for the reference cache."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import checks
from ..errors import RobgenError
from ..sample_folder import npz_path
from ..utils import IMAGE_SUFFIXES, folder_labels, open_image, read_npz


@dataclass
class ImageSet:
    """uint8 NCHW RGB images, int64 labels (-1 = unknown) and where they came from."""

    images: torch.Tensor
    labels: np.ndarray
    name: str
    fingerprint: str  # what the reference cache key hashes: content identity, not the folder's location

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_labels(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


def _as_rgb_nchw(arr: np.ndarray, where: str) -> torch.Tensor:
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise RobgenError(f"{where}: images must be uint8 N x H x W x C (or N x C x H x W), got {arr.dtype} {arr.shape}")
    if arr.shape[-1] in (1, 3):
        arr = arr.transpose(0, 3, 1, 2)
    elif arr.shape[1] not in (1, 3):
        raise RobgenError(f"{where}: images have {arr.shape} - no 1- or 3-channel axis (NHWC or NCHW expected)")
    images = torch.from_numpy(np.ascontiguousarray(arr))
    return images.expand(-1, 3, -1, -1).contiguous() if images.shape[1] == 1 else images  # grayscale -> RGB


def _check_count(images: torch.Tensor, where: str) -> None:
    if len(images) < 2:
        raise RobgenError(f"{where}: {len(images)} image(s); scoring needs at least 2")


def _load_npz(path: Path) -> ImageSet:
    data = read_npz(path, ("images",))
    images = _as_rgb_nchw(data["images"], str(path))
    labels = data["labels"].astype(np.int64) if "labels" in data else np.full(len(images), -1, np.int64)
    if len(labels) != len(images):
        raise RobgenError(f"{path}: {len(labels)} labels for {len(images)} images")
    _check_count(images, str(path))
    return ImageSet(images, labels, str(path), hashlib.sha256(images.numpy().tobytes()).hexdigest())


def _load_folder(root: Path) -> ImageSet:
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise RobgenError(f"{root}: no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    folders = sorted({p.parent.name for p in files})
    by_class = all(p.parent.parent == root for p in files)
    index = folder_labels(folders) if by_class else {}
    arrays, first = [], None
    for path in tqdm(files, desc=f"reading {root.name}", unit="img", leave=False, disable=len(files) < 1000):
        img = open_image(path)
        arr = np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB"))
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        if first is None:
            first = (path, arr.shape)
        elif arr.shape != first[1]:
            raise RobgenError(f"{root}: images differ in size or channels: {first[0].name} is {first[1]}, "
                              f"{path.relative_to(root)} is {arr.shape} (H, W, C); score one kind at a time")
        arrays.append(arr)
    images = _as_rgb_nchw(np.stack(arrays), str(root))
    _check_count(images, str(root))
    labels = np.array([index.get(p.parent.name, -1) for p in files], np.int64)
    listing = "\n".join(f"{p.relative_to(root)}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    return ImageSet(images, labels, str(root), hashlib.sha256(listing.encode()).hexdigest())


def load_samples(spec: str | os.PathLike) -> ImageSet:
    """A `robgen sample` run folder (its samples.npz), an .npz with `images` [+ `labels`], or a tree of images."""
    path = Path(spec).expanduser()
    if path.is_dir() and npz_path(path).is_file():
        return _load_npz(npz_path(path))
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path)
    if path.is_dir():
        return _load_folder(path)
    raise RobgenError(f"samples {spec}: not a folder or an .npz file")


def load_reference_images(ref: str, data_root: str | None = None, download: bool = False) -> ImageSet:
    """cifar10-train / cifar10-test (robgen.data's torchvision path) or folder:PATH, read as --data reads it:
    PATH/train when PATH has one (a tree with train/ and test/ is not mixed), else every image under PATH."""
    from ..data import folder_split, load_split

    if ref.startswith("folder:"):
        path = Path(ref[len("folder:"):]).expanduser()
        if not path.is_dir():
            raise RobgenError(f"reference folder {path} does not exist")
        found = _load_folder(folder_split(path, "train"))
        found.name = ref
        return found
    if ref in ("cifar10-train", "cifar10-test"):
        data, _ = load_split("cifar10", ref.removeprefix("cifar10-"), root=data_root, download=download)
        images = _as_rgb_nchw(data.data, ref)
        return ImageSet(images, np.asarray(data.targets, np.int64), ref, ref)
    raise RobgenError(f"unknown reference {ref!r}; use cifar10-train, cifar10-test, folder:PATH or STATS.npz")


def subsample(images: ImageSet, n: int | None, seed: int, option: str = "--n") -> ImageSet:
    """A seeded random subset: samples are often stored class by class, so the first N would be a few classes."""
    checks.integer(option, n, 2, none_ok=True)  # scoring needs two images
    if n is None or n == len(images):
        return images
    if n > len(images):
        raise RobgenError(f"{option} {n} asks for more images than {images.name} holds ({len(images)})")
    keep = seeded_subset(len(images), n, seed)
    return ImageSet(images.images[keep], images.labels[keep], images.name, f"{images.fingerprint}:n{n}:s{seed}")


def seeded_subset(total: int, n: int, seed: int) -> np.ndarray:
    """The sorted indices of a seeded random N of TOTAL: the one rule for images and for a stats file's features, so
    `--ref-n N` on the 50,000-image statistics picks the same images as `--ref-n N` on the folder."""
    return np.sort(np.random.default_rng(seed).permutation(total)[:n])
