"""ScoreConfig: what `robgen score` and `robgen stats` compute and how; the single source of their defaults."""
from __future__ import annotations

from dataclasses import dataclass

from .. import checks


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
