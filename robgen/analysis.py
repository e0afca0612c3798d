"""Energy analysis (PAPER.md section 2) as pure functions returning JSON-ready dicts; robgen.plots draws them.

- attacks: E(x) and E(x,y) of clean vs adversarial inputs per attack, with the direction of the change in words
  and the TRADES KL split into its energy terms;
- phases: the three phases of adversarial training, detected in a trainer's metrics.jsonl;
- survey: the spread of dE(x) and dE(x,y) across models on the same images;
- weights: WEAT's weight w(x) against E(x) on training data.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from . import checks, energy
from .attacks import ATTACKS, AttackSpec, attack_engine, unavailable
from .errors import RobgenError
from .config import with_options
from .evaluate import RunConfig, collect_energies, summarize
from .run_folder import epoch_robust_acc, read_metrics, run_loss
from .models import Classifier

@dataclass(frozen=True)
class EnergyConfig(RunConfig):
    """`robgen energy` and attack_energies(): the single source of their defaults."""

    attacks: tuple[str, ...] = ("pgd", "pgd-targeted", "trades", "fgsm", "apgd-ce", "apgd-t")
    n: int = 500  # test images per attack


@dataclass(frozen=True)
class SurveyConfig(RunConfig):
    """`robgen survey` and survey()."""

    attack: str = "pgd"  # the attack every model gets
    n: int = EnergyConfig.n  # test images, the same for every model


@dataclass(frozen=True)
class WeightsConfig(RunConfig):
    """`robgen weights` and weights()."""

    n: int = 2000  # images for the weight histogram
    split: str = "train"


@dataclass(frozen=True)
class PhaseConfig:
    """The phase detector's settings (see PHASE_RULE): `robgen phases`, phases() and detect_phases()."""

    smooth: int = 3  # centred moving-average window, epochs
    baseline_epochs: int = 5  # early epochs whose dE(x) defines "about 0"
    k: float = 3.0  # how many baseline spreads away dE(x) must move
    min_spread: float = 0.01  # floor on the baseline spread (energy units), so a flat start does not make noise a phase
    persist: int = 2  # epochs dE(x) must stay beyond the threshold
    min_rise: float = 1.0  # percentage points the final robust error must sit above its minimum to call it overfitting

    def check(self) -> PhaseConfig:
        # Checked rather than clamped in the detector, so a result never rests on a setting other than the one given.
        for key in ("smooth", "baseline_epochs", "persist"):
            checks.integer(f"--{key.replace('_', '-')}", getattr(self, key))
        for key in ("k", "min_spread", "min_rise"):
            checks.number(f"--{key.replace('_', '-')}", getattr(self, key), 0)
        return self


ENERGY, SURVEY = EnergyConfig(), SurveyConfig()
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
# Direction words: a mean change counts only beyond max(DIRECTION_TOL energy units, DIRECTION_SEM standard errors).
DIRECTION_TOL = 0.01
DIRECTION_SEM = 2.0
PHASE_RULE = (
    "Curves are smoothed with a centred moving average of `smooth` epochs. Phase 2 starts at the first epoch after "
    "the first `baseline_epochs` epochs where the smoothed train dE(x) differs from its baseline mean by more than "
    "k * max(baseline std, min_spread) and stays so for `persist` epochs. Phase 3 starts at the epoch of minimum "
    "smoothed PGD test error, provided the final smoothed error is at least `min_rise` points above that minimum "
    "(robust overfitting); otherwise there is no phase 3."
)


# ---------------------------------------------------------------- statistics


def describe(values: Tensor, quantiles: Sequence[float] = QUANTILES) -> dict[str, float]:
    """n, mean, std, min, max, the quantiles (keys q05, q25, ...) and the interquartile range."""
    v = values.detach().double().flatten().cpu()
    if v.numel() == 0:
        raise RobgenError("no values to summarise: the data set is empty")
    qs = torch.quantile(v, torch.tensor([*quantiles, 0.25, 0.75], dtype=torch.float64)).tolist()
    out = {
        "n": int(v.numel()), "mean": v.mean().item(), "std": v.std().item() if v.numel() > 1 else 0.0,
        "min": v.min().item(), "max": v.max().item(),
    }
    out.update({f"q{round(q * 100):02d}": value for q, value in zip(quantiles, qs)})
    out["iqr"] = qs[-1] - qs[-2]
    return out


