"""A classifier read as an energy-based model: the single source of every energy used in robgen.

For logits f(x) in R^K (PAPER.md section 1):
    E(x, y) = -f(x)[y]                 joint energy
    E(x)    = -logsumexp_k f(x)[k]     marginal energy
    p(y|x)  = exp(-E(x, y)) / sum_k exp(-E(x, k)),   CE(x, y) = E(x, y) - E(x)
All functions work on logits and return one value per sample (no reduction).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry


def joint_energy(logits: Tensor, y: Tensor) -> Tensor:
    """E(x, y) = -f(x)[y]."""
    return -logits.gather(1, y.view(-1, 1)).squeeze(1)


def marginal_energy(logits: Tensor) -> Tensor:
    """E(x) = -logsumexp_k f(x)[k]."""
    return -torch.logsumexp(logits, dim=1)


def class_probs(logits: Tensor) -> Tensor:
    """p(.|x) = softmax of -E(x, .)."""
    return logits.softmax(dim=1)


def cross_entropy(logits: Tensor, y: Tensor) -> Tensor:
    """CE(x, y) = E(x, y) - E(x)."""
    return joint_energy(logits, y) - marginal_energy(logits)


def delta_marginal(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """dE(x) = E(x) - E(x*), signed: negative when the attack raised the marginal energy."""
    return marginal_energy(clean_logits) - marginal_energy(adv_logits)


def delta_joint(clean_logits: Tensor, adv_logits: Tensor, y: Tensor) -> Tensor:
    """dE(x, y) = E(x, y) - E(x*, y), signed."""
    return joint_energy(clean_logits, y) - joint_energy(adv_logits, y)


def weight_of_energy(marginal: Tensor) -> Tensor:
    """The WEAT weight as a function of a marginal energy value: 1 / log(1 + exp(|E|)) (analysis plots its curve)."""
    return 1.0 / F.softplus(marginal.abs())


def weat_weight(logits: Tensor) -> Tensor:
    """WEAT weight w(x) = 1 / log(1 + exp(|E(x)|)), detached; w(0) = 1/log 2.

    Samples of high energy (E(x) near 0: unlikely, hard) weigh more than confident, low-energy ones.
    """
    return weight_of_energy(marginal_energy(logits.detach()))


def trades_kl(clean_logits: Tensor, adv_logits: Tensor) -> Tensor:
    """KL(p(.|x) || p(.|x*)) per sample."""
    log_p = clean_logits.log_softmax(dim=1)
    log_q = adv_logits.log_softmax(dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def trades_kl_terms(clean_logits: Tensor, adv_logits: Tensor) -> tuple[Tensor, Tensor]:
    """The TRADES KL split into energies: (sum_k p(k|x) [E(x*,k) - E(x,k)], dE(x)); their sum is the KL."""
    conditional = (class_probs(clean_logits) * (clean_logits - adv_logits)).sum(dim=1)
    return conditional, delta_marginal(clean_logits, adv_logits)


# Energies a sampler can descend, by name: each maps (logits, y) to one value per sample.
TARGET_ENERGIES: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("energy")
TARGET_ENERGIES.register("joint")(joint_energy)
TARGET_ENERGIES.register("ce")(cross_entropy)
TARGET_ENERGIES.register("marginal")(lambda logits, y: marginal_energy(logits))
