"""Scoring engines (torch-fidelity, clean-fid): the feature extractor, feature extraction, and every metric
formula (FID, KID, precision/recall, Inception Score) come from the engine; robgen adds none of its own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import RobgenError
from ..registry import Registry
from ..utils import resolve_device
from .config import ScoreConfig


@dataclass
class Extractor:
    """A torch-fidelity feature extractor plus what identifies its features."""

    module: torch.nn.Module
    name: str
    weights_sha256: str | None
    weights_source: str
    has_logits: bool
    device: torch.device
    channels_last: bool


def build_extractor(opts: ScoreConfig, logits: bool) -> Extractor:
    """Inception-v3 from the resolved weights, or any registered torch-fidelity extractor (tests use a tiny one)."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
    from torch_fidelity.utils import create_feature_extractor

    from ..inception import full_weights_hint, resolve_weights

    device = resolve_device(opts.device)
    kwargs: dict[str, Any] = {"verbose": False}
    if opts.feature_extractor is None:
        weights = resolve_weights(opts.inception_weights)
        if logits and not weights.has_head:
            raise RobgenError(f"--is needs Inception's 1008-way head, which {weights.source} lacks; pass "
                              f"--inception-weights with {full_weights_hint()}")
        name, sha, source = weights.extractor, weights.sha256, weights.source
        kwargs["feature_extractor_weights_path"] = str(weights.path)
    else:
        name, sha, source = opts.feature_extractor, None, opts.feature_extractor
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            raise RobgenError(f"unknown torch-fidelity feature extractor {name!r}")
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    layers = [cls.get_default_feature_layer_for_metric("fid")]
    if logits:
        layers.append(cls.get_default_feature_layer_for_metric("isc"))
    # Moved to the device here: torch-fidelity's cuda=True means cuda:0, whatever --device says.
    module = create_feature_extractor(name, layers, cuda=False, **kwargs).to(device)
    if opts.channels_last:
        module = module.to(memory_format=torch.channels_last)
    return Extractor(module, name, sha, source, logits, device, opts.channels_last)


class Backend:
    """Feature extraction and metric formulas of one scoring library; robgen adds caching and the protocol."""

    name: str
    resize: str
    metrics: tuple[str, ...]

    def version(self) -> str:
        raise NotImplementedError

    def batch(self, images: torch.Tensor, extractor: Extractor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def fid(self, stats_a: dict, stats_b: dict) -> float:
        raise NotImplementedError

    def kid(self, feats_a: np.ndarray, feats_b: np.ndarray, subsets: int, subset_size: int, seed: int) -> dict:
        raise NotImplementedError

    def prc(self, feats_a: np.ndarray, feats_b: np.ndarray, neighborhood: int) -> dict:
        raise NotImplementedError

    def isc(self, logits: np.ndarray, splits: int, seed: int) -> dict:
        raise NotImplementedError

    def statistics(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """torch-fidelity's mean and covariance (float32 mean, float64 covariance), the FID statistics of both
        engines."""
        from torch_fidelity.metric_fid import fid_features_to_statistics

        return fid_features_to_statistics(torch.from_numpy(features))


BACKENDS: Registry[type[Backend]] = Registry("scoring backend")


@BACKENDS.register("torch-fidelity")
class TorchFidelity(Backend):
    name = "torch-fidelity"
    resize = "tf1-bilinear to the extractor input (299)"
    metrics = ("fid", "kid", "prc", "isc")

    def version(self) -> str:
        import torch_fidelity

        return torch_fidelity.__version__

    def batch(self, images, extractor):
        images = images.to(extractor.device)
        if extractor.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return extractor.module(images)

    def fid(self, stats_a, stats_b):
        from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

        # torch-fidelity insists on equal dtypes; foreign stats files may store float64 means or float32 covariances
        common = {k: np.result_type(stats_a[k], stats_b[k]) for k in ("mu", "sigma")}
        a, b = ({k: s[k].astype(common[k], copy=False) for k in common} for s in (stats_a, stats_b))
        return fid_statistics_to_metric(a, b, False)[KEY_METRIC_FID]

    def kid(self, feats_a, feats_b, subsets, subset_size, seed):
        from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

        out = kid_features_to_metric(torch.from_numpy(feats_a), torch.from_numpy(feats_b), kid_subsets=subsets,
                                     kid_subset_size=subset_size, rng_seed=seed, verbose=False)
        return {"kid": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD]}

    def prc(self, feats_a, feats_b, neighborhood):
        from torch_fidelity.metric_prc import prc_features_to_metric

        # save_cpu_ram: the same distances in blocks of 10,000 rows; the whole matrix against all 50,000 CIFAR-10
        # training images (10 GB, more with cdist's buffers) ran a 24 GiB machine out of memory.
        out = prc_features_to_metric(torch.from_numpy(feats_a), torch.from_numpy(feats_b),
                                     prc_neighborhood=neighborhood, save_cpu_ram=True, verbose=False)
        return {"precision": out["precision"], "recall": out["recall"], "f_score": out["f_score"]}

    def isc(self, logits, splits, seed):
        from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

        out = isc_features_to_metric(torch.from_numpy(logits), splits=splits, rng_seed=seed)
        return {"inception_score": out[KEY_METRIC_ISC_MEAN], "inception_score_std": out[KEY_METRIC_ISC_STD]}


@BACKENDS.register("clean-fid")
class CleanFid(Backend):
    """clean-fid's 'clean' mode: PIL bicubic resize in float (no quantisation), then the same Inception trunk."""

    name = "clean-fid"
    resize = "clean (PIL bicubic, float) to 299"
    metrics = ("fid", "kid")

    def version(self) -> str:
        from importlib.metadata import version

        return version("clean-fid")

    def batch(self, images, extractor):
        from cleanfid.resize import build_resizer

        from ..inception import FloatInception

        if extractor.weights_sha256 is None:
            raise RobgenError("the clean-fid backend scores with Inception-v3 only; drop --feature-extractor")
        resize = build_resizer("clean")
        batch = np.stack([resize(img) for img in images.permute(0, 2, 3, 1).numpy()])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(extractor.device)
        if extractor.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return (FloatInception(extractor.module)(x),)

    def fid(self, stats_a, stats_b):
        from cleanfid.fid import frechet_distance

        return float(frechet_distance(stats_a["mu"], stats_a["sigma"], stats_b["mu"], stats_b["sigma"]))

    def kid(self, feats_a, feats_b, subsets, subset_size, seed):
        from cleanfid.fid import kernel_distance

        np.random.seed(seed)  # clean-fid draws its KID subsets from NumPy's global generator
        return {"kid": kernel_distance(feats_a, feats_b, num_subsets=subsets, max_subset_size=subset_size)}


def extract(images: torch.Tensor, backend: Backend, extractor: Extractor, batch_size: int, desc: str
            ) -> dict[str, np.ndarray]:
    """Features (float32) and, when the extractor has them, logits, with a progress bar."""
    chunks: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode(), tqdm(total=len(images), desc=desc, unit="img", leave=False) as bar:
        for start in range(0, len(images), batch_size):
            out = backend.batch(images[start : start + batch_size], extractor)
            chunks.append(tuple(o.float().cpu() for o in out))
            bar.update(min(batch_size, len(images) - start))
    result = {"features": torch.cat([c[0] for c in chunks]).numpy()}
    if extractor.has_logits and len(chunks[0]) > 1:
        result["logits"] = torch.cat([c[1] for c in chunks]).numpy()
    return result
