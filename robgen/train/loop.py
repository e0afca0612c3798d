"""The training loop: recipes, per-epoch energy telemetry, atomic checkpoints, exact resume, DDP.

A run folder holds config.json (the recipe), metrics.jsonl (one JSON object per epoch), last.safetensors and
best.safetensors (robgen classifiers; best by PGD-20 accuracy, or clean accuracy for standard training, on a
validation split held out of the TRAINING set, never on test images) and state.pt (optimizer, scheduler, scaler, weights). state.pt is written last each epoch: it is the commit point a resumed run continues from.
Randomness (data order, augmentation, attack starts) is drawn from generators re-seeded from (seed, epoch, rank) at
every epoch start, so resuming at an epoch boundary gives bit-identical results on CPU for any number of ranks.
"""
from __future__ import annotations

import contextlib
import json
import math
import pickle
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data._utils.worker import _generate_state  # how torch seeds NumPy in a new worker
from tqdm import tqdm

from .. import checks, distributed, energy
from ..attacks import NORM_EPS, AttackSpec, check_radius
from ..data import portable_name, train_val_split
from ..errors import RobgenError
from ..config import with_options
from ..evaluate import EVAL, collect_energies, summarize
from ..models import Classifier, ModelMeta, build_classifier
from ..models.checkpoint import save_classifier
from ..registry import Registry
from ..run_folder import FILES, metrics_lines, read_config, write_config, write_metrics
from ..seeds import epoch_seed
from ..utils import atomic_path, precision
from .losses import LOSSES, Loss, adversarial, batch_loss

@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; the defaults are the paper's for CIFAR-10 (PAPER.md section 3), RECIPES are presets over
    them. The single source of make_config's and `robgen train`'s defaults, and (check) of their validation. Every
    field is part of a run's identity: --resume refuses a folder whose config.json differs in any of them."""

    data: str = "cifar10"
    arch: str = "resnet18"
    loss: str = "weat-adv"
    epochs: int = 100
    batch_size: int = 128  # global: split evenly over DDP ranks
    lr: float = 0.1  # peak lr of the schedule
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # stepped per batch
    pct_start: float = 0.25  # onecycle warm-up fraction
    norm: str = "linf"  # threat model of the training and validation attacks: linf | l2
    eps: float | None = None  # attack radius; None: NORM_EPS[norm]
    step_size: float | None = None  # training attack step; None: eps x the recipe's step_fraction
    attack_steps: int = 10
    beta: float = 6.0  # weight of the KL term (trades, weat-*, mart)
    val_attack_steps: int = 20  # PGD-20 on the validation split every epoch, step eps/4, uniform start
    max_train: int | None = None  # None: every training image outside the validation split; N: the first N of them
    val_n: int = 1000  # validation images held out of the training set (seeded by val_seed), never trained on
    val_seed: int = 0  # the same split for every run seed, so runs are compared on the same images
    select_from: int = 1  # best.safetensors: the best validation accuracy (selection_key) from this epoch on
    seed: int = 0
    amp: str = "bf16"  # CUDA only: bf16 | fp16 | off (CPU always runs fp32)

    @classmethod
    def of(cls, config: dict) -> TrainConfig:
        """The recipe's fields of a config dict (make_config's result, or a saved config.json)."""
        return cls(**{k: config[k] for k in IDENTITY if k in config})

    def check(self) -> None:
        """A one-line RobgenError for the first bad setting (L2 radii are checked once the image size is known)."""
        LOSSES.get(self.loss)
        SCHEDULES.get(self.schedule)
        if self.norm not in NORM_EPS:
            raise RobgenError(f"unknown norm {self.norm!r}; use {' or '.join(NORM_EPS)}")
        if self.norm == "linf":
            check_radius(self.eps, "linf", ())
        if not 0 < self.step_size <= self.eps * 2.5:
            raise RobgenError(f"step-size must be in (0, 2.5 eps] = (0, {self.eps * 2.5:.4g}], got {self.step_size}")
        for key in ("epochs", "batch_size", "attack_steps", "val_attack_steps", "val_n", "select_from"):
            if int(getattr(self, key)) < 1:
                raise RobgenError(f"{key.replace('_', '-')} must be at least 1, got {getattr(self, key)}")
        if self.max_train is not None and self.max_train < 1:
            raise RobgenError(f"max-train must be at least 1, got {self.max_train}")
        if self.lr <= 0 or self.beta < 0:
            raise RobgenError(f"lr must be positive and beta non-negative, got lr {self.lr}, beta {self.beta}")
        checks.seed(self.seed)
        if self.amp not in ("bf16", "fp16", "off"):
            raise RobgenError(f"unknown amp mode {self.amp!r}; use bf16, fp16 or off")


