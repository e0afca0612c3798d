"""Score samples (FID, KID, precision/recall, Inception Score) by wrapping torch-fidelity or clean-fid.

robgen only loads images (images.py), extracts features with the engine's own extractor and resize and hands them
to the engine's metric functions (engines.py), caches the reference features in statistics files (reference.py),
and reports every number with its protocol (api.py: score, write_stats). ScoreConfig (config.py) holds the defaults.
"""
from .api import format_result, score, write_stats
from .config import ScoreConfig
from .engines import BACKENDS, Backend, CleanFid, Extractor, TorchFidelity, build_extractor, extract
from .images import ImageSet, load_reference_images, load_samples, subsample
from .reference import read_stats, reference_stats, write_stats_file

__all__ = [
    "BACKENDS", "Backend", "CleanFid", "Extractor", "ImageSet", "ScoreConfig", "TorchFidelity", "build_extractor",
    "extract", "format_result", "load_reference_images", "load_samples", "read_stats", "reference_stats", "score",
    "subsample", "write_stats", "write_stats_file",
]
