"""Score samples (FID, KID, precision/recall, Inception Score) by wrapping torch-fidelity or clean-fid.

robgen only loads images, extracts features with the engine's own extractor and resize, caches the reference
features, and hands features to the engine's metric functions; every number carries its protocol.

Statistics files (`robgen stats`, and the cache): `mu`, `sigma` (FID), `features` (float32, N x D: KID, PRC and
per-class FID need them), `labels` (int64, -1 when unknown) and `protocol` (a JSON string). A foreign .npz with only
`mu` and `sigma` is accepted for FID.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import checks
from .config import with_options
from .errors import RobgenError
from .registry import Registry
from .utils import IMAGE_SUFFIXES, atomic_path, cache_dir, folder_labels, open_image, precision, resolve_device

@dataclass(frozen=True)
class ScoreConfig:
    """`robgen score` / `robgen stats`, score() and write_stats(): the single source of their defaults; check
    validates them."""

    ref: str = "cifar10-train"
    fid: bool = False  # with no metric named, FID is computed
    kid: bool = False
    prc: bool = False
    isc: bool = False
    per_class: bool = False
    n: int | None = None  # number of samples scored; None = all (a seeded random subset otherwise)
    ref_n: int | None = None  # number of reference images; None = all (a random subset with seed 0, for CPU budgets)
    batch_size: int = 64  # images per extractor call (torch-fidelity's default); features do not depend on it
    backend: str = "torch-fidelity"
    feature_extractor: str | None = None  # a torch-fidelity extractor name; None = Inception-v3 from the weights
    inception_weights: str | None = None  # path; None = ROBGEN_INCEPTION_WEIGHTS, then the caches, then download
    data_root: str | None = None  # None = ROBGEN_DATA, else ./data
    download: bool = False
    seed: int = 0
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # shrunk to the smaller set's size when fewer images are there (reported)
    prc_neighborhood: int = 3
    isc_splits: int = 10
    device: str = "auto"
    # channels_last convolutions: 1.5-2.9x faster on 2 shared CPU cores, FID moved by 1.6e-8 relative
    # (bench_score.py, 1,000 CIFAR-10 images); False reproduces torch-fidelity's features bit for bit.
    channels_last: bool = True

    def check(self) -> ScoreConfig:
        for key in ("batch_size", "kid_subsets", "kid_subset_size", "prc_neighborhood", "isc_splits"):
            checks.integer(f"--{key.replace('_', '-')}", getattr(self, key))
        checks.integer("--n", self.n, 2, none_ok=True)
        checks.integer("--ref-n", self.ref_n, 2, none_ok=True)
        checks.seed(self.seed)
        return self


# ---------------------------------------------------------------- images
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


def _npz_arrays(path: Path, needed: tuple[str, ...]) -> dict[str, np.ndarray]:
    """All arrays of an .npz, or a one-line error for a corrupt file or a missing array."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RobgenError(f"{path}: not a readable .npz ({err})") from None
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise RobgenError(f"{path}: no {', '.join(map(repr, missing))} array (has {', '.join(arrays) or 'nothing'})")
    return arrays


def _load_npz(path: Path) -> ImageSet:
    data = _npz_arrays(path, ("images",))
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
    if path.is_dir() and (path / "samples.npz").is_file():
        return _load_npz(path / "samples.npz")
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path)
    if path.is_dir():
        return _load_folder(path)
    raise RobgenError(f"samples {spec}: not a folder or an .npz file")


def load_reference_images(ref: str, data_root: str | None = None, download: bool = False) -> ImageSet:
    """cifar10-train / cifar10-test (robgen.data's torchvision path) or folder:PATH, read as --data reads it:
    PATH/train when PATH has one (a tree with train/ and test/ is not mixed), else every image under PATH."""
    from .data import folder_split, load_split

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
    _check_count(images.images[:n], images.name)
    keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:n])
    return ImageSet(images.images[keep], images.labels[keep], images.name, f"{images.fingerprint}:n{n}:s{seed}")


# ---------------------------------------------------------------- engines
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

    from .inception import full_weights_hint, resolve_weights

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

        from .inception import FloatInception

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


