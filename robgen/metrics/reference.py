"""Statistics files and the reference cache: the one owner of the stats .npz format, which it both writes and reads.

A statistics file (`robgen stats`, and the cache) holds `mu`, `sigma` (FID), `features` (float32, N x D: KID, PRC
and per-class FID need them), `labels` (int64, -1 when unknown) and `protocol` (a JSON string). A foreign .npz with
only `mu` and `sigma` is accepted for FID.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import RobgenError
from ..utils import atomic_path, cache_dir, precision, read_npz
from .config import ScoreConfig
from .engines import Backend, Extractor, extract
from .images import load_reference_images, seeded_subset, subsample


def protocol_id(backend: Backend, extractor: Extractor) -> dict[str, Any]:
    """What makes features comparable: engine, resize, extractor and its weights, memory layout."""
    # The layout is part of the identity: --no-channels-last must not reuse features cached with channels_last.
    return {"engine": backend.name, "resize": backend.resize, "extractor": extractor.name,
            "extractor_weights_sha256": extractor.weights_sha256, "channels_last": extractor.channels_last}


def read_stats(path: Path) -> dict[str, Any]:
    """A statistics file, checked: mu and sigma that fit, features that match, the protocol as a dict."""
    stats: dict[str, Any] = read_npz(path, ("mu", "sigma"))
    mu, sigma = stats["mu"], stats["sigma"]
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise RobgenError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not fit (want D and D x D)")
    if "features" in stats and (stats["features"].ndim != 2 or stats["features"].shape[1] != len(mu)):
        raise RobgenError(f"{path}: features {stats['features'].shape} do not match mu {mu.shape}")
    stats["protocol"] = json.loads(str(stats["protocol"])) if "protocol" in stats else {}
    return stats


def write_stats_file(path: Path, stats: dict[str, Any]) -> None:
    """A statistics file, written atomically (the protocol as a JSON string)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object keeps numpy from appending a second .npz suffix
            np.savez(f, **{k: v for k, v in stats.items() if k != "protocol"}, protocol=json.dumps(stats["protocol"]))


def reference_stats(ref: str, backend: Backend, extractor: Extractor, opts: ScoreConfig) -> dict[str, Any]:
    """Reference features and statistics, computed once per (reference, extractor weights, resize) and cached."""
    if ref.endswith(".npz") and not ref.startswith("folder:"):
        stats = read_stats(Path(ref).expanduser())
        want, have = protocol_id(backend, extractor), stats["protocol"]
        clash = [k for k in want if k in have and have[k] != want[k]]
        if clash:
            raise RobgenError(f"{ref} was computed with {clash[0]}={have[clash[0]]!r}, this run uses "
                              f"{want[clash[0]]!r}; recompute it with `robgen stats`")
        stats["protocol"] = {"reference_size": len(stats["features"]) if "features" in stats else None,
                             **have, "reference": f"{have.get('reference', 'unknown')} via {ref}"}
        return _subset_of_stats(stats, backend, opts.ref_n, ref)
    images = load_reference_images(ref, opts.data_root, opts.download)
    total = len(images)
    # Seed 0, not the run's seed: the same subset (and cache entry) serves every scored run.
    images = subsample(images, opts.ref_n, 0, "--ref-n")
    if len(images) < total:
        ref = f"{ref} [seeded subset of {len(images)} of {total}]"
    key = json.dumps([images.fingerprint, protocol_id(backend, extractor)], sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ref).strip("-")[-40:]
    path = cache_dir("stats") / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        return read_stats(path)
    blocks = path.with_suffix(".partial")
    feats = _extract_in_blocks(images.images, backend, extractor, opts.batch_size, f"reference {ref}", blocks)
    stats = {**backend.statistics(feats), "features": feats, "labels": images.labels,
             "protocol": {**protocol_id(backend, extractor), "reference": ref, "reference_size": len(images),
                          "precision": precision(extractor.device)}}
    write_stats_file(path, stats)
    shutil.rmtree(blocks)
    return stats


def _subset_of_stats(stats: dict[str, Any], backend: Backend, n: int | None, ref: str) -> dict[str, Any]:
    """--ref-n on a statistics file: the seeded subset of its features (the images `--ref-n` on the folder picks,
    seed 0), its mu and sigma recomputed; one extraction of all 50,000 images then serves every proxy size."""
    if n is None or n == stats["protocol"]["reference_size"]:
        return stats
    if "features" not in stats:
        raise RobgenError(f"--ref-n needs the features in {ref}; it holds only mu and sigma")
    total = len(stats["features"])
    if n > total:
        raise RobgenError(f"--ref-n {n} asks for more images than {ref} holds ({total})")
    keep = seeded_subset(total, n, 0)
    feats = stats["features"][keep]
    protocol = stats["protocol"]
    return {**backend.statistics(feats), "features": feats, "labels": stats["labels"][keep] if "labels" in stats else
            np.full(n, -1, np.int64), "protocol": {**protocol, "reference_size": n,
                                                  "reference": f"{protocol['reference']} [seeded subset of {n} of {total}]"}}


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
