"""Dataset registry: torchvision sets (with download for users online), Tiny-ImageNet, and `folder:PATH` trees.

Every dataset yields (image in [0, 1] as a C x H x W float tensor, label). Images stay un-normalised:
normalisation lives inside the model wrapper.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset, Subset
from torchvision import datasets, transforms

from .errors import RobgenError
from .registry import Registry
from .utils import IMAGE_SUFFIXES, open_image

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class DatasetSpec:
    """What a model trained on this data needs to know, and how to read a split."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None  # None: taken from the dataset's `classes` once it is read
    flip: bool  # horizontal flips are label-preserving (not for digits)
    read: Callable[[Path, str, bool, Callable], Dataset]  # (root, split, download, transform) -> Dataset


DATASETS: Registry[Callable[[], DatasetSpec]] = Registry("dataset")


def default_root() -> Path:
    return Path(os.environ.get("ROBGEN_DATA", "data")).expanduser()


def _missing(name: str, root: Path) -> RobgenError:
    return RobgenError(
        f"{name} not found under {root}; pass --download (needs internet) or --data-root, "
        "or use folder:PATH for an image folder"
    )


def _torchvision(name: str, make: Callable[..., Dataset]):
    def read(root: Path, split: str, download: bool, transform: Callable) -> Dataset:
        try:
            return make(root, split, download, transform)
        except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
            if "not found" in str(err).lower() or "download" in str(err).lower():
                raise _missing(name, root) from None
            raise
        except OSError as err:  # a failed --download (no network, refused)
            if download:
                raise RobgenError(f"could not download {name} into {root} ({type(err).__name__}); offline, use "
                                  "folder:PATH") from None
            raise

    return read


@DATASETS.register("cifar10")
def cifar10() -> DatasetSpec:
    return DatasetSpec(
        "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616), CIFAR10_CLASSES, True,
        _torchvision("cifar10", lambda r, s, d, t: datasets.CIFAR10(r, train=s == "train", download=d, transform=t)),
    )


@DATASETS.register("cifar100")
def cifar100() -> DatasetSpec:
    return DatasetSpec(
        "cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), None, True,
        _torchvision("cifar100", lambda r, s, d, t: datasets.CIFAR100(r, train=s == "train", download=d, transform=t)),
    )


@DATASETS.register("svhn")
def svhn() -> DatasetSpec:
    return DatasetSpec(
        "svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), [str(k) for k in range(10)],
        False, _torchvision("svhn", lambda r, s, d, t: datasets.SVHN(r, split=s, download=d, transform=t)),
    )


@DATASETS.register("fashion-mnist")
def fashion_mnist() -> DatasetSpec:
    names = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
    return DatasetSpec(
        "fashion-mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), names, False,
        _torchvision(
            "fashion-mnist", lambda r, s, d, t: datasets.FashionMNIST(r, train=s == "train", download=d, transform=t)
        ),
    )


@DATASETS.register("mnist")
def mnist() -> DatasetSpec:
    return DatasetSpec(
        "mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), [str(k) for k in range(10)], False,
        _torchvision("mnist", lambda r, s, d, t: datasets.MNIST(r, train=s == "train", download=d, transform=t)),
    )


class TinyImageNetVal(Dataset):
    """Tiny-ImageNet's validation split: flat images labelled by val_annotations.txt."""

    def __init__(self, root: Path, classes: list[str], transform: Callable):
        index = {wnid: k for k, wnid in enumerate(classes)}
        lines = (root / "val_annotations.txt").read_text().splitlines()
        self.items = [(root / "images" / f, index[w]) for f, w, *_ in (ln.split("\t") for ln in lines if ln)]
        self.classes = classes
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        path, label = self.items[i]
        return self.transform(open_image(path, "RGB")), label


TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _read_tiny_imagenet(root: Path, split: str, download: bool, transform: Callable) -> Dataset:
    base = root / "tiny-imagenet-200"
    if not base.is_dir() and download:
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(TINY_IMAGENET_URL, str(root))
    if not (base / "train").is_dir():
        raise _missing("tiny-imagenet", root)
    train = datasets.ImageFolder(str(base / "train"), transform=transform)
    return train if split == "train" else TinyImageNetVal(base / "val", train.classes, transform)


@DATASETS.register("tiny-imagenet")
def tiny_imagenet() -> DatasetSpec:
    return DatasetSpec(
        "tiny-imagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262),
        None, True, _read_tiny_imagenet,
    )


def portable_name(data: str) -> str:
    """A dataset as files made to be shared record it: a folder keeps only its own name (`folder:c10`), never the
    path on the machine that made the file."""
    kind, _, path = str(data).partition(":")
    return f"folder:{Path(path).name}" if kind == "folder" and path else str(data)