IDENTITY = tuple(f.name for f in fields(TrainConfig))


@dataclass(frozen=True)
class Recipe:
    """A preset over TrainConfig's defaults."""

    about: str  # for --help
    # Training attack step / eps, used when --step-size is not given (config.json holds the resolved step_size).
    step_fraction: float
    changes: Mapping[str, Any] = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {
    "paper": Recipe("PAPER.md section 3", 0.25),  # 10 steps of 2/255 in 8/255
    # Quick runs on a 2-core CPU (about 40 min): a small CNN on 10,000 images.
    "cpu": Recipe("cnn-small, 3 attack steps, 10k images", 0.5,
                  {"arch": "cnn-small", "epochs": 10, "attack_steps": 3, "max_train": 10000, "val_n": 500}),
    # The strongest model these CPUs make in hours: all 49,000 non-validation images, a 2.0M-parameter airbench-style
    # net, 2 attack steps of eps/2 (they reach the ball's boundary; one step risks catastrophic overfitting), a
    # short OneCycle with a higher peak (Wong et al. 2020's fast AT), best from the second half on.
    "fast": Recipe("airnet, 2 attack steps, 10 epochs on all images", 0.5,
                   {"arch": "airnet", "epochs": 10, "attack_steps": 2, "lr": 0.2, "select_from": 5}),
}
DEFAULT_RECIPE = "paper"  # a new run with no --recipe


@dataclass(frozen=True)
class TrainCall:
    """How one train() call runs, apart from what it trains: the defaults of train()'s and `robgen train`'s."""

    device: str = "auto"
    workers: int = 2  # data loader processes, kept across epochs


# The keys of metrics.jsonl that `robgen phases` reads (one object per line, one line per epoch).
METRIC_KEYS = (
    "epoch", "lr", "train_loss", "train_E_clean", "train_E_adv", "train_Ey_clean", "train_Ey_adv", "train_dE",
    "train_dEy", "weight_mean", "weight_std", "weight_min", "weight_max", "val_clean_acc", "val_robust_acc",
    "epoch_seconds", "images_per_s", "loss",
)

SCHEDULES: Registry[Callable[[torch.optim.Optimizer, dict, int], Any]] = Registry("schedule")


@SCHEDULES.register("onecycle")
def onecycle(optimizer: torch.optim.Optimizer, config: dict, total_steps: int):
    # torch divides by zero when the warm-up is exactly one step (pct_start x total_steps = 1): give it two.
    pct_start = max(config["pct_start"], min(1.5 / total_steps, 0.75))
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, config["lr"], total_steps=total_steps, pct_start=pct_start)


@SCHEDULES.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, config: dict, total_steps: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)


