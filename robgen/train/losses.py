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
    objective: str | None  # what the inner attack ascends (attacks.OBJECTIVES); None: no inner attack
    start: str | None  # the inner attack's random start
    uses_clean: bool  # whether the outer loss needs the train-mode logits of x
    fn: LossFn


LOSSES: Registry[Loss] = Registry("loss")


def register_loss(name: str, *, objective: str | None, start: str | None, uses_clean: bool = True) -> Callable[[LossFn], LossFn]:
    def add(fn: LossFn) -> LossFn:
        LOSSES.register(name)(Loss(name, objective, start, uses_clean, fn))
        return fn

    return add


@register_loss("standard", objective=None, start=None)
def standard(clean: Tensor, adv: Tensor, y: Tensor, beta: float):
    """Standard (non-robust) training: CE(f(x), y), no inner attack (x* = x)."""
    return energy.cross_entropy(clean, y), None


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
    norm: str = "linf",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The inner attack of `loss` with the model in eval mode: returns (x*, eval-mode clean logits); x* is x itself
    for a loss without an attack.

    The clean logits are computed once per batch (in fp32, like the whole attack) and handed to every attack step.
    """
    model.eval()
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        clean = model(x.float())
    if loss.objective is None:
        return x, clean
    x_adv = pgd(
        model, x, y, eps=eps, step_size=step_size, steps=steps, norm=norm, objective=loss.objective,
        start=loss.start, clean_logits=clean, generator=generator,
    )
    return x_adv, clean


def batch_loss(loss: Loss, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, beta: float) -> tuple[Tensor, Tensor | None]:
    """The outer loss with the model in train mode: (scalar (1/B) sum_i w_i l_i, weights or None)."""
    model.train()
    if loss.objective is None:  # no attack: x* is x, one forward
        clean = adv = model(x)
    else:
        clean = model(x) if loss.uses_clean else None
        adv = model(x_adv)
    per_sample, weights = loss.fn(clean, adv, y, beta)
    if weights is not None:
        per_sample = weights * per_sample
    return per_sample.float().sum() / x.shape[0], weights
