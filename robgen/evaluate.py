"""Clean and robust accuracy with the energies of clean and adversarial inputs, in one pass over the data."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from . import checks, energy
from .config import with_options
from .attacks import ATTACKS, AttackSpec, attack_engine, run_attack
from .errors import RobgenError
from .models import Classifier
from .utils import atomic_path, atomic_write_text, resolve_device

@dataclass(frozen=True)
class RunConfig:
    """How a model runs over a seeded subset of images: the base of every evaluation and analysis config."""

    n: int = 1000  # images, a seeded random subset of the split
    batch_size: int = 200
    seed: int = 0  # the subset and the attacks' random starts
    workers: int = 2  # data loader processes

    def check(self) -> None:
        """A one-line RobgenError for a bad number."""
        checks.integer("--batch-size", self.batch_size)
        checks.integer("--workers", self.workers, 0)
        checks.seed(self.seed)


@dataclass(frozen=True)
class EvalConfig(RunConfig):
    """`robgen eval` and evaluate(): the single source of their defaults."""

    attack: str = "pgd20"
    # channels_last convolutions run attacks 1.33x faster on this CPU (benchmarks/results/bench_eval_layout.txt) but
    # round differently, which may flip a borderline prediction; off by default so that the committed evaluations
    # rerun to the same bytes.
    channels_last: bool = False


EVAL = EvalConfig()


def collect_energies(
    model: Classifier,
    data: Dataset,
    attack: AttackSpec | str = EVAL.attack,
    *,
    batch_size: int = EVAL.batch_size,
    seed: int = EVAL.seed,
    device: str | None = None,
    workers: int = EVAL.workers,
    progress: bool = True,
    batches_dir: str | Path | None = None,
    channels_last: bool = EVAL.channels_last,
) -> dict[str, torch.Tensor]:
    """Per-sample labels, predictions and energies for clean inputs x and their adversarial x* (model in eval mode).

    Keys: y, pred_clean, pred_adv, E_clean, E_adv (marginal), Ey_clean, Ey_adv (joint, at the true label), their
    signed deltas dE = E_clean - E_adv and dEy = Ey_clean - Ey_adv (energy.delta_*),
    kl_conditional (the TRADES KL's conditional term), kl (KL(p(.|x) || p(.|x*)), computed directly, so that its
    split into the conditional term plus dE(x) is checked rather than assumed).
    With `batches_dir`, each finished batch is kept there (with the random state after it), and a rerun of the same
    evaluation reuses them: a killed AutoAttack run continues where it stopped, with the same result.
    `channels_last`: the model's convolutions in that layout (see EvalConfig).
    """
    spec = ATTACKS.get(attack) if isinstance(attack, str) else attack
    RunConfig(batch_size=batch_size, seed=seed, workers=workers).check()
    dev = resolve_device(device)
    model = model.to(dev).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    kept = (KeptBatches(batches_dir, model, spec, batch_size, seed, len(data), channels_last=channels_last)
            if batches_dir is not None else None)
    out: dict[str, list[torch.Tensor]] = {}
    for i, (x, y) in enumerate(tqdm(loader, desc=f"eval {spec.method}", unit="batch", disable=not progress,
                                    leave=False)):
        rows = kept.load(i, x, y, generator) if kept else None
        if rows is None:
            rows = _batch_rows(model, spec, x.to(dev), y.to(dev), generator)
            if kept:
                kept.save(i, x, y, rows, generator)
        for key, value in rows.items():
            out.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in out.items()}


def _batch_rows(model: Classifier, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
    """collect_energies' per-sample rows of one batch, on the CPU."""
    with torch.no_grad():
        clean = model(x)
    x_adv = run_attack(spec, model, x, y, num_classes=model.num_classes, generator=generator, clean_logits=clean)
    with torch.no_grad():
        adv = clean if spec.method == "none" else model(x_adv)  # "none" leaves x as it is: no second forward
    conditional, _ = energy.trades_kl_terms(clean, adv)
    rows = {
        "y": y,
        "pred_clean": clean.argmax(1),
        "pred_adv": adv.argmax(1),
        "E_clean": energy.marginal_energy(clean),
        "E_adv": energy.marginal_energy(adv),
        "Ey_clean": energy.joint_energy(clean, y),
        "Ey_adv": energy.joint_energy(adv, y),
        "dE": energy.delta_marginal(clean, adv),
        "dEy": energy.delta_joint(clean, adv, y),
        "kl_conditional": conditional,
        "kl": energy.trades_kl(clean, adv),
    }
    return {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in rows.items()}