def direction(delta: Tensor, tol: float = DIRECTION_TOL, sem: float = DIRECTION_SEM) -> dict:
    """Whether x -> x* lowered or raised an energy on average, from the signed deltas E(clean) - E(adversarial).

    'lowered' when the mean delta exceeds max(tol, sem standard errors), 'raised' below minus that, else
    'no clear change'.
    """
    d = delta.detach().double().flatten().cpu()
    mean = d.mean().item()
    stderr = d.std().item() / math.sqrt(d.numel()) if d.numel() > 1 else 0.0
    threshold = max(tol, sem * stderr)
    word = "lowered" if mean > threshold else "raised" if mean < -threshold else "no clear change"
    return {"word": word, "mean_delta": mean, "stderr": stderr, "threshold": threshold}


def direction_sentence(name: str, quantity: str, d: dict) -> str:
    verb = f"{d['word']} {quantity}" if d["word"] != "no clear change" else f"made no clear change to {quantity}"
    adversarial = quantity.replace("x", "x*", 1)
    return (
        f"{name} {verb} on average: mean d{quantity} = {quantity} - {adversarial} = {d['mean_delta']:+.4f} "
        f"(tolerance ±{d['threshold']:.4f})"
    )


# ---------------------------------------------------------------- attacks


def resolve_attacks(
    attacks: Sequence[str] | Mapping[str, AttackSpec], num_classes: int | None = None
) -> tuple[dict[str, AttackSpec], dict[str, str]]:
    """Specs of the attacks (in order, duplicates dropped) and the ones skipped, name -> reason.

    Names must be registered. APGD and AutoAttack come from torchattacks and APGD-T needs 4 classes: an attack that
    cannot run here (attacks.unavailable) is skipped with its reason rather than failing the whole analysis.
    """
    if isinstance(attacks, Mapping):
        requested = dict(attacks)
    else:
        names = list(dict.fromkeys(n.strip() for n in attacks if n.strip()))
        requested = {name: ATTACKS.get(name) for name in names}  # unknown names raise, listing the known ones
    if not requested:
        raise RobgenError(f"no attack given; choose from: {', '.join(ATTACKS.names())}")
    specs, skipped = {}, {}
    for name, spec in requested.items():
        reason = unavailable(spec, num_classes) if num_classes is not None else None
        if reason:
            skipped[name] = reason
        else:
            specs[name] = spec
    if not specs:
        raise RobgenError(f"none of the attacks can run: {'; '.join(f'{n}: {why}' for n, why in skipped.items())}")
    return specs, skipped


def attack_summary(name: str, rows: dict[str, Tensor]) -> dict:
    """Accuracies, attack success rate, energy statistics, direction words and the TRADES KL decomposition."""
    correct = rows["pred_clean"] == rows["y"]
    fooled = correct & (rows["pred_adv"] != rows["y"])
    dE, dEy = rows["dE"], rows["dEy"]
    dirs = {"E": direction(dE), "Ey": direction(dEy)}
    conditional, kl = rows["kl_conditional"].double().mean().item(), rows["kl"].double().mean().item()
    return {
        **summarize(rows),
        # Success: among the images classified correctly when clean, the percentage the attack misclassifies.
        "success_rate": 100.0 * fooled.sum().item() / correct.sum().item() if correct.any() else None,
        "stats": {
            "E_clean": describe(rows["E_clean"]), "E_adv": describe(rows["E_adv"]),
            "Ey_clean": describe(rows["Ey_clean"]), "Ey_adv": describe(rows["Ey_adv"]),
            "dE": describe(dE), "dEy": describe(dEy),
        },
        "direction": dirs,
        "sentences": [direction_sentence(name, "E(x)", dirs["E"]), direction_sentence(name, "E(x,y)", dirs["Ey"])],
        # PAPER.md 2.3: KL(p(.|x) || p(.|x*)) = sum_k p(k|x)[E(x*,k) - E(x,k)] + dE(x).
        "trades_kl": {
            "conditional": conditional, "dE": dE.double().mean().item(),
            "sum": conditional + dE.double().mean().item(), "kl": kl,
        },
    }


