"""Figures for the energy analysis. Each function returns a matplotlib Figure built without pyplot (no display, no
global state); save_figure writes it as PNG and PDF, atomically. Energies are in logit units (nats)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from . import energy
from .errors import RobgenError
from .utils import atomic_path

CLEAN, ADV = "C0", "C3"


def figure_path(path: str | Path) -> Path:
    """`path` as a Path, checked to end in .png or .pdf (both are written)."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".pdf"):
        raise RobgenError(f"figure file {path} must end in .png or .pdf (both are written)")
    return path


def save_figure(fig: Figure, path: str | Path) -> list[Path]:
    """Write `fig` to path.png and path.pdf (whichever suffix `path` has); return both paths."""
    path = figure_path(path)
    written = []
    for suffix in (".png", ".pdf"):
        target = path.with_suffix(suffix)
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=suffix[1:], dpi=150)
        written.append(target)
    return written


def energy_histograms(report: dict, rows: Mapping[str, Mapping[str, Tensor]]) -> Figure:
    """Per attack (columns): histograms of E(x) (top) and E(x,y) (bottom), clean vs adversarial, means dashed."""
    names = list(rows)
    fig = Figure(figsize=(3.4 * len(names) + 0.6, 6.4), layout="constrained")
    axes = fig.subplots(2, len(names), squeeze=False)
    for col, name in enumerate(names):
        summary = report["attacks"][name]
        for row, (key, label) in enumerate((("E", "E(x)"), ("Ey", "E(x,y)"))):
            ax = axes[row][col]
            clean, adv = rows[name][f"{key}_clean"].numpy(), rows[name][f"{key}_adv"].numpy()
            bins = np.histogram_bin_edges(np.concatenate([clean, adv]), bins=30)
            ax.hist(clean, bins, color=CLEAN, alpha=0.55, label="clean x")
            ax.hist(adv, bins, color=ADV, alpha=0.55, label="adversarial x*")
            ax.axvline(clean.mean(), color=CLEAN, ls="--", lw=1)
            ax.axvline(adv.mean(), color=ADV, ls="--", lw=1)
            ax.set_xlabel(f"{label} (logit units)")
            if col == 0:
                ax.set_ylabel("images")
            word = summary["direction"][key]["word"]
            head = f"{name}  (robust acc {summary['robust_acc']:.1f}%)\n" if row == 0 else ""
            ax.set_title(f"{head}{label}: {word}", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Energies of clean vs adversarial inputs (dashed: means)")
    return fig


def phase_figure(result: dict) -> Figure:
    """Train dE(x) and PGD test error per epoch, one colour per run; phase 2 (dashed) and 3 (dotted) starts marked."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_de, ax_err = fig.subplots(1, 2)
    for i, run in enumerate(result["runs"]):
        color = f"C{i}"
        ax_de.plot(run["epochs"], run["train_dE"], color=color, marker=".", label=run["label"])
        ax_err.plot(run["epochs"], run["robust_err"], color=color, marker=".", label=run["label"])
        for key, style in (("phase2_start", "--"), ("phase3_start", ":")):
            if run["phases"][key] is not None:
                for ax in (ax_de, ax_err):
                    ax.axvline(run["phases"][key], color=color, ls=style, lw=1.2)
    ax_de.axhline(0, color="gray", lw=0.8)
    ax_de.set(xlabel="epoch", ylabel="train dE(x) = E(x) - E(x*)  (logit units)", title="Energy gap on training data")
    ax_err.set(xlabel="epoch", ylabel="PGD error (%), held-out images", title="Robust error on held-out images (100 - robust accuracy)")
    for ax in (ax_de, ax_err):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    markers = [Line2D([], [], color="gray", ls="--", label="phase 2 starts"),
               Line2D([], [], color="gray", ls=":", label="phase 3 starts")]
    ax_de.legend(fontsize=8)
    ax_err.legend(handles=ax_err.get_legend_handles_labels()[0] + markers, fontsize=8)
    return fig


def survey_figure(report: dict, rows: Mapping[str, Mapping[str, Tensor]]) -> Figure:
    """Violins (with boxes) of dE(x) and dE(x,y) per model, least to most robust, labelled by robust accuracy."""
    models = [m["model"] for m in report["models"]]
    labels = [f"{m['model']}\nrobust {m['robust_acc']:.1f}%" for m in report["models"]]
    fig = Figure(figsize=(max(8.0, 3.8 * len(models)), 4.6), layout="constrained")
    for ax, (key, label) in zip(fig.subplots(1, 2), (("E", "dE(x)"), ("Ey", "dE(x,y)"))):
        data = [(rows[m][f"{key}_clean"] - rows[m][f"{key}_adv"]).numpy() for m in models]
        positions = np.arange(1, len(models) + 1)
        # A violin needs a density estimate, impossible for constant values: those get the box alone.
        spread = [i for i, d in enumerate(data) if d.size > 1 and d.std() > 0]
        if spread:
            ax.violinplot([data[i] for i in spread], positions=positions[spread], showextrema=False)
        ax.boxplot(data, positions=positions, widths=0.15, showfliers=False)
        ax.axhline(0, color="gray", lw=0.8)
        ax.set_xticks(positions, labels, fontsize=8)
        ax.set_ylabel(f"{label} = E(clean) - E(adversarial)  (logit units)")
        ax.set_title(f"{label} per model")
    fig.suptitle(f"Energy gap across models ({report['n']} images)")
    return fig


def weights_figure(report: dict, rows: Mapping[str, Tensor]) -> Figure:
    """Left: w(x) against E(x) with the analytic curve; right: histogram of weights, correct vs misclassified."""
    E, w = rows["E_clean"], rows["w"]
    correct = (rows["pred_clean"] == rows["y"]).numpy()
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    ax_sc, ax_h = fig.subplots(1, 2)
    lo, hi = min(E.min().item(), -0.5), max(E.max().item(), 0.5)
    grid = torch.linspace(lo, hi, 400)
    ax_sc.plot(grid, energy.weight_of_energy(grid), color="black", lw=1, label="1 / log(1 + exp(|E|))")
    ax_sc.scatter(E[correct], w[correct], s=6, alpha=0.5, color=CLEAN, label="classified correctly")
    ax_sc.scatter(E[~correct], w[~correct], s=6, alpha=0.5, color=ADV, label="misclassified")
    ax_sc.set(xlabel="E(x) (logit units)", ylabel="WEAT weight w(x)", title="Weight against marginal energy")
    ax_sc.legend(fontsize=8)
    ax_h.hist([w[correct].numpy(), w[~correct].numpy()], bins=30, stacked=True, color=[CLEAN, ADV],
              label=["classified correctly", "misclassified"])
    ax_h.axvline(report["weight"]["mean"], color="black", ls="--", lw=1, label="mean weight")
    ax_h.set(xlabel="WEAT weight w(x)", ylabel="training images", title=f"Weights of {report['n']} training images")
    ax_h.legend(fontsize=8)
    return fig
