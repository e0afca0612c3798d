"""Adversarial training (SAT, TRADES, WEAT, MART) with energy telemetry: see losses.py and loop.py."""
from .losses import LOSSES, Loss, adversarial, batch_loss, register_loss
from .loop import (
    DEFAULT_RECIPE, METRIC_KEYS, RECIPES, SCHEDULES, Recipe, TrainCall, TrainConfig, make_config, read_config,
    recipe_defaults, selection_key, train, train_step,
)

__all__ = [
    "DEFAULT_RECIPE", "LOSSES", "Loss", "METRIC_KEYS", "RECIPES", "Recipe", "SCHEDULES", "TrainCall", "TrainConfig",
    "adversarial", "batch_loss", "make_config", "read_config", "recipe_defaults", "register_loss", "selection_key",
    "train", "train_step",
]