class KeptBatches:
    """The one owner of an evaluation's batch folder: `key.json` (what evaluation it serves) and one
    `batch_NNNNN.pt` per finished batch (its rows, a digest of its images and labels, the random state after it)."""

    def __init__(self, folder: str | Path, model: Classifier, spec: AttackSpec, batch_size: int, seed: int, n: int,
                 *, channels_last: bool = False):
        self.folder = Path(folder)
        weights = hashlib.sha256()
        for name, value in sorted(model.state_dict().items()):
            weights.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        key = {"attack": {**dataclasses.asdict(spec), **attack_engine(spec)}, "batch_size": batch_size, "seed": seed,
               "n": n, "weights_sha256": weights.hexdigest()}
        if channels_last:  # the layout changes rounding; a key without it (older folders too) means contiguous
            key["channels_last"] = True
        path = self.folder / "key.json"
        if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(key)):
            raise RobgenError(f"{self.folder} keeps the batches of another evaluation (model, attack, images, batch "
                              "size or seed differ); choose another --batches-dir")
        self.folder.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            atomic_write_text(path, json.dumps(key, indent=2, sort_keys=True) + "\n")

    @staticmethod
    def _digest(x: torch.Tensor, y: torch.Tensor) -> str:
        return hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()

    def load(self, i: int, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> dict | None:
        path = self.folder / f"batch_{i:05d}.pt"
        if not path.is_file():
            return None
        try:
            kept = torch.load(path, weights_only=True)  # never unpickles code: the folder may come from anywhere
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise RobgenError(f"{path} is not a batch file robgen wrote ({type(err).__name__}); choose another "
                              "--batches-dir") from None
        if kept["digest"] != self._digest(x, y):
            raise RobgenError(f"{path} was made from other images; choose another --batches-dir")
        generator.set_state(kept["generator"])
        return kept["rows"]

    def save(self, i: int, x: torch.Tensor, y: torch.Tensor, rows: dict, generator: torch.Generator) -> None:
        with atomic_path(self.folder / f"batch_{i:05d}.pt") as tmp:
            torch.save({"rows": rows, "digest": self._digest(x, y), "generator": generator.get_state()}, tmp)


def summarize(rows: dict[str, torch.Tensor]) -> dict[str, float]:
    """Accuracies (%), mean energies, and the mean signed deltas dE(x) = E(x) - E(x*), dE(x,y) = E(x,y) - E(x*,y)."""
    correct_clean = rows["pred_clean"] == rows["y"]
    return {
        "n": int(rows["y"].numel()),
        "clean_acc": 100.0 * correct_clean.float().mean().item(),
        "robust_acc": 100.0 * (rows["pred_adv"] == rows["y"]).float().mean().item(),
        "E_clean": rows["E_clean"].mean().item(),
        "E_adv": rows["E_adv"].mean().item(),
        "Ey_clean": rows["Ey_clean"].mean().item(),
        "Ey_adv": rows["Ey_adv"].mean().item(),
        "dE": rows["dE"].mean().item(),
        "dEy": rows["dEy"].mean().item(),
    }


def load_model_and_data(ckpt, data: str | None, split: str, data_root, download: bool, n: int | None, seed: int):
    """The checkpoint's classifier and a seeded n-image subset of `split` of `data` (default: the checkpoint's own
    dataset), checked to fit the model; returns (model, dataset, data name)."""
    from .data import load_split
    from .models.checkpoint import load_classifier

    model = load_classifier(ckpt)
    data = model.meta.dataset_or(data)
    dataset, spec = load_split(data, split, root=data_root, download=download, n=n, seed=seed)
    model.meta.check_fits(spec)
    return model, dataset, data


def evaluate(
    model: Classifier,
    data: Dataset,
    attack: AttackSpec | str = EVAL.attack,
    **kwargs,
) -> dict:
    """Clean/robust accuracy and mean energies of `model` on `data` under `attack` (see collect_energies)."""
    start = time.perf_counter()
    spec = ATTACKS.get(attack) if isinstance(attack, str) else attack
    result = summarize(collect_energies(model, data, spec, **kwargs))
    result["attack"] = {"name": attack if isinstance(attack, str) else spec.method, **spec.settings(), **attack_engine(spec)}
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def evaluate_checkpoint(ckpt=None, data: str | None = None, *, norm: str | None = None, eps: float | None = None,
                        step_size: float | None = None, steps: int | None = None, device: str | None = None,
                        data_root=None, download: bool = False, batches_dir: str | Path | None = None,
                        **options) -> dict:
    """`robgen eval`: evaluate() of a checkpoint on its dataset's (or `data`'s) test images, with the attack run in
    `norm`'s threat model and its eps, step size and steps replaced where given. `options` are EvalConfig's fields;
    the report adds the attack's name and resolved spec, the data and the checkpoint. `batches_dir`: see
    collect_energies (a killed run continues)."""
    c = with_options(EvalConfig, options, "eval")
    spec = ATTACKS.get(c.attack).in_norm(norm).replace(eps=eps, step_size=step_size, steps=steps)
    model, dataset, data = load_model_and_data(ckpt, data, "test", data_root, download, c.n, c.seed)
    r = evaluate(model, dataset, spec, batch_size=c.batch_size, seed=c.seed, device=device, workers=c.workers,
                 batches_dir=batches_dir, channels_last=c.channels_last)
    r["attack"]["name"], r["data"], r["ckpt"], r["seed"] = c.attack, data, ckpt or "default", c.seed
    if c.channels_last:
        r["channels_last"] = True
    r["spec"] = dataclasses.asdict(spec)
    return r