@SCHEDULES.register("step")
def step(optimizer: torch.optim.Optimizer, config: dict, total_steps: int):
    """lr / 10 at half and again at three quarters of the run."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, [total_steps // 2, total_steps * 3 // 4], 0.1)


def make_config(recipe: str | None = None, base: dict | None = None, **overrides: Any) -> dict:
    """A validated recipe as a dict: `base` (a saved config.json) or TrainConfig + RECIPES[recipe], then the
    non-None overrides (TrainConfig's fields); eps and step_size left None are resolved from the norm and recipe."""
    if recipe is not None and recipe not in RECIPES:
        raise RobgenError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    if base is not None and recipe is None:
        start = with_options(TrainConfig, {k: base[k] for k in IDENTITY if k in base}, "training")
        config = with_options(TrainConfig, overrides, "training", start, skip_none=True)
        named = base.get("recipe")
    else:
        named = recipe or DEFAULT_RECIPE
        preset = RECIPES[named]
        config = with_options(TrainConfig, overrides, "training", TrainConfig(**preset.changes), skip_none=True)
        if config.norm in NORM_EPS:
            eps = config.eps if config.eps is not None else NORM_EPS[config.norm]
            config = replace(config, eps=eps,
                             step_size=config.step_size if config.step_size is not None else eps * preset.step_fraction)
    config.check()
    return {**asdict(config), **({"recipe": named} if named is not None else {})}


def recipe_defaults(name: str) -> dict[str, Any]:
    """What TrainConfig field `name` resolves to under each recipe when left unset (for --help)."""
    return {r: make_config(r)[name] for r in RECIPES}


def recorded_recipe(config: dict, device: torch.device) -> dict:
    """The recipe as checkpoint metadata records it: no machine paths (a folder dataset keeps only its folder's
    name; config.json in the run folder keeps the full path for --resume) and what actually ran: the device type
    and the precision of the training forward passes (autocast is CUDA only; attacks always run in fp32)."""
    recipe = {**config, "data": portable_name(config["data"])}
    recipe["device"] = device.type
    recipe["precision"] = config["amp"] if device.type == "cuda" and config["amp"] != "off" else "fp32"
    return recipe


def _check_same_recipe(saved: dict, config: dict, out: Path) -> None:
    for key in ("recipe", *IDENTITY):
        if saved.get(key) != config.get(key):
            raise RobgenError(
                f"--resume: {out} holds a run with {key}={saved.get(key)!r}, not {config.get(key)!r}; "
                f"resume with the same recipe or train into another --out"
            )


# Batches between the host's checks for a non-finite loss (each check waits for the device).
CHECK_EVERY = 50


def worker_base_seed(seed: int) -> int:
    """The base seed a DataLoader started afresh with a generator seeded `seed` gives its workers."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(seed)).item())


class _EpochIndices(torch.utils.data.Sampler):
    """The sampler's indices, each paired with this epoch's worker base seed."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler, self.base_seed = sampler, 0

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        return ((self.base_seed, index) for index in self.sampler)


class _Seeded(torch.utils.data.Dataset):
    """Items fetched by (base seed, index). A persistent worker re-seeds itself at its first item of each epoch as a
    worker started afresh that epoch would (torch's worker seeding), so it augments the same images the same way as
    when loaders were rebuilt every epoch: kept workers change no bytes, and resume stays exact."""

    def __init__(self, data):
        self.data, self.base_seed = data, None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item):
        base_seed, index = item
        info = torch.utils.data.get_worker_info()
        if info is not None and base_seed != self.base_seed:
            self.base_seed = base_seed
            random.seed(base_seed + info.id)
            torch.manual_seed(base_seed + info.id)
            np.random.seed(_generate_state(base_seed, info.id))
        return self.data[index]


def _check_finite(bad: Tensor, bad_value: Tensor, world: int, epoch: int, out: Path) -> None:
    """Stop every rank when one has seen a non-finite loss (bad: its first such batch, 0 for none)."""
    never = torch.iinfo(torch.int64).max
    first = torch.where(bad > 0, bad, never)
    if world > 1:
        dist.all_reduce(first, dist.ReduceOp.MIN)
    batch = int(first.item())
    if batch == never:
        return
    value = bad_value.item() if int(bad.item()) == batch else "non-finite on another rank"
    kept = f"the last good checkpoint (epoch {epoch - 1}) is kept in {out}" if epoch > 1 else "no checkpoint was written"
    raise RobgenError(f"loss became {value} at epoch {epoch}, batch {batch}; stopped, {kept}; lower --lr or check the data")


def _load_scaler(scaler: torch.amp.GradScaler, saved: dict, log: Callable[[str], None]) -> None:
    """A run that had no fp16 scaler (on CPU, or bf16) saved an empty state: an fp16 CUDA resume starts a fresh one."""
    if scaler.is_enabled() and not saved:
        log("state.pt holds no fp16 loss-scaler state (the run so far computed without one): starting a fresh scale")
        return
    scaler.load_state_dict(saved)


def train_step(
    model: Classifier,
    outer: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: Loss,
    x: Tensor,
    y: Tensor,
    config: dict,
    *,
    generator: torch.Generator | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast: contextlib.AbstractContextManager | None = None,
) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
    """One adversarial training step: attack (eval mode), outer loss (train mode via `outer`, e.g. the DDP
    wrapper), update. Returns (loss, weights or None, eval-mode clean logits, eval-mode adversarial logits)."""
    with autocast or contextlib.nullcontext():
        x_adv, clean = adversarial(
            model, x, y, loss, eps=config["eps"], step_size=config["step_size"], steps=config["attack_steps"],
            norm=config["norm"], generator=generator,
        )
        with torch.no_grad():  # telemetry: E(x*) under the same (eval-mode) model as E(x)
            adv = clean if x_adv is x else model(x_adv)
        value, weights = batch_loss(loss, outer, x, x_adv, y, config["beta"])
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        value.backward()
        optimizer.step()
    return value.detach(), weights, clean.float(), adv.float()


