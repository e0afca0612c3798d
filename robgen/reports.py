"""The analysis commands end to end (`robgen energy`, `phases`, `survey`, `weights`): claim the output files (nothing
is overwritten without overwrite=True), load the model and data, analyse (robgen.analysis), draw (robgen.plots)
and write the figures and the JSON / CSV reports. Each returns its report, with the files it wrote under "files"."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from . import plots
from .analysis import (SURVEY_OUT, EnergyConfig, PhaseConfig, SurveyConfig, WeightsConfig, attack_energies,
                       attacks_csv, phases, resolve_attacks, survey, weights)
from .attacks import ATTACKS
from .config import with_options
from .errors import RobgenError
from .evaluate import load_model_and_data
from .outputs import claim
from .utils import atomic_write_text, to_json

def analysis_dir(ckpt, out) -> Path:
    """`out`, else analysis/<checkpoint name> under the current folder."""
    from .models.checkpoint import resolve_checkpoint

    return Path(out) if out else Path("analysis") / resolve_checkpoint(ckpt).stem


def _claim_figure(path, overwrite: bool) -> Path:
    """The figure's path (.png), with its .pdf and .json beside it claimed."""
    path = plots.figure_path(path)  # a bad path fails before any work
    claim([path.with_suffix(s) for s in (".png", ".pdf", ".json")], overwrite)
    return path


def _write(report: dict, figure, png: Path, json_path: Path, *written: Path) -> dict:
    """The figure (PNG and PDF), then the report itself as JSON (atomically); "files" lists them and what the
    caller has `written` already."""
    report["files"] = [str(p) for p in (*plots.save_figure(figure, png), *written, json_path)]
    atomic_write_text(json_path, to_json(report) + "\n")
    return report


def energy_report(ckpt=None, *, data: str | None = None, norm: str | None = None, out=None, overwrite: bool = False,
                  device: str | None = None, data_root=None, download: bool = False, **options) -> dict:
    """`robgen energy`: per attack, E(x) and E(x,y) of clean vs adversarial test images: histograms and a CSV + JSON
    summary in `out` (default analysis/<checkpoint name>). `options` are EnergyConfig's fields."""
    c = with_options(EnergyConfig, options, "energy")
    resolve_attacks(c.attacks)  # unknown names fail before any model or data is read
    requested = {a.strip(): ATTACKS.get(a.strip()).in_norm(norm) for a in c.attacks if a.strip()}
    folder = analysis_dir(ckpt, out)
    claim([folder / f for f in ("energy_hist.png", "energy_hist.pdf", "energy_summary.csv", "energy_summary.json")],
          overwrite)
    model, dataset, data = load_model_and_data(ckpt, data, "test", data_root, download, c.n, c.seed)
    report, rows = attack_energies(model, dataset, requested, batch_size=c.batch_size, seed=c.seed, device=device,
                                   workers=c.workers)
    report.update(ckpt=ckpt or "default", data=data)
    atomic_write_text(folder / "energy_summary.csv", attacks_csv(report))
    return _write(report, plots.energy_histograms(report, rows), folder / "energy_hist.png",
                  folder / "energy_summary.json", folder / "energy_summary.csv")


def phases_report(run_dirs: Sequence[str | Path], *, out=None, overwrite: bool = False, **settings) -> dict:
    """`robgen phases`: the phase figure of training runs at `out` (default FIRST_RUN/phases.png), its PDF and JSON
    beside it. `settings` are PhaseConfig's fields."""
    if not run_dirs:
        raise RobgenError("no run folder given; pass one or more folders written by `robgen train --out DIR`")
    with_options(PhaseConfig, settings, "phase detector")
    path = _claim_figure(out or Path(run_dirs[0]) / "phases.png", overwrite)
    result = phases(run_dirs, **settings)
    return _write(result, plots.phase_figure(result), path, path.with_suffix(".json"))


def model_names(paths: Sequence[Path]) -> list[str]:
    """Models named by file name, with the folder where two files share a name, numbered if still ambiguous."""
    stems = [p.stem for p in paths]
    names = [p.stem if stems.count(p.stem) == 1 else f"{p.resolve().parent.name}/{p.stem}" for p in paths]
    return [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]


def survey_report(ckpts: Sequence[str], *, data: str | None = None, norm: str | None = None, out=SURVEY_OUT,
                  overwrite: bool = False, device: str | None = None, data_root=None, download: bool = False,
                  **options) -> dict:
    """`robgen survey`: violins of dE(x) and dE(x,y) per model on the same test images (of the first checkpoint's
    dataset unless `data`), at `out` with its PDF and JSON. `options` are SurveyConfig's fields."""
    from .models.checkpoint import resolve_checkpoint

    c = with_options(SurveyConfig, options, "survey")
    attack_spec = ATTACKS.get(c.attack).in_norm(norm)
    path = _claim_figure(out, overwrite)
    if not ckpts:
        raise RobgenError("no checkpoint to survey; pass --ckpts A B C (or A,B,C)")
    paths = [resolve_checkpoint(spec) for spec in ckpts]
    models = {}
    for name, spec in zip(model_names(paths), ckpts):
        models[name], dataset, data = load_model_and_data(spec, data, "test", data_root, download, c.n, c.seed)
    report, rows = survey(models, dataset, c.attack if norm is None else attack_spec, batch_size=c.batch_size,
                          seed=c.seed, device=device, workers=c.workers)
    report.update(data=data, seed=c.seed, ckpts=dict(zip(models, map(str, paths))))
    return _write(report, plots.survey_figure(report, rows), path, path.with_suffix(".json"))


def weights_report(ckpt=None, *, data: str | None = None, out=None, overwrite: bool = False, device: str | None = None,
                   data_root=None, download: bool = False, **options) -> dict:
    """`robgen weights`: WEAT's weight w(x) against E(x) on `split` images: figure and JSON in `out` (default
    analysis/<checkpoint name>). `options` are WeightsConfig's fields."""
    c = with_options(WeightsConfig, options, "weights")
    folder = analysis_dir(ckpt, out)
    claim([folder / f for f in ("weights.png", "weights.pdf", "weights.json")], overwrite)
    model, dataset, data = load_model_and_data(ckpt, data, c.split, data_root, download, c.n, c.seed)
    report, rows = weights(model, dataset, batch_size=c.batch_size, seed=c.seed, device=device, workers=c.workers)
    report.update(ckpt=ckpt or "default", data=data, split=c.split)
    return _write(report, plots.weights_figure(report, rows), folder / "weights.png", folder / "weights.json")
