"""The sample folder (`robgen sample --out S`, the contract with `robgen score` and `robgen grid`), written and read
only through here (robgen.sample.generate makes its contents):

    S/samples.npz      images uint8 (N, H, W, C), labels int64 (N,)
    S/images/<class index, 2 digits>_<class name>/<index within class, 6 digits>.png
    S/grid.png         first images of every class, one row per class
    S/manifest.json    checkpoint path + sha256, settings, timing, final mean E(x, y) per class
    S/chunks/          the finished chunks and the run's settings.json, for resuming
"""
from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path

import numpy as np

from .utils import atomic_path, atomic_write_text, read_json

FORMAT = "robgen-samples/1"
FILES = ("chunks", "images", "samples.npz", "grid.png", "manifest.json", "energy_track.png")
NPZ, MANIFEST = "samples.npz", "manifest.json"


def is_sample_run(folder: Path) -> bool:
    """Whether `folder` holds a sample run (its marker files), finished or not."""
    return (folder / "chunks" / "settings.json").is_file() or (
        (folder / MANIFEST).is_file() and ((folder / NPZ).is_file() or (folder / "images").is_dir()))


def class_folder(index: int, name: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]+', '-', name)}"


def npz_path(source: Path) -> Path:
    """The samples file of a sample folder, or `source` itself when it is a file."""
    return source if source.is_file() else source / NPZ


def class_names(folder: Path) -> list[str] | None:
    """The class names a sample folder's manifest records (None without a manifest)."""
    manifest = folder / MANIFEST
    return read_json(manifest)["class_names"] if manifest.is_file() else None


def write_manifest(out: Path, manifest: dict) -> Path:
    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))
    return out / MANIFEST


def _member(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed timestamp, so the same images give the same file bytes."""
    return zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))


def write_npz(path: Path, chunk_files: list[Path], total: int, image_shape: tuple) -> None:
    """samples.npz streamed chunk by chunk: memory stays one chunk whatever the number of images."""
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        labels = []
        with zf.open(_member("images.npy"), "w", force_zip64=True) as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (total, *image_shape)}
            np.lib.format.write_array_header_1_0(f, header)
            for file in chunk_files:
                with np.load(file) as chunk:
                    f.write(np.ascontiguousarray(chunk["images"]).tobytes())
                    labels.append(chunk["labels"])
        with zf.open(_member("labels.npy"), "w", force_zip64=True) as f:
            np.lib.format.write_array(f, np.concatenate(labels).astype(np.int64))
