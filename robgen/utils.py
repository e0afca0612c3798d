"""Small shared helpers: devices, image folders, atomic writes, hashing, the cache folder."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image

from .errors import RobgenError


def resolve_device(device: str | None = None) -> torch.device:
    """'auto' (or None) picks CUDA when present, else CPU; a device this machine lacks is a one-line error here
    rather than a traceback at the first tensor moved onto it."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise RobgenError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise RobgenError(f"--device {device}: no CUDA GPU is visible on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise RobgenError(f"--device {device}: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise RobgenError(f"--device {device}: MPS is not available on this machine; use --device cpu or auto")
    elif dev.type not in ("cpu", "mps"):
        raise RobgenError(f"--device {device}: robgen runs on cpu, cuda or mps")
    return dev


# The image files every folder reader takes: --data folder:PATH, --ref folder:PATH, score's samples, grids.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def folder_labels(folders: list[str]) -> dict[str, int]:
    """The label of each class folder: `03_cat` folders (robgen sample's images/) keep their number, so a subset of
    classes keeps its labels; otherwise sorted order, as torchvision's ImageFolder labels them."""
    numbered = [re.match(r"^(\d+)_", f) for f in folders]
    if all(numbered):
        return {f: int(m.group(1)) for f, m in zip(folders, numbered)}
    return {f: i for i, f in enumerate(sorted(folders))}


def read_safetensors(path: str | os.PathLike, what: str, hint: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """(every tensor, the metadata) of a safetensors file (checkpoints, start fits); a damaged or foreign file is
    the one-line error "{path} is not a readable {what} (why){hint}"."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise RobgenError(f"{path} is not a readable {what} ({err}){hint}") from None


def read_npz(path: str | os.PathLike, needed: tuple[str, ...]) -> dict:
    """All arrays of an .npz (never unpickling), or a one-line error for a corrupt file or a missing array."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RobgenError(f"{path}: not a readable .npz ({err})") from None
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise RobgenError(f"{path}: no {', '.join(map(repr, missing))} array (has {', '.join(arrays) or 'nothing'})")
    return arrays


def open_image(path: str | os.PathLike, mode: str | None = None) -> Image.Image:
    """Decode an image (converted to `mode`, or as stored) and close its file (datasets read thousands). A damaged or
    truncated file is a one-line error naming it: the command stops, since a silently skipped image would change
    which images a seeded subset or a score holds."""
    try:
        with Image.open(path) as img:
            return img.convert(mode) if mode else img.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise RobgenError(f"{path} is not a readable image ({err}); the command stops: replace or remove the file"
                          ) from None


def precision(device: torch.device, autocast: str = "off") -> dict:
    """How a run computes on `device`, saved beside its results: the model's autocast dtype (bf16 | fp16 | off) and,
    on CUDA, whether fp32 matmuls and convolutions may use TF32 (torch's defaults: matmul no, cuDNN yes)."""
    record = {"device": device.type, "autocast": autocast, "torch": torch.__version__}
    if device.type == "cuda":
        record.update(tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    return record


def cache_dir(*parts: str) -> Path:
    """ROBGEN_CACHE (default ~/.cache/robgen), created on demand; never inside the installed package."""
    root = Path(os.environ.get("ROBGEN_CACHE", Path.home() / ".cache" / "robgen")).expanduser()
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private (0600); give them the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def to_json(result: dict) -> str:
    """A result as robgen prints and writes it: indented, keys sorted, anything else as its str()."""
    return json.dumps(result, indent=2, sort_keys=True, default=str)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def read_json(path: str | os.PathLike):
    """A JSON file robgen wrote; a damaged one is a one-line error, not a traceback."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RobgenError(f"{path} is damaged ({err}); remove it or choose another output folder") from None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