def folder_split(path: Path, split: str) -> Path:
    """`folder:PATH` reads PATH/train or PATH/test (or PATH/val) when present, else PATH itself."""
    for name in (split, "val") if split == "test" else (split,):
        if (path / name).is_dir():
            return path / name
    return path


def _class_folders(path: Path) -> list[str]:
    if not path.is_dir():
        raise RobgenError(f"image folder {path} does not exist")
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise RobgenError(f"image folder {path} has no class subfolders (expected PATH/<class>/<image>)")
    return classes


def _first_image(path: Path) -> Path:
    for cls in _class_folders(path):
        for f in sorted((path / cls).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                return f
    raise RobgenError(f"image folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")


def folder_spec(path: str | Path) -> DatasetSpec:
    """An ImageFolder tree; shape and channels from its first image, the classes from its subfolders."""
    path = Path(path).expanduser()
    train = folder_split(path, "train")
    first = open_image(_first_image(train))
    mode = "L" if first.mode in ("L", "I;16", "1") else "RGB"
    channels, (width, height) = (1 if mode == "L" else 3), first.size

    def read(root: Path, split: str, download: bool, transform: Callable) -> Dataset:
        folder = folder_split(path, split)
        _first_image(folder)
        resize = transforms.Resize((height, width))  # PIL returns same-size images untouched
        return datasets.ImageFolder(
            str(folder), transform=transforms.Compose([resize, transform]),
            loader=lambda p: open_image(p, mode),
        )

    return DatasetSpec(
        f"folder:{path}", len(_class_folders(train)), (channels, height, width), (0.5,) * channels,
        (0.25,) * channels, _class_folders(train), True, read,
    )


def dataset_spec(name: str) -> DatasetSpec:
    if name.startswith("folder:"):
        return folder_spec(name.removeprefix("folder:"))
    return DATASETS.get(name)()


def load_split(
    name: str,
    split: str = "test",
    *,
    root: str | Path | None = None,
    download: bool = False,
    augment: bool = False,
    n: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, DatasetSpec]:
    """A split ("train" or "test") of a dataset, optionally augmented (random crop + flip) and capped to n images.

    The cap takes a seeded random subset, so "the first 1,000 test images" are the same set on every run.
    """
    if split not in ("train", "test"):
        raise RobgenError(f"unknown split {split!r}; use train or test")
    spec = dataset_spec(name)
    steps = []
    if augment:
        steps.append(transforms.RandomCrop(spec.input_shape[1:], padding=4))
        if spec.flip:
            steps.append(transforms.RandomHorizontalFlip())
    steps.append(transforms.ToTensor())
    data = spec.read(Path(root) if root else default_root(), split, download, transforms.Compose(steps))
    if spec.class_names is None:
        spec.class_names = list(data.classes)
    if n is not None:
        if n <= 0:
            raise RobgenError(f"the number of images must be positive, got {n}")
        if n < len(data):
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
            data = Subset(data, order[:n].tolist())
    return data, spec


def train_val_split(
    name: str,
    val_n: int,
    *,
    seed: int = 0,
    max_train: int | None = None,
    root: str | Path | None = None,
    download: bool = False,
) -> tuple[Subset, Subset, DatasetSpec]:
    """(augmented training subset, plain validation subset, spec) carved from the TRAINING split.

    A seeded permutation of the training images: its first `val_n` are the validation images (never trained on, and
    disjoint from the test split by construction), the rest (capped to the first `max_train`) are the training set.
    """
    if val_n < 1:
        raise RobgenError(f"the validation split needs at least 1 image, got {val_n}")
    train, spec = load_split(name, "train", root=root, download=download, augment=True)
    plain, _ = load_split(name, "train", root=root, download=download)
    if val_n >= len(train):
        raise RobgenError(
            f"a validation split of {val_n} images leaves nothing to train on ({len(train)} training images); "
            "lower --val-n"
        )
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
    rest = order[val_n:]
    if max_train is not None:
        if max_train < 1:
            raise RobgenError(f"max-train must be at least 1, got {max_train}")
        rest = rest[:max_train]
    return Subset(train, rest), Subset(plain, order[:val_n]), spec


def labels_of(data: Dataset) -> torch.Tensor:
    """All labels of a dataset without decoding images, where the dataset records them."""
    if isinstance(data, Subset):
        return labels_of(data.dataset)[torch.as_tensor(data.indices)]
    for attr in ("targets", "labels"):
        if hasattr(data, attr):
            return torch.as_tensor(getattr(data, attr))
    if hasattr(data, "items"):
        return torch.tensor([label for _, label in data.items])
    return torch.tensor([data[i][1] for i in range(len(data))])
