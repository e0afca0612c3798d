"""Paper figures of samples: one row per class, class names as row labels."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import checks
from .errors import RobgenError
from .sample_folder import class_names, npz_path
from .utils import IMAGE_SUFFIXES, atomic_path, folder_labels, open_image, read_npz

@dataclass(frozen=True)
class GridConfig:
    """`robgen grid` and grid(): the single source of their defaults."""

    nrow: int = 8  # images per class
    pad: int = 2  # pixels between images
    labels: bool = True  # class names as row labels


GRID = GridConfig()


def mosaic(rows: list[np.ndarray], pad: int = GRID.pad, ncol: int | None = None) -> np.ndarray:
    """Tile rows of uint8 images (m, H, W, C) on a white background, `pad` pixels between and around them."""
    if not rows:
        raise RobgenError("no images to draw")
    _, h, w, c = rows[0].shape
    ncol = ncol or max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row[:ncol]):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            canvas[top: top + h, left: left + w] = img
    return canvas


def render_grid(
    rows: list[np.ndarray],
    names: list[str],
    out: str | Path,
    *,
    labels: bool = GRID.labels,
    pad: int = GRID.pad,
    pdf: bool = False,
) -> dict:
    """Write the grid as PNG (and PDF with the same stem if `pdf`); return its files, pixel shape and row labels."""
    from matplotlib.figure import Figure  # not pyplot: no global backend switch or figure registry (as plots.py)

    image = mosaic(rows, pad)
    height, width = image.shape[:2]
    scale = max(1.0, 256 / rows[0].shape[1] / 4)  # small images are drawn larger so labels stay legible
    dpi = 100
    fig = Figure(figsize=(width * scale / dpi + (1.2 if labels else 0), height * scale / dpi), dpi=dpi)
    ax = fig.add_axes((1.2 / fig.get_figwidth() if labels else 0, 0, width * scale / dpi / fig.get_figwidth(), 1))
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([pad + (i + 0.5) * (rows[0].shape[1] + pad) - pad / 2 for i in range(len(rows))] if labels else [])
    if labels:
        ax.set_yticklabels(names, fontsize=9)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.tick_params(length=0)
    out = Path(out)
    files = {"png": str(out.with_suffix(".png"))}
    targets = [("png", out.with_suffix(".png"))] + ([("pdf", out.with_suffix(".pdf"))] if pdf else [])
    for fmt, path in targets:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
        files[fmt] = str(path)
    return {"files": files, "shape": list(image.shape), "labels": list(names) if labels else [], "rows": len(rows)}


def _read_image(path: Path) -> np.ndarray:
    pixels = np.asarray(open_image(path))
    return pixels.reshape(*pixels.shape[:2], -1)  # grayscale PNGs read as (H, W): add the channel axis


def _checked_arrays(npz: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Images the grid can draw as they are (uint8 N x H x W x C) and one class label in range for each."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise RobgenError(f"{npz}: images are {images.dtype} {images.shape}; the grid draws uint8 N x H x W x C "
                          "(C = 1 or 3) images, as `robgen sample` writes them")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise RobgenError(f"{npz}: labels are {labels.dtype} {labels.shape}; the grid needs one integer class "
                          f"label per image ({len(images)})")
    if len(labels) and labels.min() < 0:
        raise RobgenError(f"{npz}: label {int(labels.min())} is not a class; labels must be 0 or more")


def load_rows(source: str | Path, nrow: int = GRID.nrow, classes: list[int] | None = None
              ) -> tuple[list[np.ndarray], list[str]]:
    """The first `nrow` images of each class, with class names, from a sample folder, its samples.npz, or any
    folder of class subfolders (`<index>_<name>/` from `robgen sample`, or plain `<name>/`)."""
    source = Path(source)
    if nrow <= 0:
        raise RobgenError(f"--nrow must be positive, got {nrow}")
    npz = npz_path(source)
    if npz.is_file():
        arrays = read_npz(npz, ("images", "labels"))
        images, labels = arrays["images"], arrays["labels"]
        _checked_arrays(npz, images, labels)
        names = class_names(npz.parent) or [str(k) for k in range(int(labels.max(initial=-1)) + 1)]
        if len(labels) and labels.max() >= len(names):
            raise RobgenError(f"{npz}: label {int(labels.max())} has no class name ({len(names)} classes in "
                              f"{npz.parent / 'manifest.json'})")
        present = sorted(set(labels.tolist()))
        chosen = present if classes is None else classes
        missing = [c for c in chosen if c not in present]
        if missing:
            raise RobgenError(f"class {missing[0]} is not in {npz}; it holds classes {present}")
        return [images[labels == c][:nrow] for c in chosen], [names[c] for c in chosen]
    is_run = any((source / name).exists() for name in ("images", "chunks", "manifest.json"))
    folders = sorted(d for d in (source / "images" if is_run else source).glob("*") if d.is_dir())
    if not source.exists() or not folders:
        raise RobgenError(f"{source} holds no samples.npz and no class folders; pass a `robgen sample` output folder")
    # --classes names labels, as with samples.npz: a `03_cat` folder is class 3 even when classes 0-2 are absent.
    labels = folder_labels([d.name for d in folders])
    by_label = {labels[d.name]: d for d in folders}
    missing = [c for c in classes or [] if c not in by_label]
    if missing:
        raise RobgenError(f"class {missing[0]} is not in {source}; it holds classes {sorted(by_label)}")
    folders = [by_label[c] for c in (sorted(by_label) if classes is None else classes)]
    rows, names = [], []
    for folder in folders:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:nrow]
        if not files:
            raise RobgenError(f"class folder {folder} holds no images")
        images = [_read_image(p) for p in files]
        shapes = {i.shape for i in images} | ({rows[0].shape[1:]} if rows else set())
        if len(shapes) > 1:
            raise RobgenError(f"{source}: images differ in size or channels ({', '.join(map(str, sorted(shapes)))} "
                              "as H, W, C); a grid needs images of one shape")
        rows.append(np.stack(images))
        name = folder.name
        names.append(name.split("_", 1)[1] if name[:2].isdigit() and "_" in name else name)
    return rows, names


def grid(source: str | Path, out: str | Path, *, nrow: int = GRID.nrow, classes: list[int] | None = None,
         labels: bool = GRID.labels, pad: int = GRID.pad, overwrite: bool = False) -> dict:
    """A paper figure from samples: PNG and PDF (same stem), one row per class. Existing files are replaced only
    with overwrite=True, and never a file of a run or sample folder."""
    from .outputs import claim

    checks.integer("--pad", pad, 0)
    claim([Path(out).with_suffix(".png"), Path(out).with_suffix(".pdf")], overwrite)
    rows, names = load_rows(source, nrow, classes)
    return render_grid(rows, names, out, labels=labels, pad=pad, pdf=True)
