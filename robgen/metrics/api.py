"""score() and write_stats(): the API behind `robgen score` and `robgen stats`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..config import with_options
from ..errors import RobgenError
from ..utils import precision
from .config import ScoreConfig
from .engines import BACKENDS, Backend, build_extractor, extract
from .images import ImageSet, load_samples, subsample
from .reference import protocol_id, reference_stats, write_stats_file


def _options(options: dict[str, Any]) -> ScoreConfig:
    """ScoreConfig with the given options (None: the default), checked."""
    return with_options(ScoreConfig, options, "score", skip_none=True).check()


def write_stats(out: str | os.PathLike, overwrite: bool = False, **options: Any) -> dict[str, Any]:
    """`robgen stats`: statistics of options['ref'] (with features) into a shareable .npz; returns its protocol.
    An existing `out` is replaced only with overwrite=True, and never a file of a run or sample folder."""
    from ..outputs import claim

    opts = _options(options)
    claim([out], overwrite)
    backend = BACKENDS.get(opts.backend)()
    extractor = build_extractor(opts, logits=False)
    stats = reference_stats(opts.ref, backend, extractor, opts)
    stats["protocol"] = {**stats["protocol"], "engine_version": backend.version()}
    write_stats_file(Path(out), stats)
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
        out[str(int(label))] = backend.fid(backend.statistics(mine), backend.statistics(theirs.astype(np.float32)))
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
        result["fid"] = backend.fid(backend.statistics(feats), ref)
    if "kid" in wanted:
        subset = min(opts.kid_subset_size, len(feats), len(ref["features"]))
        result.update(backend.kid(feats, ref["features"].astype(np.float32), opts.kid_subsets, subset,
                                  opts.seed))
        result["kid_subset_size"] = subset
    if "prc" in wanted:
        result.update(backend.prc(feats, ref["features"].astype(np.float32), opts.prc_neighborhood))
    if "isc" in wanted:
        result.update(backend.isc(got["logits"], opts.isc_splits, opts.seed))
    if opts.per_class:
        result["fid_per_class"] = _per_class_fid(backend, images, feats, ref)
    protocol = {**protocol_id(backend, extractor), "engine_version": backend.version(),
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