# ---------------------------------------------------------------- statistics
def statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    """torch-fidelity's mean and covariance (float32 mean, float64 covariance), used by both backends."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(torch.from_numpy(features))


def _protocol_id(backend: Backend, extractor: Extractor) -> dict[str, Any]:
    # The layout is part of the identity: --no-channels-last must not reuse features cached with channels_last.
    return {"engine": backend.name, "resize": backend.resize, "extractor": extractor.name,
            "extractor_weights_sha256": extractor.weights_sha256, "channels_last": extractor.channels_last}


def _read_stats(path: Path) -> dict[str, Any]:
    stats: dict[str, Any] = _npz_arrays(path, ("mu", "sigma"))
    mu, sigma = stats["mu"], stats["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise RobgenError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit (want D and D x D)")
    if "features" in stats and (stats["features"].ndim != 2 or stats["features"].shape[1] != len(mu)):
        raise RobgenError(f"{path}: features {stats['features'].shape} do not match mu {mu.shape}")
    stats["protocol"] = json.loads(str(stats["protocol"])) if "protocol" in stats else {}
    return stats


def _write_stats(path: Path, stats: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending a second .npz suffix
            np.savez(f, **{k: v for k, v in stats.items() if k != "protocol"}, protocol=json.dumps(stats["protocol"]))


def reference_stats(ref: str, backend: Backend, extractor: Extractor, opts: ScoreConfig) -> dict[str, Any]:
    """Reference features and statistics, computed once per (reference, extractor weights, resize) and cached."""
    if ref.endswith(".npz") and not ref.startswith("folder:"):
        stats = _read_stats(Path(ref).expanduser())
        want, have = _protocol_id(backend, extractor), stats["protocol"]
        clash = [k for k in want if k in have and have[k] != want[k]]
        if clash:
            raise RobgenError(f"{ref} was computed with {clash[0]}={have[clash[0]]!r}, this run uses "
                              f"{want[clash[0]]!r}; recompute it with `robgen stats`")
        stats["protocol"] = {"reference_size": len(stats["features"]) if "features" in stats else None,
                             **have, "reference": f"{have.get('reference', 'unknown')} via {ref}"}
        return stats
    images = load_reference_images(ref, opts.data_root, opts.download)
    total = len(images)
    # Seed 0, not the run's seed: the same subset (and cache entry) serves every scored run.
    images = subsample(images, opts.ref_n, 0, "--ref-n")
    if len(images) < total:
        ref = f"{ref} [seeded subset of {len(images)} of {total}]"
    key = json.dumps([images.fingerprint, _protocol_id(backend, extractor)], sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ref).strip("-")[-40:]
    path = cache_dir("stats") / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        return _read_stats(path)
    blocks = path.with_suffix(".partial")
    feats = _extract_in_blocks(images.images, backend, extractor, opts.batch_size, f"reference {ref}", blocks)
    stats = {**statistics(feats), "features": feats, "labels": images.labels,
             "protocol": {**_protocol_id(backend, extractor), "reference": ref, "reference_size": len(images),
                          "precision": precision(extractor.device)}}
    _write_stats(path, stats)
    shutil.rmtree(blocks)
    return stats


def _extract_in_blocks(images: torch.Tensor, backend: Backend, extractor: Extractor, batch_size: int, desc: str,
                       folder: Path) -> np.ndarray:
    """Reference features block by block, each block kept in `folder` once done, so that a killed extraction (50,000
    CIFAR-10 images take about an hour of a 2-core CPU) resumes where it stopped. Blocks are whole batches, so the
    batches, and the features, are the same as in one pass."""
    folder.mkdir(parents=True, exist_ok=True)
    block = batch_size * 40
    parts = []
    for i, start in enumerate(range(0, len(images), block)):
        done = folder / f"{i:05d}.npy"
        if not done.is_file():
            feats = extract(images[start : start + block], backend, extractor, batch_size,
                            f"{desc} block {i + 1}/{-(-len(images) // block)}")["features"]
            with atomic_path(done) as tmp, open(tmp, "wb") as f:
                np.save(f, feats)
        parts.append(np.load(done))
    return np.concatenate(parts)


# ---------------------------------------------------------------- API
def _options(options: dict[str, Any]) -> ScoreConfig:
    """ScoreConfig with the given options (None: the default), checked."""
    return with_options(ScoreConfig, options, "score", skip_none=True).check()


def write_stats(out: str | os.PathLike, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """`robgen stats`: statistics of options['ref'] (with features) into a shareable .npz; returns its protocol.
    An existing `out` is replaced only with overwrite=True, and never a file of a run or sample folder."""
    from .outputs import claim

    opts = _options(options)
    claim([out], overwrite)
    backend = BACKENDS.get(opts.backend)()
    extractor = build_extractor(opts, logits=False)
    stats = reference_stats(opts.ref, backend, extractor, opts)
    stats["protocol"] = {**stats["protocol"], "engine_version": backend.version()}
    _write_stats(Path(out), stats)
    return {"out": str(out), **stats["protocol"]}


def _per_class_fid(backend: Backend, samples: ImageSet, feats: np.ndarray, ref: dict[str, Any]) -> dict[str, float]:
    if not samples.has_labels:
        raise RobgenError(f"--per-class needs sample labels; {samples.name} has none")
    if "features" not in ref or (ref.get("labels", np.array([-1])) < 0).any():
        raise RobgenError("--per-class needs reference features with labels (a dataset, a class-folder tree, or a "
                          "stats .npz written by `robgen stats` from one)")
    out = {}
    for label in np.unique(samples.labels):
        mine, theirs = feats[samples.labels == label], ref["features"][ref["labels"] == label]
        if len(mine) < 2 or len(theirs) < 2:
            raise RobgenError(f"--per-class: class {label} has {len(mine)} sample(s) and {len(theirs)} reference "
                              "image(s); each needs at least 2")
        out[str(int(label))] = backend.fid(statistics(mine), statistics(theirs.astype(np.float32)))
    return out


def score(samples: str | os.PathLike, **options: Any) -> dict[str, Any]:
    """Score a sample run against a reference; options are ScoreConfig's fields. Returns metrics and protocol."""
    opts = _options(options)
    backend = BACKENDS.get(opts.backend)()
    wanted = [m for m in ("fid", "kid", "prc", "isc") if getattr(opts, m)] or ["fid"]
    unsupported = [m for m in wanted if m not in backend.metrics]
    if unsupported:
        raise RobgenError(f"{backend.name} does not compute {', '.join(unsupported)}; use --backend torch-fidelity")
    needs_ref = set(wanted) - {"isc"} or opts.per_class
    images = subsample(load_samples(samples), opts.n, opts.seed)
    extractor = build_extractor(opts, logits="isc" in wanted)
    ref = reference_stats(opts.ref, backend, extractor, opts) if needs_ref else None
    if ref is not None and ({"kid", "prc"} & set(wanted)) and "features" not in ref:
        raise RobgenError(f"{opts.ref} holds only mu/sigma; KID and precision/recall need reference features "
                          "(write them with `robgen stats`)")
    got = extract(images.images, backend, extractor, opts.batch_size, "samples")
    feats = got["features"]
    result: dict[str, Any] = {}
    if "fid" in wanted:
        result["fid"] = backend.fid(statistics(feats), ref)
    if "kid" in wanted:
        subset = min(opts.kid_subset_size, len(feats), len(ref["features"]))
        result.update(backend.kid(feats, ref["features"].astype(np.float32), opts.kid_subsets, subset,
                                  opts.seed))
        result["kid_subset_size"] = subset
    if "prc" in wanted:
        from torch_fidelity.metric_prc import prc_features_to_metric

        prc = prc_features_to_metric(torch.from_numpy(feats), torch.from_numpy(ref["features"].astype(np.float32)),
                                     prc_neighborhood=opts.prc_neighborhood, verbose=False)
        result.update(precision=prc["precision"], recall=prc["recall"], f_score=prc["f_score"])
    if "isc" in wanted:
        from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

        isc = isc_features_to_metric(torch.from_numpy(got["logits"]), splits=opts.isc_splits,
                                     rng_seed=opts.seed)
        result.update(inception_score=isc[KEY_METRIC_ISC_MEAN], inception_score_std=isc[KEY_METRIC_ISC_STD])
    if opts.per_class:
        result["fid_per_class"] = _per_class_fid(backend, images, feats, ref)
    protocol = {**_protocol_id(backend, extractor), "engine_version": backend.version(),
                "extractor_weights": extractor.weights_source, "samples": images.name, "num_samples": len(images),
                "seed": opts.seed, "channels_last": opts.channels_last, "precision": precision(extractor.device)}
    if ref is not None:
        protocol.update(reference=ref["protocol"].get("reference", opts.ref),
                        reference_size=ref["protocol"].get("reference_size"),
                        reference_precision=ref["protocol"].get("precision"))
    return {**result, "protocol": protocol}


def format_result(result: dict[str, Any]) -> list[str]:
    """Human lines: the numbers, then the protocol they were measured under."""
    p = result["protocol"]
    numbers = []
    for key, label in (("fid", "FID"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
                       ("f_score", "F-score"), ("inception_score", "IS")):
        if key in result:
            spread = result.get(f"{key}_std")
            numbers.append(f"{label} {result[key]:.4f}" + (f" ± {spread:.4f}" if spread is not None else "")
                           + (f" (subsets of {result['kid_subset_size']})" if key == "kid" else ""))
    lines = ["  ".join(numbers)]
    lines += [f"FID class {label}: {value:.4f}" for label, value in result.get("fid_per_class", {}).items()]
    lines.append(f"  protocol: {p['engine']} {p['engine_version']}, {p['extractor']} weights sha256 "
                 f"{(p['extractor_weights_sha256'] or 'none')[:12]}, resize {p['resize']}, reference "
                 f"{p.get('reference', '-')} (n={p.get('reference_size', '-')}), samples {p['samples']} "
                 f"(n={p['num_samples']}), seed {p['seed']}")
    return lines
