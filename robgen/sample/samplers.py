"""Samplers that descend an energy (PAPER.md section 4): SGLD with momentum, PGD-style normalised steps, Heun.

A sampler is one step function `(x, state, grad_fn, cfg, noise) -> (x_next, E(x, y))`, registered with its default
step size. `grad_fn(x)` returns the joint energy E(x, y) per sample (what tracking and early stopping watch) and the
input gradient of the target energy (energy.TARGET_ENERGIES: joint, ce or marginal). `descend` runs the steps without a host sync per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..attacks import per_sample_norm, project
from ..errors import RobgenError
from ..registry import Registry

GradFn = Callable[[Tensor], tuple[Tensor, Tensor]]
NoiseFn = Callable[[Tensor], Tensor]
StepFn = Callable[[Tensor, dict, GradFn, "SamplerConfig", NoiseFn], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class SamplerConfig:
    """Step settings; units are those of images in [0, 1]."""

    steps: int
    step_size: float  # eta
    momentum: float = 0.0  # zeta
    noise: float = 0.001  # sigma
    alpha: float | None = None  # noise scale; None: sqrt(2 eta)
    norm: str = "l2"  # pgd: linf (sign steps) or l2 (unit-L2 steps)
    eps: float | None = None  # pgd: radius of the ball around the start; None: only [0, 1]
    step_spread: float = 1.0  # sgld-rand: std of log(eta) across chains

    def __post_init__(self):
        if self.steps <= 0:
            raise RobgenError(f"--steps must be positive, got {self.steps}")
        if not 0 < self.step_size < math.inf:
            raise RobgenError(f"--step-size must be positive, got {self.step_size}")
        if not 0 <= self.noise < math.inf:  # written so that NaN fails too
            raise RobgenError(f"--noise must be >= 0, got {self.noise}")
        if self.alpha is not None and not 0 <= self.alpha < math.inf:
            raise RobgenError(f"--alpha must be >= 0, got {self.alpha}")
        if not 0 <= self.momentum < 1:
            raise RobgenError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.norm not in ("linf", "l2"):
            raise RobgenError(f"unknown norm {self.norm!r}; use linf or l2")
        if self.eps is not None and not 0 < self.eps < math.inf:
            raise RobgenError(f"--eps must be positive, got {self.eps}")
        if not 0 <= self.step_spread < math.inf:
            raise RobgenError(f"--step-spread must be >= 0, got {self.step_spread}")

    @property
    def noise_std(self) -> float:
        """alpha * sigma: the standard deviation of the noise added each step."""
        return (math.sqrt(2 * self.step_size) if self.alpha is None else self.alpha) * self.noise

    def noise_std_per_chain(self, eta: Tensor) -> Tensor:
        """alpha * sigma for per-chain step sizes eta (alpha = sqrt(2 eta) per chain unless --alpha is given)."""
        return (torch.sqrt(2 * eta) if self.alpha is None else torch.full_like(eta, self.alpha)) * self.noise


SAMPLERS: Registry[StepFn] = Registry("sampler")
# The SamplerConfig fields each sampler reads (registered as `reads`): sample() refuses the others rather than
# recording a setting that changed nothing.
LANGEVIN_READS = ("steps", "step_size", "momentum", "noise", "alpha")


def _langevin(x: Tensor, state: dict, grad: Tensor, cfg: SamplerConfig, noise: NoiseFn,
              eta: Tensor | None = None) -> Tensor:
    """v <- zeta v - (eta / 2) grad;  x <- clip(x + v + alpha sigma N(0, I)); `eta` (B, 1, 1, 1): one step size
    per chain instead of cfg.step_size."""
    v = -((cfg.step_size if eta is None else eta) / 2) * grad
    if cfg.momentum:
        v = v.add_(state["v"], alpha=cfg.momentum) if "v" in state else v
        state["v"] = v
    x = x + v
    if eta is not None:
        return x.addcmul_(noise(x), cfg.noise_std_per_chain(eta)).clamp_(0.0, 1.0)
    if cfg.noise_std:
        x = x.add_(noise(x), alpha=cfg.noise_std)
    return x.clamp_(0.0, 1.0)


@SAMPLERS.register("sgld", default_step_size=0.8, reads=LANGEVIN_READS)
def sgld(x: Tensor, state: dict, grad_fn: GradFn, cfg: SamplerConfig, noise: NoiseFn) -> tuple[Tensor, Tensor]:
    """SGLD with momentum, exactly PAPER.md's update (v_0 = 0)."""
    e, grad = grad_fn(x)
    return _langevin(x, state, grad, cfg, noise), e


