"""Adversarial attacks: PGD (Linf/L2, untargeted/targeted, CE / KL-to-clean / energy objectives) and FGSM.

Attacks leave the model's mode alone (callers choose eval or train) and never touch parameter gradients.
Random starts are drawn on the generator's device: a CPU generator gives the same starts on any device (evaluation
uses one, so a GPU and a CPU evaluation attack from the same points); a CUDA generator avoids a host draw and copy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from . import checks, energy
from .errors import RobgenError
from .registry import Registry

# Objectives an attack ascends, each (logits, y, clean_logits) -> one value per sample.
OBJECTIVES: Registry[Callable[[Tensor, Tensor, Tensor | None], Tensor]] = Registry("attack objective")
OBJECTIVES.register("ce")(lambda logits, y, clean: energy.cross_entropy(logits, y))
OBJECTIVES.register("kl")(lambda logits, y, clean: energy.trades_kl(clean, logits))
OBJECTIVES.register("joint")(lambda logits, y, clean: energy.joint_energy(logits, y))
OBJECTIVES.register("marginal")(lambda logits, y, clean: energy.marginal_energy(logits))


def _on(generator: torch.Generator | None) -> torch.device:
    """Where a draw from `generator` is made (None: torch's global CPU generator)."""
    return generator.device if generator is not None else torch.device("cpu")


def _randn(shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=generator, device=_on(generator)).to(device=like.device, dtype=like.dtype)


def _rand(shape: torch.Size, generator: torch.Generator | None, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=generator, device=_on(generator)).to(device=like.device, dtype=like.dtype)


def per_sample_norm(t: Tensor) -> Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (t.dim() - 1))


