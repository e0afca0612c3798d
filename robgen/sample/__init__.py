"""Sampling images from a classifier's energy: starts (STARTS), samplers (SAMPLERS) and the batched generator."""
from .generate import DEFAULTS, sample
from .samplers import SAMPLERS, SamplerConfig, descend
from .starts import STARTS, StartFit, draw_starts, fit_starts, load_fit, resolve_fit, save_fit

__all__ = ["DEFAULTS", "SAMPLERS", "STARTS", "SamplerConfig", "StartFit", "descend", "draw_starts", "fit_starts",
           "load_fit", "resolve_fit", "sample", "save_fit"]