@SAMPLERS.register("sgld-rand", default_step_size=0.8, reads=(*LANGEVIN_READS, "step_spread"))
def sgld_rand(x: Tensor, state: dict, grad_fn: GradFn, cfg: SamplerConfig, noise: NoiseFn) -> tuple[Tensor, Tensor]:
    """SGLD where each chain keeps its own step size eta * exp(s z), z ~ N(0, 1) drawn once per chain (s =
    --step-spread): chains that move little keep their start's variety, chains that move far sharpen, so one run
    spans both (the per-chain random step sizes used against mode collapse of short-run samplers)."""
    if "eta" not in state:
        z = noise(x[:, :1, :1, :1])
        state["eta"] = cfg.step_size * torch.exp(cfg.step_spread * z)
    e, grad = grad_fn(x)
    return _langevin(x, state, grad, cfg, noise, state["eta"]), e


@SAMPLERS.register("heun", default_step_size=0.8, reads=LANGEVIN_READS)
def heun(x: Tensor, state: dict, grad_fn: GradFn, cfg: SamplerConfig, noise: NoiseFn) -> tuple[Tensor, Tensor]:
    """Predictor-corrector: a plain gradient step predicts x', the Langevin step uses the mean of both gradients."""
    e, g1 = grad_fn(x)
    _, g2 = grad_fn((x - (cfg.step_size / 2) * g1).clamp(0.0, 1.0))
    return _langevin(x, state, (g1 + g2) / 2, cfg, noise), e


@SAMPLERS.register("pgd", default_step_size=0.5, reads=("steps", "step_size", "norm", "eps"))
def pgd(x: Tensor, state: dict, grad_fn: GradFn, cfg: SamplerConfig, noise: NoiseFn) -> tuple[Tensor, Tensor]:
    """Normalised descent (sign for linf, unit-L2 for l2) inside an optional eps-ball around the start
    (Santurkar et al. 2019); default step 0.5 is for l2."""
    e, grad = grad_fn(x)
    direction = grad.sign() if cfg.norm == "linf" else grad / per_sample_norm(grad)
    x = x - cfg.step_size * direction
    if cfg.eps is None:
        return x.clamp_(0.0, 1.0), e
    return project(x, state["x0"], cfg.eps, cfg.norm), e


def descend(
    name: str,
    grad_fn: GradFn,
    x0: Tensor,
    cfg: SamplerConfig,
    generator: torch.Generator,
    stop_at: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Run `cfg.steps` steps of sampler `name` from x0; return the final x and E(x_n, y) for every step (steps, B).

    With `stop_at` (one energy per sample), a sample freezes once its E(x, y) reaches it. Energies stay on the
    device until the end, so a NaN is reported (with its step) after the loop rather than by a sync every step.
    """
    step = SAMPLERS.get(name)
    state: dict = {"x0": x0}
    energies = torch.empty((cfg.steps, len(x0)), device=x0.device)
    done = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)

    def noise(like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    x = x0
    for n in range(cfg.steps):
        x_next, energies[n] = step(x, state, grad_fn, cfg, noise)
        if stop_at is not None:
            done |= energies[n] <= stop_at
            x_next = torch.where(done.view(-1, *[1] * (x.dim() - 1)), x, x_next)
        x = x_next
    bad = ~torch.isfinite(energies).all(dim=1)
    if bad.any():
        first = int(torch.nonzero(bad)[0])
        if first == 0:  # before any step: the model or the start is at fault, not the step size
            raise RobgenError(f"the energy is NaN/inf at step 0 of {name}, before any step: the model gives "
                              "non-finite logits on the starts (NaN weights or a zero normalisation std in the "
                              "checkpoint, or a start fit holding NaN)")
        raise RobgenError(f"the energy became NaN/inf at step {first} of {name}; lower --step-size (now "
                          f"{cfg.step_size}) or drop --bf16")
    return x.detach(), energies
