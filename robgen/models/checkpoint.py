"""Checkpoints: safetensors weights + JSON metadata; an explicit import step for foreign PyTorch files.

Loading never unpickles arbitrary objects: robgen files are safetensors, foreign files go through
torch.load(weights_only=True) in `import_checkpoint`.
"""
from __future__ import annotations

import json
import pickle
import re
import tarfile
import zipfile
from importlib import resources
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save

from .. import zoo
from ..errors import RobgenError
from ..utils import atomic_path, read_safetensors, sha256_file
from . import Classifier, ModelMeta, build_classifier

FORMAT = "robgen-classifier/1"
SUFFIX = ".safetensors"
DEFAULT_CHECKPOINT = "weat_c10"


def shipped_dir() -> Path:
    return Path(str(resources.files("robgen.checkpoints")))


def shipped_checkpoints() -> list[str]:
    return sorted(p.stem for p in shipped_dir().glob(f"*{SUFFIX}"))


def resolve_checkpoint(spec: str | Path | None) -> Path:
    """A path to an existing file, the name of a shipped checkpoint (None: the default one), or a RobustBench model
    as robustbench:MODEL[:DATASET[:THREAT]] (downloaded and converted into the cache on first use)."""
    spec = DEFAULT_CHECKPOINT if spec is None else spec
    if zoo.is_zoo(spec):
        return zoo.zoo_checkpoint(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    stem = path.name.removesuffix(path.suffix) if path.suffix in (SUFFIX, ".pt", ".pth") else path.name
    shipped = shipped_dir() / f"{stem}{SUFFIX}"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    known = ", ".join(shipped_checkpoints()) or "none"
    raise RobgenError(f"no checkpoint {str(spec)!r}: not a file, nor a shipped checkpoint (shipped: {known})")


def save_classifier(model: Classifier, path: str | Path, dtype: torch.dtype | None = None) -> Path:
    """Write weights (optionally cast to `dtype`, e.g. float16) and metadata atomically."""
    tensors = {}
    for key, value in model.net.state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        tensors[key] = value.contiguous()
    path = Path(path)
    data = save(tensors, metadata={"format": FORMAT, "robgen": model.meta.to_json()})
    # safetensors writes its metadata map in a per-process random order: sorting the JSON header's keys makes the
    # same weights give the same bytes. Offsets are relative to the data, which is written as it is; the header is
    # padded with spaces to a multiple of 8 bytes, as safetensors pads it.
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8: 8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        f.write(memoryview(data)[8 + n:])
    return path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return read_safetensors(path, "robgen checkpoint", "; if it is a PyTorch .pt/.pth file, convert it with "
                            f"`robgen import {path} --arch ARCH --out NAME{SUFFIX}`")


def _meta_of(path: Path, header: dict[str, str]) -> ModelMeta:
    if "robgen" not in header:
        raise RobgenError(f"{path} is a safetensors file without robgen metadata; convert it with `robgen import`")
    try:
        return ModelMeta.from_json(header["robgen"])
    except RobgenError as err:
        raise RobgenError(f"{path}: {err}; re-export the checkpoint with robgen") from None


def read_meta(path: str | Path) -> ModelMeta:
    _, header = _read_safetensors(Path(path))
    return _meta_of(Path(path), header)


def load_state_checked(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict, but a mismatch is one line naming the first differing key."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"first missing key {missing[0]!r} ({len(missing)} missing)")
        if unexpected:
            parts.append(f"first unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)")
        raise RobgenError(f"{source} does not fit architecture {type(net).__name__}: " + "; ".join(parts))
    for key, value in expected.items():
        if value.shape != state[key].shape:
            raise RobgenError(
                f"{source} does not fit the architecture: {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(value.shape)}"
            )
    net.load_state_dict(state)


def load_classifier(spec: str | Path | None = None, device: str | torch.device = "cpu") -> Classifier:
    """Load a robgen checkpoint (a path or a shipped name; None: the default) in eval mode."""
    path = resolve_checkpoint(spec)
    tensors, header = _read_safetensors(path)
    model = build_classifier(_meta_of(path, header))
    load_state_checked(model.net, tensors, str(path))
    return model.to(device).eval()


def checkpoint_id(spec: str | Path | None) -> dict[str, str]:
    """Where a checkpoint came from, for manifests: its path and sha256."""
    path = resolve_checkpoint(spec)
    return {"path": str(path), "sha256": sha256_file(path)}


_STATE_KEYS = ("model_state_dict", "state_dict", "model", "net")


def safe_torch_load(path: Path):
    """torch.load(weights_only=True): a file that needs arbitrary code to unpickle, or is no PyTorch file, is a
    one-line error."""
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (PK..) or, in the legacy format, a pickle (protocol byte 0x80).
    if not (magic.startswith(b"PK") or magic.startswith(b"\x80")):
        if tarfile.is_tarfile(path):  # torch's legacy format can only be read by unpickling arbitrary objects
            raise RobgenError(f"{path} is in torch's legacy .tar format, which weights_only loading refuses; load it "
                              "where you trust it and re-save its state_dict with torch.save")
        hint = " (it looks like an HTML page: a failed download?)" if magic.lstrip()[:1] == b"<" else ""
        raise RobgenError(f"{path} is not a PyTorch checkpoint{hint}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = found.group(1) if found else "an object that is not a tensor"
        raise RobgenError(
            f"{path} needs arbitrary code to unpickle ({what}) and robgen will not run it; "
            "re-save it as a plain state_dict of tensors"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, SafetensorError) as err:
        # SafetensorError: torch.load reads a file named .safetensors as one, e.g. a pickle given that name
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise RobgenError(f"{path} is not a readable PyTorch checkpoint (truncated? {first})") from None
    return obj


def _foreign_state_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = safe_torch_load(path)
    # RobustBench files wrap weights in "state_dict"; JEM-style files in "model_state_dict" beside a replay buffer.
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise RobgenError(f"{path} holds no state_dict (top-level keys: {', '.join(map(str, obj))[:200]})")
        obj = inner
    if not isinstance(obj, dict):
        raise RobgenError(f"{path} holds a {type(obj).__name__}, not a state_dict")
    if "model_state_dict" in obj and isinstance(obj["model_state_dict"], dict):
        obj = obj["model_state_dict"]
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def import_checkpoint(src: str | Path, meta: ModelMeta) -> Classifier:
    """Read a foreign state_dict (plain, `module.`-prefixed, RobustBench- or JEM-style) into a robgen Classifier."""
    src = Path(src)
    if not src.is_file():
        raise RobgenError(f"no file {str(src)!r}")
    if zoo.is_zoo(meta.arch):  # the zoo's loader knows each model's key layout; its spec names dataset and classes
        return zoo.convert(meta.arch, src)
    model = build_classifier(meta)
    load_state_checked(model.net, _foreign_state_dict(src), str(src))
    return model.eval()


def import_file(src: str | Path, out: str | Path, *, arch: str, data: str = "cifar10",
                mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, fp16: bool = False,
                overwrite: bool = False) -> Classifier:
    """`robgen import`: a foreign PyTorch file as a robgen checkpoint at `out`, for a model trained on `data`.
    RobustBench models take raw [0, 1] inputs, hence no normalisation unless mean/std say otherwise."""
    from ..data import dataset_spec
    from ..outputs import claim

    claim([out], overwrite)
    spec = dataset_spec(data)
    channels = spec.input_shape[0]
    meta = ModelMeta(
        arch=arch, num_classes=spec.num_classes, input_shape=spec.input_shape, mean=mean or (0.0,) * channels,
        std=std or (1.0,) * channels, class_names=spec.class_names or [], dataset=spec.name,
        recipe={"imported_from": Path(src).name},
    )
    model = import_checkpoint(src, meta)
    save_classifier(model, out, dtype=torch.float16 if fp16 else None)
    return model


def checkpoint_info(spec: str | Path | None) -> dict:
    """`robgen info`: where the checkpoint is, its metadata and parameter count; loading it checks that the weights
    fit the architecture (a mismatch raises)."""
    model = load_classifier(spec)
    return {**checkpoint_id(spec), **vars(model.meta), "parameters": sum(p.numel() for p in model.net.parameters()),
            "weights_match_architecture": True}
