"""Adversarial training (SAT, TRADES, WEAT, MART) with energy telemetry: see losses.py and loop.py."""
from .losses import LOSSES, Loss, adversarial, batch_loss, register_loss
from .loop import DEFAULTS, METRIC_KEYS, RECIPES, SCHEDULES, make_config, read_config, train, train_step

__all__ = [
    "DEFAULTS", "LOSSES", "Loss", "METRIC_KEYS", "RECIPES", "SCHEDULES", "adversarial", "batch_loss", "make_config",
    "read_config", "register_loss", "train", "train_step",
]