def attack_energies(
    model: Classifier,
    data: Dataset,
    attacks: Sequence[str] | Mapping[str, AttackSpec] = ENERGY.attacks,
    *,
    batch_size: int = ENERGY.batch_size,
    seed: int = ENERGY.seed,
    device: str | None = None,
    workers: int = ENERGY.workers,
    progress: bool = True,
) -> tuple[dict, dict[str, dict[str, Tensor]]]:
    """Run each attack on `data`; return (report, per-sample rows per attack).

    `attacks` is a list of registered names or a mapping name -> AttackSpec. Every attack draws from the same seed.
    """
    specs, skipped = resolve_attacks(attacks, model.num_classes)
    rows = {
        name: collect_energies(
            model, data, spec, batch_size=batch_size, seed=seed, device=device, workers=workers, progress=progress
        )
        for name, spec in specs.items()
    }
    report = {
        "n": len(data),
        "seed": seed,
        "attacks": {
            name: {"spec": vars(specs[name]), **attack_engine(specs[name]), **attack_summary(name, r)}
            for name, r in rows.items()
        },
        "skipped": skipped,
    }
    return report, rows


CSV_STATS = ("E_clean", "E_adv", "Ey_clean", "Ey_adv", "dE", "dEy")
CSV_FIELDS = ("mean", "std", "q05", "q25", "q50", "q75", "q95", "iqr")


def attacks_csv(report: dict) -> str:
    """One CSV row per attack: accuracies, success rate, statistics of every energy, directions, TRADES terms."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(
        ["attack", "n", "clean_acc", "robust_acc", "success_rate"]
        + [f"{s}_{f}" for s in CSV_STATS for f in CSV_FIELDS]
        + ["E_direction", "Ey_direction", "kl_conditional", "kl_dE", "kl_sum", "kl"]
    )
    for name, a in report["attacks"].items():
        writer.writerow(
            [name, a["n"], a["clean_acc"], a["robust_acc"], a["success_rate"]]
            + [a["stats"][s][f] for s in CSV_STATS for f in CSV_FIELDS]
            + [a["direction"]["E"]["word"], a["direction"]["Ey"]["word"]]
            + [a["trades_kl"][k] for k in ("conditional", "dE", "sum", "kl")]
        )
    return buf.getvalue()


# ---------------------------------------------------------------- phases

def moving_average(values: Sequence[float], window: int) -> np.ndarray:
    """Centred moving average; the window shrinks at the ends, so the curve keeps its length and endpoints."""
    v = np.asarray(values, dtype=float)
    half = max(int(window), 1) // 2
    return np.array([v[max(0, i - half): i + half + 1].mean() for i in range(len(v))])


def detect_phases(
    epochs: Sequence[int],
    dE: Sequence[float],
    robust_err: Sequence[float],
    **settings: float,
) -> dict:
    """The epochs where phases 2 and 3 start (None when not reached), by PHASE_RULE, with the numbers behind them.
    `settings` are PhaseConfig's fields."""
    c = with_options(PhaseConfig, settings, "phase detector")
    e = np.asarray(epochs, dtype=int)
    d, r = moving_average(dE, c.smooth), moving_average(robust_err, c.smooth)
    base = d[: max(1, min(c.baseline_epochs, len(d)))]
    base_mean, spread = float(base.mean()), max(float(base.std()), c.min_spread)
    beyond = np.abs(d - base_mean) > c.k * spread
    phase2 = next(
        (int(e[i]) for i in range(len(base), len(e) - c.persist + 1) if beyond[i: i + c.persist].all()), None
    )
    best = int(np.argmin(r))
    gap = float(r[-1] - r[best])
    phase3 = int(e[best]) if gap >= c.min_rise else None
    return {
        "phase2_start": phase2,
        "phase3_start": phase3,
        "best_robust_epoch": int(e[best]),
        "best_robust_err": float(r[best]),
        "final_robust_err": float(r[-1]),
        "overfit_gap": gap,
        "baseline_dE": base_mean,
        "baseline_spread": spread,
        "dE_threshold": c.k * spread,
        "final_dE": float(d[-1]),
        "dE_at_best": float(d[best]),
    }


