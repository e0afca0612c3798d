"""Adversarial training losses, each a few lines over robgen.energy (PAPER.md section 3).

A loss names the inner attack it trains against (objective and random start) and maps the train-mode logits of
the clean batch x and of its adversarial x* to one value per sample plus optional per-sample weights; the batch
loss is (1/B) sum_i w_i l_i, divided by the batch size B, not by the sum of weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .. import energy
from ..attacks import pgd
from ..registry import Registry

# (clean logits or None, adversarial logits, labels, beta) -> (per-sample loss, per-sample weights or None)
LossFn = Callable[[Tensor | None, Tensor, Tensor, float], tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class Loss:
    name: str
    objective: str  # what the inner attack ascends (attacks.OBJECTIVES)
    start: str  # the inner attack's random start
    uses_clean: bool  # whether the outer loss needs the train-mode logits of x
    fn: LossFn


LOSSES: Registry[Loss] = Registry("loss")


def register_loss(name: str, *, objective: str, start: str, uses_clean: bool = True) -> Callable[[LossFn], LossFn]:
    def add(fn: LossFn) -> LossFn:
        LOSSES.register(name)(Loss(name, objective, start, uses_clean, fn))
        return fn

    return add


@register_loss("sat", objective="ce", start="uniform", uses_clean=False)
def sat(clean: Tensor | None, adv: Tensor, y: Tensor, beta: float):
    """PGD adversarial training (Madry et al.): CE(f(x*), y) against a CE attack."""
    return energy.cross_entropy(adv, y), None


@register_loss("trades", objective="kl", start="normal")
def trades(clean: Tensor, adv: Tensor, y: Tensor, beta: float):
    """TRADES: CE(f(x), y) + beta KL(p(.|x) || p(.|x*)) against the KL attack."""
    return energy.cross_entropy(clean, y) + beta * energy.trades_kl(clean, adv), None


@register_loss("weat-adv", objective="kl", start="normal")
def weat_adv(clean: Tensor, adv: Tensor, y: Tensor, beta: float):
    """WEAT_adv: w(x) [CE(f(x*), y) + beta KL], w from the clean sample's E(x), detached."""
    return energy.cross_entropy(adv, y) + beta * energy.trades_kl(clean, adv), energy.weat_weight(clean)


@register_loss("weat-nat", objective="kl", start="normal")
def weat_nat(clean: Tensor, adv: Tensor, y: Tensor, beta: float):
    """WEAT_nat: w(x) [CE(f(x), y) + beta KL]; with all w = 1 this is TRADES."""
    return energy.cross_entropy(clean, y) + beta * energy.trades_kl(clean, adv), energy.weat_weight(clean)


@register_loss("mart", objective="ce", start="normal")
def mart(clean: Tensor, adv: Tensor, y: Tensor, beta: float):
    """MART (Wang et al. 2020): boosted CE on x* + beta KL(p(.|x) || p(.|x*)) (1 - p(y|x))."""
    probs_adv = energy.class_probs(adv)
    # The most likely wrong class of x*: pushing its probability down is MART's "boosted" margin term.
    wrong = probs_adv.scatter(1, y.view(-1, 1), -1.0).max(dim=1).values
    boosted = energy.cross_entropy(adv, y) - torch.log(1.0001 - wrong)
    p_true = energy.class_probs(clean).gather(1, y.view(-1, 1)).squeeze(1)
    return boosted + beta * energy.trades_kl(clean, adv) * (1.0000001 - p_true), None


def adversarial(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    loss: Loss,
    *,
    eps: float,
    step_size: float,
    steps: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The inner attack of `loss` with the model in eval mode: returns (x*, eval-mode clean logits).

    The clean logits are computed once per batch and handed to every attack step (the KL objective needs them).
    """
    model.eval()
    with torch.no_grad():
        clean = model(x)
    x_adv = pgd(
        model, x, y, eps=eps, step_size=step_size, steps=steps, objective=loss.objective, start=loss.start,
        clean_logits=clean, generator=generator,
    )
    return x_adv, clean


def batch_loss(loss: Loss, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, beta: float) -> tuple[Tensor, Tensor | None]:
    """The outer loss with the model in train mode: (scalar (1/B) sum_i w_i l_i, weights or None)."""
    model.train()
    clean = model(x) if loss.uses_clean else None
    per_sample, weights = loss.fn(clean, model(x_adv), y, beta)
    if weights is not None:
        per_sample = weights * per_sample
    return per_sample.float().sum() / x.shape[0], weights