def _prepare_out(out: Path, config: dict, resume: bool, overwrite: bool, writer: bool) -> dict | None:
    """Refuse to clobber a run; returns the saved state to resume from (None: start at epoch 1)."""
    present = [name for name in FILES if (out / name).exists()]
    # Only rank 0 judges: the other ranks may look after it has already written this run's config.json.
    if present and not resume and not overwrite and writer:
        raise RobgenError(
            f"{out} already holds a run ({', '.join(present)}); pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    if resume and (saved := read_config(out)) is not None:
        _check_same_recipe(saved, config, out)
        if (out / "state.pt").is_file():
            try:
                return torch.load(out / "state.pt", map_location="cpu", weights_only=True)
            except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
                raise RobgenError(f"{out / 'state.pt'} is damaged ({str(err).splitlines()[0]}); "
                                  "--overwrite to start again, or choose another --out") from None
    elif overwrite and writer:
        for name in present:
            (out / name).unlink()
    return None


@dataclass
class EpochSums:
    """One epoch's training telemetry summed over its batches: float64 sums kept on the device (adding a batch never
    waits for it), and the extremes of the loss's per-example weights."""

    images: Tensor
    loss: Tensor  # of batch loss x batch size
    E_clean: Tensor  # E(x) = -logsumexp of the eval-mode logits, clean and adversarial
    E_adv: Tensor
    Ey_clean: Tensor  # E(x, y) = -logit of the label
    Ey_adv: Tensor
    weight: Tensor  # of the outer loss's weights (weat-*), and of their squares
    weight_sq: Tensor
    weight_min: Tensor
    weight_max: Tensor
    weighted: bool = False  # whether the loss weights its examples

    SUMS: ClassVar[tuple[str, ...]] = ("images", "loss", "E_clean", "E_adv", "Ey_clean", "Ey_adv", "weight", "weight_sq")

    @classmethod
    def zeros(cls, dev: torch.device) -> EpochSums:
        sums = {k: torch.zeros((), device=dev, dtype=torch.float64) for k in cls.SUMS}
        return cls(**sums, weight_min=torch.full((), math.inf, device=dev), weight_max=torch.full((), -math.inf, device=dev))

    def add(self, value: Tensor, weights: Tensor | None, clean: Tensor, adv: Tensor, y: Tensor) -> None:
        """One batch: its loss, the clean and adversarial logits and the loss's weights (None: unweighted)."""
        e_c, e_a = energy.marginal_energy(clean), energy.marginal_energy(adv)
        ey_c, ey_a = energy.joint_energy(clean, y), energy.joint_energy(adv, y)
        w = weights.detach().float() if weights is not None else torch.zeros_like(e_c)
        self.weighted = weights is not None
        batch = torch.stack([
            torch.full((), float(len(y)), device=w.device), value.float() * len(y), e_c.sum(), e_a.sum(), ey_c.sum(),
            ey_a.sum(), w.sum(), (w * w).sum(),
        ]).double()
        for key, part in zip(self.SUMS, batch):
            setattr(self, key, getattr(self, key) + part)
        self.weight_min, self.weight_max = torch.minimum(self.weight_min, w.min()), torch.maximum(self.weight_max, w.max())

    def all_reduce(self) -> None:
        """Sums and extremes over every rank (the sums in one collective)."""
        sums = torch.stack([getattr(self, k) for k in self.SUMS])
        dist.all_reduce(sums)
        for key, total in zip(self.SUMS, sums):
            setattr(self, key, total)
        dist.all_reduce(self.weight_min, dist.ReduceOp.MIN)
        dist.all_reduce(self.weight_max, dist.ReduceOp.MAX)

    def metrics(self) -> dict[str, float | None]:
        """The per-image means metrics.jsonl records (weights: None when the loss has none)."""
        n = self.images.item()
        mean = {k: (getattr(self, k) / n).item() for k in self.SUMS}
        w, w2, weighted = mean["weight"], mean["weight_sq"], self.weighted
        return {
            "train_loss": mean["loss"],
            "train_E_clean": mean["E_clean"],
            "train_E_adv": mean["E_adv"],
            "train_Ey_clean": mean["Ey_clean"],
            "train_Ey_adv": mean["Ey_adv"],
            "train_dE": mean["E_clean"] - mean["E_adv"],  # of the means: energy.delta_* take logits
            "train_dEy": mean["Ey_clean"] - mean["Ey_adv"],
            "weight_mean": w if weighted else None,
            "weight_std": math.sqrt(max(w2 - w * w, 0.0)) if weighted else None,
            "weight_min": self.weight_min.item() if weighted else None,
            "weight_max": self.weight_max.item() if weighted else None,
            "train_images": int(n),
        }


@dataclass
class _NonFinite:
    """The epoch's first non-finite loss (batch index, 0 for none, and its value), kept on the device: the host looks
    every CHECK_EVERY batches and at the epoch's end instead of waiting for the device after each step."""

    batch: Tensor
    value: Tensor

    @classmethod
    def zeros(cls, dev: torch.device) -> _NonFinite:
        return cls(torch.zeros((), dtype=torch.int64, device=dev), torch.zeros((), device=dev))

    def note(self, i: int, value: Tensor) -> None:
        first = (self.batch == 0) & ~torch.isfinite(value)
        self.batch = torch.where(first, i, self.batch)
        self.value = torch.where(first, value.float(), self.value)


def _format_epoch(m: dict, epochs: int) -> str:
    line = (
        f"epoch {m['epoch']}/{epochs}  loss {m['train_loss']:.4f}  val clean {m['val_clean_acc']:.2f}%  "
        f"PGD-{m['val_attack_steps']} {m['val_robust_acc']:.2f}%  E(x) {m['train_E_clean']:.3f}/{m['train_E_adv']:.3f}  "
        f"dE(x) {m['train_dE']:+.4f}  dE(x,y) {m['train_dEy']:+.4f}"
    )
    if m["weight_mean"] is not None:
        line += f"  w {m['weight_mean']:.3f}+-{m['weight_std']:.3f} [{m['weight_min']:.3f}, {m['weight_max']:.3f}]"
    return line + f"  lr {m['lr']:.4g}  {m['epoch_seconds']:.1f} s  {m['images_per_s']:.0f} img/s"


def train(
    config: dict,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = TrainCall.device,
    workers: int = TrainCall.workers,
    compile: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train a robust classifier with `config` (see make_config) into the run folder `out`.

    resume continues the run in `out` from its last completed epoch; stop_after ends this call after that many
    epochs (resume later). Under torchrun the same call trains with DistributedDataParallel; only rank 0 writes.
    Returns the last epoch's metrics, the best epoch and the checkpoint paths.
    """
    TrainConfig.of(config).check()
    if stop_after is not None and stop_after < 1:
        raise RobgenError(f"stop-after must be at least 1 epoch, got {stop_after}")
    checks.integer("--workers", workers, 0)
    out = Path(out)
    if resume and read_config(out) is None:  # else the run would start afresh from whatever recipe was passed
        raise RobgenError(f"--resume: {out} holds no run to resume (no config.json); drop --resume to start one")
    rank, world, dev = distributed.setup(device)
    session = _Session(rank, world, dev, workers, compile, progress, log if rank == 0 else lambda line: None)
    benchmark = torch.backends.cudnn.benchmark
    # Every step has the same shapes: let cuDNN time its algorithms once (CUDA training is not bitwise repeatable
    # anyway: cuDNN's weight gradients add in a varying order).
    torch.backends.cudnn.benchmark = benchmark or dev.type == "cuda"
    try:
        result = _train(config, out, session, resume=resume, overwrite=overwrite, stop_after=stop_after)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    # An error propagates without the final barrier (see robgen.distributed): torchrun then ends the other ranks.
    distributed.teardown()
    return result


@dataclass(frozen=True)
class _Session:
    """How this call trains (what it trains is the config): its process, device, loader workers and reporting."""

    rank: int
    world: int
    dev: torch.device
    workers: int
    compile: bool
    progress: bool
    log: Callable[[str], None]  # a no-op on ranks other than 0

    @property
    def writer(self) -> bool:  # only rank 0 writes the run folder and reports
        return self.rank == 0

    @property
    def cuda(self) -> bool:
        return self.dev.type == "cuda"


@dataclass
class _Run:
    """What _build makes from the recipe, and every later stage reads."""

    config: dict
    out: Path
    session: _Session
    loss: Loss
    spec: Any
    train_data: Any
    val_data: Any
    model: Classifier
    fast: nn.Module  # the model the attacks and telemetry run (compiled with --compile on CUDA)
    outer: nn.Module  # the model the outer loss runs (DDP over several ranks)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    autocast: contextlib.AbstractContextManager
    sampler: DistributedSampler
    indices: _EpochIndices
    loader: DataLoader

    @property
    def steps_per_epoch(self) -> int:
        return len(self.loader)


def selection_key(config: dict) -> str:
    """The validation accuracy best.safetensors is chosen by: PGD accuracy for the adversarial losses, clean accuracy
    for standard training (its PGD accuracy is near 0 at every epoch, so choosing by it picks noise)."""
    return "val_clean_acc" if config["loss"] == "standard" else "val_robust_acc"


@dataclass
class _Progress:
    """Where the run stands: the first epoch this call trains, the best epoch so far and metrics.jsonl's lines."""

    start: int = 1
    best: dict = field(default_factory=lambda: {"epoch": 0, "value": -1.0})  # value: of selection_key
    history: list[str] = field(default_factory=list)
    last: dict | None = None  # the latest committed epoch's metrics


def _train(config: dict, out: Path, session: _Session, *, resume: bool, overwrite: bool, stop_after: int | None) -> dict:
    train_data, val_data, spec = _load_data(config, session.world)
    state = _prepare_out(out, config, resume, overwrite, session.writer)
    run = _build(config, out, session, train_data, val_data, spec)
    done = _restore(run, state)
    if session.writer:
        _write_config(run, resumed=state is not None, start=done.start)
    _log_start(run, resumed=state is not None, start=done.start)
    end = config["epochs"] if stop_after is None else min(config["epochs"], done.start - 1 + stop_after)
    for epoch in range(done.start, end + 1):
        sums, lr, seconds = _train_epoch(run, epoch)
        if session.writer:
            _evaluate_and_commit(run, done, epoch, sums, lr, seconds)
    if done.start > end:
        session.log(f"{out} has already run {done.start - 1} of {config['epochs']} epochs: nothing to do")
    return {
        "out": str(out), "rank": session.rank, "epochs_done": done.last["epoch"] if done.last else end,
        "epochs": config["epochs"], "last": done.last, "best": done.best,
        "checkpoints": {"last": str(out / "last.safetensors"), "best": str(out / "best.safetensors")},
        "config": config,
    }


def _load_data(config: dict, world: int):
    """(training set, validation split, dataset spec), with the recipe checked against them."""
    if config["batch_size"] % world:
        raise RobgenError(f"batch size {config['batch_size']} does not split over {world} processes; use a multiple of {world}")
    train_data, val_data, spec = train_val_split(
        config["data"], config["val_n"], seed=config["val_seed"], max_train=config["max_train"]
    )
    check_radius(config["eps"], config["norm"], spec.input_shape)
    if config["select_from"] > config["epochs"]:
        raise RobgenError(f"select-from {config['select_from']} is past the last epoch ({config['epochs']})")
    if config["batch_size"] > len(train_data):
        raise RobgenError(
            f"batch size {config['batch_size']} is larger than the training set ({len(train_data)} images); "
            "lower --batch-size or raise --max-train"
        )
    return train_data, val_data, spec


def _build(config: dict, out: Path, session: _Session, train_data, val_data, spec) -> _Run:
    """The model (initialised from the run's seed), its optimiser, schedule, precision and the one data loader."""
    dev, cuda, world = session.dev, session.cuda, session.world
    torch.manual_seed(config["seed"])
    meta = ModelMeta(
        arch=config["arch"], num_classes=spec.num_classes, input_shape=spec.input_shape, mean=spec.mean, std=spec.std,
        class_names=spec.class_names or [], dataset=spec.name, recipe=recorded_recipe(config, dev),
    )
    # channels_last on CPU too: 1.15x faster for airnet on one thread (and what cuDNN prefers).
    model = build_classifier(meta).to(dev).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config["lr"], momentum=config["momentum"], weight_decay=config["weight_decay"]
    )
    sampler = DistributedSampler(train_data, num_replicas=world, rank=session.rank, shuffle=True, seed=config["seed"])
    per_rank = config["batch_size"] // world
    scheduler = SCHEDULES.get(config["schedule"])(optimizer, config, config["epochs"] * (len(sampler) // per_rank))
    # fp16: the scaler guards the outer loss's parameter gradients; the inner attacks need none, since they run in
    # fp32 with autocast off (robgen.attacks.pgd), so their input gradients cannot underflow.
    scaler = torch.amp.GradScaler("cuda", enabled=cuda and config["amp"] == "fp16")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16 if config["amp"] == "bf16" else torch.float16,
                              enabled=cuda and config["amp"] != "off")
    fast = torch.compile(model) if session.compile and cuda else model
    # broadcast_buffers=False: the outer losses with a clean and an adversarial forward before one backward (weat-*,
    # trades, mart) crash at that backward on torch < 2.12 ("modified by an inplace operation", pytorch#175024): DDP
    # copies rank 0's BatchNorm buffers in place at each forward, over the running stats the first forward saved.
    # Each rank updates its own running stats instead; they are made rank 0's again at every epoch end.
    # BatchNorm is per rank (no SyncBatchNorm): it normalises batch_size / world images per step.
    outer = DistributedDataParallel(model, device_ids=[dev] if cuda else None, broadcast_buffers=False) if world > 1 else model
    outer = torch.compile(outer) if session.compile and cuda else outer
    # One loader for the whole run: its workers persist across epochs and re-seed themselves per epoch (_Seeded).
    indices = _EpochIndices(sampler)
    loader = DataLoader(
        _Seeded(train_data), batch_size=per_rank, sampler=indices, num_workers=session.workers, drop_last=True,
        generator=torch.Generator(), pin_memory=cuda, persistent_workers=session.workers > 0,
    )
    return _Run(config, out, session, LOSSES.get(config["loss"]), spec, train_data, val_data, model, fast, outer,
                optimizer, scheduler, scaler, autocast, sampler, indices, loader)


def _restore(run: _Run, state: dict | None) -> _Progress:
    """Load state.pt's weights, optimiser, schedule and scaler; metrics.jsonl's lines up to its epoch."""
    if state is None:
        return _Progress()
    run.model.net.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    _load_scaler(run.scaler, state["scaler"], run.session.log)
    # Lines past the committed epoch come from an epoch that was killed before state.pt was written.
    history = [ln for ln in metrics_lines(run.out) if ln.strip() and json.loads(ln)["epoch"] <= state["epoch"]]
    # state.pt written before session 6 named the value best_robust_acc (every loss was chosen by PGD accuracy then).
    best = {"epoch": state["best_epoch"], "value": state.get("best_value", state.get("best_robust_acc"))}
    return _Progress(state["epoch"] + 1, best, history, json.loads(history[-1]) if history else None)


def _write_config(run: _Run, *, resumed: bool, start: int) -> None:
    """config.json: the recipe, and how each session computed. "precision" is metadata, not identity (make_config and
    --resume read only the recipe's keys): one entry per session that computed differently, e.g. a CPU run resumed
    on a GPU."""
    config, out, cuda = run.config, run.out, run.session.cuda
    use_amp = cuda and config["amp"] != "off"
    session = {**precision(run.session.dev, config["amp"] if use_amp else "off"), "attacks": "fp32 (autocast off)",
               "cudnn_benchmark": cuda}
    out.mkdir(parents=True, exist_ok=True)
    saved = (read_config(out) or {}).get("precision") or [] if resumed else []
    sessions = [p for p in saved if p["from_epoch"] < start]
    if not sessions or {k: v for k, v in sessions[-1].items() if k != "from_epoch"} != session:
        sessions.append({"from_epoch": start, **session})
    write_config(out, {**config, "precision": sessions})


def _log_start(run: _Run, *, resumed: bool, start: int) -> None:
    c, world = run.config, run.session.world
    what = f"resuming at epoch {start}" if resumed else "starting"
    run.session.log(
        f"{what}: {c['loss']} on {run.spec.name} ({len(run.train_data)} train / {len(run.val_data)} validation images), "
        f"{c['arch']}, recipe {c['recipe']}: {c['epochs']} epochs x {run.steps_per_epoch} steps of "
        f"{c['batch_size']}, lr {c['lr']} {c['schedule']}, attack {c['attack_steps']} x "
        f"{c['step_size']:.4f} in {c['norm']} eps {c['eps']:.4f}, beta {c['beta']}; {run.session.dev}"
        + (f" x {world} processes (BatchNorm per rank: {c['batch_size'] // world} images)" if world > 1 else "")
        + f" -> {run.out}"
    )


def _train_epoch(run: _Run, epoch: int) -> tuple[EpochSums, float, float]:
    """Train one epoch with every generator seeded from (seed, epoch, rank). Returns its sums over every rank, the
    learning rate it began with and its seconds."""
    config, s = run.config, run.session
    seed = epoch_seed(config["seed"], epoch, s.rank)
    torch.manual_seed(seed)  # augmentation in the main process (workers=0)
    # Attack starts: a CPU generator on CPU (the bytes of every CPU run), a CUDA one on CUDA (no host draw and
    # copy per step; the same seed then repeats a run on the same GPU model and torch build).
    generator = torch.Generator(s.dev).manual_seed(seed) if s.cuda else torch.Generator().manual_seed(seed)
    run.sampler.set_epoch(epoch)
    run.indices.base_seed = worker_base_seed(seed)
    sums, nonfinite = EpochSums.zeros(s.dev), _NonFinite.zeros(s.dev)
    lr = run.scheduler.get_last_lr()[0]
    began = time.perf_counter()
    bar = tqdm(run.loader, desc=f"epoch {epoch}/{config['epochs']}", unit="batch", disable=not (s.progress and s.writer),
               leave=False)
    for i, (x, y) in enumerate(bar, 1):
        x, y = x.to(s.dev, non_blocking=True), y.to(s.dev, non_blocking=True)
        x = x.contiguous(memory_format=torch.channels_last)
        value, weights, clean, adv = train_step(
            run.fast, run.outer, run.optimizer, run.loss, x, y, config, generator=generator,
            scaler=run.scaler, autocast=run.autocast,
        )
        run.scheduler.step()
        nonfinite.note(i, value)
        if i % CHECK_EVERY == 0 or i == run.steps_per_epoch:
            _check_finite(nonfinite.batch, nonfinite.value, s.world, epoch, run.out)
        sums.add(value, weights, clean, adv, y)
        if not bar.disable and (i == 1 or i % CHECK_EVERY == 0):
            bar.set_postfix(loss=f"{value.item():.4f}", img_s=f"{i * config['batch_size'] / (time.perf_counter() - began):.0f}")
    if s.world > 1:
        sums.all_reduce()
        for buffer in run.model.buffers():  # rank 0's BatchNorm statistics on every rank: what it saves and evaluates
            dist.broadcast(buffer, 0)
    return sums, lr, time.perf_counter() - began


def _evaluate_and_commit(run: _Run, done: _Progress, epoch: int, sums: EpochSums, lr: float, seconds: float) -> None:
    """Rank 0: validate, then write last/best.safetensors, metrics.jsonl and last state.pt, the epoch's commit point."""
    config, model, out = run.config, run.model, run.out
    train_metrics = sums.metrics()
    began = time.perf_counter()
    val_attack = AttackSpec(
        "pgd", eps=config["eps"], step_size=config["eps"] / 4, steps=config["val_attack_steps"], norm=config["norm"],
        start="uniform",
    )
    val = summarize(collect_energies(
        model, run.val_data, val_attack, batch_size=EVAL.batch_size, seed=EVAL.seed,
        device=str(run.session.dev), workers=run.session.workers, progress=run.session.progress,
    ))
    last = {
        "epoch": epoch, "lr": lr, **train_metrics,
        "val_clean_acc": val["clean_acc"], "val_robust_acc": val["robust_acc"],
        "val_E_clean": val["E_clean"], "val_E_adv": val["E_adv"], "val_dE": val["dE"], "val_dEy": val["dEy"],
        "val_images": val["n"], "val_attack_steps": config["val_attack_steps"],
        "epoch_seconds": seconds, "images_per_s": train_metrics["train_images"] / seconds,
        "eval_seconds": time.perf_counter() - began, "loss": config["loss"],
    }
    model.meta.metrics = {k: last[k] for k in ("epoch", "val_clean_acc", "val_robust_acc", "val_images")}
    model.meta.metrics["val_attack"] = f"pgd{config['val_attack_steps']} {config['norm']} eps {config['eps']:.5f}"
    save_classifier(model, out / "last.safetensors")
    if epoch >= config["select_from"] and last[selection_key(config)] > done.best["value"]:
        done.best = {"epoch": epoch, "value": last[selection_key(config)]}
        save_classifier(model, out / "best.safetensors")
    done.history.append(json.dumps(last, sort_keys=True))
    done.last = last
    write_metrics(out, done.history)
    # The commit point of this epoch. Saved through a file object: torch names the archive's folder after a
    # path's file name (here a random temporary one) but "archive" for a file object, so the bytes repeat.
    with atomic_path(out / "state.pt") as tmp, open(tmp, "wb") as f:
        torch.save({
            "epoch": epoch, "model": model.net.state_dict(), "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(), "scaler": run.scaler.state_dict(),
            "best_epoch": done.best["epoch"], "best_value": done.best["value"],
        }, f)
    run.session.log(_format_epoch(last, config["epochs"]))