def project(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Back into the eps-ball around x and into [0, 1]."""
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        delta = delta * (eps / per_sample_norm(delta)).clamp(max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def random_start(x: Tensor, eps: float, norm: str, kind: str | None, generator: torch.Generator | None) -> Tensor:
    """'uniform' in the eps-ball, 'normal' (x + 0.001 N(0, I), the TRADES start) or None (x itself)."""
    if kind is None:
        return x.clone()
    if kind == "normal":
        return (x + 0.001 * _randn(x.shape, generator, x)).clamp(0.0, 1.0)
    if kind != "uniform":
        raise RobgenError(f"unknown random start {kind!r}; use uniform, normal or none")
    if norm == "linf":
        delta = (2 * _rand(x.shape, generator, x) - 1) * eps
    else:
        direction = _randn(x.shape, generator, x)
        radius = _rand(x.shape[:1], generator, x).view(-1, *[1] * (x.dim() - 1)) * eps
        delta = direction / per_sample_norm(direction) * radius
    return (x + delta).clamp(0.0, 1.0)


NORMS = ("linf", "l2")
# The usual radius of each threat model on CIFAR-sized images (RobustBench: Linf 8/255, L2 0.5).
NORM_EPS = {"linf": 8 / 255, "l2": 0.5}


def check_radius(eps: float, norm: str, shape: tuple[int, ...]) -> None:
    """A radius that makes sense for images in [0, 1] of this shape: Linf at most 1, L2 at most the diagonal."""
    if norm not in NORMS:
        raise RobgenError(f"unknown norm {norm!r}; use {' or '.join(NORMS)}")
    limit = 1.0 if norm == "linf" else math.sqrt(math.prod(shape))
    if not 0 < eps <= limit:
        hint = "e.g. 8/255" if norm == "linf" else "e.g. 0.5"
        raise RobgenError(f"{norm} eps must be in (0, {limit:.4g}] for images in [0, 1] of shape {tuple(shape)}, got {eps}; {hint}")


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 20,
    norm: str = "linf",
    objective: str = "ce",
    targeted: bool = False,
    start: str | None = "uniform",
    clean_logits: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent of `objective`; with targeted=True, `y` holds the targets and the objective
    (CE to the target) is descended. The clean logits the KL objective needs are computed once, not per step."""
    if norm not in NORMS:
        raise RobgenError(f"unknown norm {norm!r}; use {' or '.join(NORMS)}")
    objective_fn = OBJECTIVES.get(objective)
    x = x.detach().float()
    # fp32 under any autocast: in bf16 the KL of the x + 0.001 N start is below the logits' resolution (its first
    # step's sign is noise), and fp16 input gradients underflow without loss scaling.
    with torch.autocast(x.device.type, enabled=False), input_gradients_only(model):
        if objective == "kl":
            clean_logits = _no_grad_logits(model, x) if clean_logits is None else clean_logits.float()
        sign = -1.0 if targeted else 1.0
        x_adv = random_start(x, eps, norm, start, generator)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = sign * objective_fn(model(x_adv).float(), y, clean_logits).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            step = grad.sign() if norm == "linf" else grad / per_sample_norm(grad)
            x_adv = project(x_adv.detach() + step_size * step, x, eps, norm)
    return x_adv.detach()


@contextlib.contextmanager
def input_gradients_only(model: nn.Module) -> Iterator[None]:
    """Parameters frozen while attacking: eager autograd.grad(loss, x) skips their gradients anyway, but a compiled
    model's backward graph (AOTAutograd) would compute every one of them at each step and throw them away."""
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _no_grad_logits(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).float()


@dataclass(frozen=True)
class AttackSpec:
    """A named attack configuration; CLI options override its fields with dataclasses.replace."""

    method: str  # pgd, fgsm, none, or a torchattacks name (apgd-ce, apgd-t, autoattack)
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 20
    norm: str = "linf"
    objective: str = "ce"
    targeted: bool = False
    start: str | None = "uniform"

    def __post_init__(self):
        if self.method == "none":
            return
        checks.number("--eps", self.eps, 0, open_low=True)
        checks.integer("--steps", self.steps)
        if self.method in ("pgd", "fgsm"):
            checks.number("--step-size", self.step_size, 0, open_low=True)

    def replace(self, **changes) -> "AttackSpec":
        """A copy with the given (non-None) fields changed; a field this method never reads is refused, so a report
        never lists a setting that changed nothing."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unread = [k for k in changes if k not in self.settings()]
        if unread:
            options = ", ".join(f"--{k.replace('_', '-')}" for k in unread)
            raise RobgenError(f"attack method {self.method!r} does not read {options}; drop it or choose an attack "
                              "that does")
        return dataclasses.replace(self, **changes)

    def in_norm(self, norm: str | None) -> "AttackSpec":
        """The same attack in another threat model: radius and step scaled by the ratio of the two norms' usual radii
        (NORM_EPS), so pgd20 in l2 is pgd20-l2. None or the attack's own norm: unchanged."""
        if norm is None or norm == self.norm or self.method == "none":
            return self
        if norm not in NORMS:
            raise RobgenError(f"unknown norm {norm!r}; use {' or '.join(NORMS)}")
        scale = NORM_EPS[norm] / NORM_EPS[self.norm]
        return dataclasses.replace(self, norm=norm, eps=self.eps * scale, step_size=self.step_size * scale)

    def settings(self) -> dict:
        """The fields that this method reads (reports do not list a step size AutoAttack never uses)."""
        if self.method == "none":
            used = ("method",)
        elif self.method in TORCHATTACKS_METHODS:
            used = ("method", "eps", "norm", "steps")
        else:
            return dataclasses.asdict(self)
        return {k: getattr(self, k) for k in used}


ATTACKS: Registry[AttackSpec] = Registry("attack")
ATTACKS.register("none")(AttackSpec("none", steps=0))
# FGSM with a uniform random start (Wong et al. 2020): one signed step of 1.25 eps, projected.
ATTACKS.register("fgsm")(AttackSpec("fgsm", step_size=1.25 * 8 / 255, steps=1))
for _steps in (10, 20, 50, 100):
    ATTACKS.register(f"pgd{_steps}")(AttackSpec("pgd", steps=_steps))
ATTACKS.register("pgd")(AttackSpec("pgd"))
# L2 presets at RobustBench's CIFAR radius 0.5, step eps/4 like the Linf ones.
ATTACKS.register("pgd-l2")(AttackSpec("pgd", eps=0.5, step_size=0.125, norm="l2"))
for _steps in (10, 20, 50, 100):
    ATTACKS.register(f"pgd{_steps}-l2")(AttackSpec("pgd", eps=0.5, step_size=0.125, steps=_steps, norm="l2"))
ATTACKS.register("pgd-targeted-l2")(AttackSpec("pgd", eps=0.5, step_size=0.125, norm="l2", targeted=True))
ATTACKS.register("pgd-targeted")(AttackSpec("pgd", targeted=True))
ATTACKS.register("trades")(AttackSpec("pgd", step_size=0.007, steps=10, objective="kl", start="normal"))
ATTACKS.register("apgd-ce")(AttackSpec("apgd-ce", steps=100))
ATTACKS.register("apgd-t")(AttackSpec("apgd-t", steps=100))
# The reference AutoAttack's standard version: 100 iterations for APGD-CE, APGD-T and FAB-T, Square with 5000 queries.
ATTACKS.register("autoattack")(AttackSpec("autoattack", steps=100))
TORCHATTACKS_METHODS = ("apgd-ce", "apgd-t", "autoattack")


def random_targets(y: Tensor, num_classes: int, generator: torch.Generator | None) -> Tensor:
    """A uniformly drawn wrong class for each label."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator, device=_on(generator)).to(y.device)
    return (y + shift) % num_classes


def unavailable(spec: AttackSpec, num_classes: int) -> str | None:
    """Why `spec` cannot run on a `num_classes`-way model here, or None when it can."""
    if spec.method not in TORCHATTACKS_METHODS:
        return None
    # APGD-T's targeted DLR loss reads the 4th-largest logit (AutoAttack's standard set includes APGD-T).
    if spec.method in ("apgd-t", "autoattack") and num_classes < 4:
        return f"attack {spec.method!r} needs at least 4 classes (its DLR loss), the model has {num_classes}"
    if spec.method == "autoattack" and reference_autoattack() is not None:
        return None
    if importlib.util.find_spec("torchattacks") is None:
        return f"attack {spec.method!r} needs the torchattacks package: pip install 'robgen[attacks]'"
    return None


def _torchattacks(spec: AttackSpec, model: nn.Module, num_classes: int, seed: int):
    reason = unavailable(spec, num_classes)
    if reason:
        raise RobgenError(reason)
    import torchattacks

    common = dict(norm="Linf" if spec.norm == "linf" else "L2", eps=spec.eps, seed=seed)
    apgd_ce = torchattacks.APGD(model, steps=spec.steps, loss="ce", **common)
    apgd_t = torchattacks.APGDT(model, steps=spec.steps, n_classes=num_classes, **common)
    if spec.method != "autoattack":
        return apgd_ce if spec.method == "apgd-ce" else apgd_t
    # torchattacks.AutoAttack(version="standard") runs its parts with 10 iterations, not the reference's 100, so the
    # same four attacks are chained here with the spec's steps; MultiAttack attacks only the points still robust.
    fab_t = torchattacks.FAB(model, steps=spec.steps, multi_targeted=True, n_classes=num_classes, **common)
    return torchattacks.MultiAttack([apgd_ce, apgd_t, fab_t, torchattacks.Square(model, n_queries=5000, **common)])


# The reference AutoAttack (Croce & Hein 2020) under its two install names: PyPI's `pyautoattack` and
# `pip install git+https://github.com/fra31/auto-attack` (import name `autoattack`, the API RobustBench calls).
REFERENCE_AUTOATTACK = ("pyautoattack", "autoattack")
# Set to "torchattacks" to run the fallback chain although the reference is installed (to compare the two engines).
ENGINE_VARIABLE = "ROBGEN_AUTOATTACK_ENGINE"


def _torchattacks_chosen() -> bool:
    """Whether $ROBGEN_AUTOATTACK_ENGINE asks for the torchattacks chain (checked: reference or torchattacks)."""
    engine = os.environ.get(ENGINE_VARIABLE, "")
    if engine not in ("", "reference", "torchattacks"):
        raise RobgenError(f"${ENGINE_VARIABLE}={engine!r}: use reference or torchattacks")
    return engine == "torchattacks"


def reference_autoattack() -> tuple[str, str] | None:
    """(import name, version) of the installed reference AutoAttack, or None (also when $ROBGEN_AUTOATTACK_ENGINE
    chooses the torchattacks chain)."""
    if _torchattacks_chosen():
        return None
    for name in REFERENCE_AUTOATTACK:
        if name in sys.modules or importlib.util.find_spec(name) is not None:
            try:
                version = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
            return name, version
    return None


def attack_engine(spec: AttackSpec) -> dict:
    """Which code runs `spec`, for reports: robgen's own, the reference AutoAttack, or torchattacks."""
    if spec.method not in TORCHATTACKS_METHODS:
        return {"engine": "robgen"}
    reference = reference_autoattack()
    if spec.method == "autoattack" and reference is not None:
        iterations = "" if spec.steps == 100 else f", {spec.steps} iterations instead of 100"
        return {"engine": f"{reference[0]} {reference[1]}", "version": f"standard{iterations}",
                "note": "the reference AutoAttack (Croce & Hein 2020)"}
    version = importlib.metadata.version("torchattacks") if importlib.util.find_spec("torchattacks") else "missing"
    result = {"engine": f"torchattacks {version}"}
    if spec.method == "autoattack":
        result["version"] = f"standard chain (APGD-CE, APGD-T, FAB-T at {spec.steps} iterations, Square 5000 queries)"
        result["note"] = (f"chosen by ${ENGINE_VARIABLE}=torchattacks, instead of the reference AutoAttack"
                          if _torchattacks_chosen() else
                          "fallback: the reference AutoAttack is not installed "
                          "(pip install 'robgen[autoattack]' for the number RobustBench reports)")
    return result


def _reference_autoattack(spec: AttackSpec, model: nn.Module, x: Tensor, y: Tensor, num_classes: int,
                          seed: int) -> Tensor:
    """The reference implementation's standard version with `seed`: APGD-CE, APGD-T, FAB-T, Square, each on the
    points still robust. A model with fewer than 10 classes gets num_classes - 1 target classes instead of 9."""
    name, _ = reference_autoattack()
    module = importlib.import_module(name)
    norm = "Linf" if spec.norm == "linf" else "L2"
    if module.__name__ == "pyautoattack":  # keyword-only API, logs through `logging` instead of printing
        adversary = module.AutoAttack(model, norm=norm, eps=spec.eps, version="standard", seed=seed, device=x.device)
    else:
        adversary = module.AutoAttack(model, norm=norm, eps=spec.eps, version="standard", seed=seed, verbose=False,
                                      device=x.device)
    adversary.verbose = False
    targets = min(9, num_classes - 1)
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = targets
    for part in (adversary.apgd, adversary.apgd_targeted, adversary.fab):
        part.n_iter = spec.steps
    with torch.autocast(x.device.type, enabled=False):
        if module.__name__ == "pyautoattack":
            x_adv, _ = adversary.run_standard_evaluation(x.detach().float(), y, batch_size=len(x))
        else:
            x_adv = adversary.run_standard_evaluation(x.detach().float(), y, bs=len(x))
    return x_adv.detach()


def run_attack(
    spec: AttackSpec | str,
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    num_classes: int,
    generator: torch.Generator | None = None,
    clean_logits: Tensor | None = None,
) -> Tensor:
    """Adversarial examples for (x, y) under a named or explicit attack."""
    spec = ATTACKS.get(spec) if isinstance(spec, str) else spec
    if spec.method != "none":
        check_radius(spec.eps, spec.norm, x.shape[1:])
    if spec.method == "none":
        return x.detach()
    if spec.method in TORCHATTACKS_METHODS:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=_on(generator)))
        if spec.method == "autoattack" and reference_autoattack() is not None:
            return _reference_autoattack(spec, model, x, y, num_classes, seed)
        return _torchattacks(spec, model, num_classes, seed)(x, y).detach()
    if spec.method not in ("pgd", "fgsm"):
        raise RobgenError(f"unknown attack method {spec.method!r}")
    target = random_targets(y, num_classes, generator) if spec.targeted else y
    return pgd(
        model, x, target, eps=spec.eps, step_size=spec.step_size, steps=spec.steps, norm=spec.norm,
        objective=spec.objective, targeted=spec.targeted, start=spec.start, clean_logits=clean_logits,
        generator=generator,
    )