def phases(run_dirs: Sequence[str | Path], **detector) -> dict:
    """Per run: its label, curves (epoch, train dE(x), PGD test error = 100 - test_robust_acc) and detected phases."""
    if not run_dirs:
        raise RobgenError("no run folder given; pass one or more folders written by `robgen train --out DIR`")
    settings = asdict(with_options(PhaseConfig, detector, "phase detector").check())
    runs = []
    for run_dir in run_dirs:
        records = read_metrics(run_dir)
        epochs = [int(r["epoch"]) for r in records]
        dE = [float(r["train_dE"]) for r in records]
        err = [100.0 - epoch_robust_acc(r) for r in records]
        runs.append({
            "run": str(run_dir), "loss": run_loss(run_dir, records), "epochs": epochs, "train_dE": dE,
            "robust_err": err, "phases": detect_phases(epochs, dE, err, **settings),
        })
    # Two runs with the same loss are told apart by their folder names.
    losses = [r["loss"] for r in runs]
    for r in runs:
        r["label"] = r["loss"] if losses.count(r["loss"]) == 1 else f"{r['loss']} ({Path(r['run']).name})"
    return {"rule": PHASE_RULE, "settings": settings, "runs": runs}


# ---------------------------------------------------------------- survey

SURVEY_OUT = "analysis/survey.png"  # `robgen survey`'s figure unless --out


def survey(
    models: Mapping[str, Classifier],
    data: Dataset,
    attack: str | AttackSpec = SURVEY.attack,
    **collect: object,
) -> tuple[dict, dict[str, dict[str, Tensor]]]:
    """dE(x) and dE(x,y) of each model on the same images under the same attack and seed; models sorted from least
    to most robust, each with the spread (std, IQR) of its deltas. `collect` goes to evaluate.collect_energies."""
    rows = {name: collect_energies(model, data, attack, **collect) for name, model in models.items()}
    entries = []
    for name, r in rows.items():
        s = summarize(r)
        dE, dEy = describe(r["dE"]), describe(r["dEy"])
        entries.append({
            "model": name, "clean_acc": s["clean_acc"], "robust_acc": s["robust_acc"], "dE": dE, "dEy": dEy,
            "spread": {"dE_std": dE["std"], "dE_iqr": dE["iqr"], "dEy_std": dEy["std"], "dEy_iqr": dEy["iqr"]},
        })
    entries.sort(key=lambda m: m["robust_acc"])
    spec = ATTACKS.get(attack) if isinstance(attack, str) else attack
    report = {"attack": attack if isinstance(attack, str) else vars(attack), "attack_engine": attack_engine(spec)}
    return {**report, "n": len(data), "models": entries}, rows


# ---------------------------------------------------------------- WEAT weights


def weights(model: Classifier, data: Dataset, **collect: object) -> tuple[dict, dict[str, Tensor]]:
    """WEAT's weight w(x) of each clean image against its E(x): what the weighting emphasises.

    Returns (report, rows) with rows holding y, pred_clean, E_clean and w. `collect` goes to collect_energies.
    """
    rows = collect_energies(model, data, "none", **collect)
    w = energy.weight_of_energy(rows["E_clean"])
    rows = {"y": rows["y"], "pred_clean": rows["pred_clean"], "E_clean": rows["E_clean"], "w": w}
    correct = rows["pred_clean"] == rows["y"]
    top = w.sort(descending=True).values[: max(1, len(w) // 10)]
    names = model.meta.class_names
    per_class = {names[c]: w[rows["y"] == c].mean().item() for c in range(len(names)) if (rows["y"] == c).any()}
    report = {
        "n": len(w),
        "clean_acc": 100.0 * correct.float().mean().item(),
        "E": describe(rows["E_clean"]),
        "weight": describe(w),
        "weight_at_E0": energy.weight_of_energy(torch.zeros(1)).item(),
        "mean_weight_correct": w[correct].mean().item() if correct.any() else None,
        "mean_weight_misclassified": w[~correct].mean().item() if (~correct).any() else None,
        "top10pct_weight_share": (top.sum() / w.sum()).item(),
        "per_class_mean_weight": per_class,
    }
    return report, rows
