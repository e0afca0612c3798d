import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets

from robgen import RobgenError
from robgen.data import CIFAR10_CLASSES, dataset_spec, labels_of, load_split


def write_cifar10(root, per_batch=4, seed=0):
    """Tiny CIFAR-10 in torchvision's on-disk format (python pickles); returns {file: md5}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES}, f)
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_torchvision_cifar10_path_reads_the_real_format(tmp_path, monkeypatch):
    md5 = write_cifar10(tmp_path)
    # The real checksums belong to the 170 MB originals; point torchvision's integrity check at ours.
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5[f"data_batch_{i}"]] for i in range(1, 6)])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names",
                                                   "md5": md5["batches.meta"]})
    train, spec = load_split("cifar10", "train", root=tmp_path)
    test, _ = load_split("cifar10", "test", root=tmp_path)
    assert (len(train), len(test)) == (20, 4)
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert spec.class_names == CIFAR10_CLASSES and spec.num_classes == 10
    assert labels_of(test).shape == (4,)


def test_missing_torchvision_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(RobgenError, match="cifar10 not found under .*--download"):
        load_split("cifar10", "test", root=tmp_path)


def test_folder_dataset_picks_split_and_reads_shape(folder):
    train, spec = load_split(f"folder:{folder}", "train")
    test, _ = load_split(f"folder:{folder}", "test", n=5, seed=1)
    assert spec.num_classes == 3 and spec.input_shape == (3, 32, 32) and spec.class_names[0] == "class0"
    assert len(train) == 24 and len(test) == 5
    assert labels_of(test).tolist() == [test[i][1] for i in range(5)]


def test_subset_is_the_same_for_the_same_seed(folder):
    a, _ = load_split(f"folder:{folder}", "test", n=5, seed=3)
    b, _ = load_split(f"folder:{folder}", "test", n=5, seed=3)
    assert a.indices == b.indices


def test_augmentation_keeps_shape(folder):
    data, _ = load_split(f"folder:{folder}", "train", augment=True)
    assert data[0][0].shape == (3, 32, 32)


def test_grayscale_folder(tmp_path):
    for k in range(2):
        (tmp_path / f"c{k}").mkdir()
        Image.fromarray(np.full((28, 28), 100 * k, np.uint8)).save(tmp_path / f"c{k}" / "0.png")
    data, spec = load_split(f"folder:{tmp_path}", "train")
    assert spec.input_shape == (1, 28, 28) and data[1][0].shape == (1, 28, 28)


def test_empty_and_classless_folders(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "0.png")
    with pytest.raises(RobgenError, match="no class subfolders"):
        dataset_spec(f"folder:{tmp_path / 'flat'}")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(RobgenError, match="holds no images"):
        dataset_spec(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(RobgenError, match="does not exist"):
        dataset_spec(f"folder:{tmp_path / 'nowhere'}")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(RobgenError, match="unknown dataset 'imagenet'; known: cifar10, cifar100, fashion-mnist"):
        dataset_spec("imagenet")
