"""Energy analysis: direction words, TRADES decomposition, phase detection, figures, bad input, the CLI."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import make_ckpt
from robgen import analysis, plots
from robgen.attacks import ATTACKS, AttackSpec
from robgen.cli import main
from robgen.data import load_split
from robgen.errors import RobgenError

FAST = {"batch_size": 16, "workers": 0, "progress": False}


@pytest.fixture(scope="module")
def model_and_data(ckpt, folder):
    from robgen.models.checkpoint import load_classifier

    return load_classifier(ckpt), load_split(f"folder:{folder}", "test")[0]


def test_direction_words_follow_the_numbers():
    g = torch.Generator().manual_seed(0)
    clean = torch.randn(200, generator=g)
    assert analysis.direction(clean - (clean - 1.0))["word"] == "lowered"  # E(x*) = E(x) - 1
    assert analysis.direction(clean - (clean + 1.0))["word"] == "raised"
    assert analysis.direction(1e-3 * torch.randn(200, generator=g))["word"] == "no clear change"
    # A mean of 0.05 drowned in noise of std 5 over 100 samples (standard error 0.5) is no clear change either.
    noisy = 0.05 + 5 * torch.randn(100, generator=g)
    noisy = noisy - noisy.mean() + 0.05
    assert analysis.direction(noisy)["word"] == "no clear change"
    assert "lowered E(x)" in analysis.direction_sentence("pgd", "E(x)", analysis.direction(torch.ones(10)))


def test_attacks_with_known_effect_get_the_right_words(model_and_data):
    model, data = model_and_data
    # Ascending E(x) must raise it; descending it (targeted: the sign flips) must lower it.
    attacks = {
        "ascend-E": AttackSpec("pgd", eps=0.3, step_size=0.05, steps=10, objective="marginal"),
        "descend-E": AttackSpec("pgd", eps=0.3, step_size=0.05, steps=10, objective="marginal", targeted=True),
    }
    report, rows = analysis.attack_energies(model, data, attacks, **FAST)
    assert report["attacks"]["ascend-E"]["direction"]["E"]["word"] == "raised"
    assert report["attacks"]["descend-E"]["direction"]["E"]["word"] == "lowered"
    assert report["attacks"]["descend-E"]["stats"]["dE"]["mean"] > 0
    assert len(rows["ascend-E"]["E_clean"]) == len(data) == report["n"]


def test_trades_decomposition_sums_to_the_kl(model_and_data):
    model, data = model_and_data
    report, _ = analysis.attack_energies(model, data, ["trades"], **FAST)
    t = report["attacks"]["trades"]["trades_kl"]
    # The KL is computed directly (energy.trades_kl); its split is two energy terms of opposite sign, ten times it.
    assert t["kl"] > 0 and abs(t["conditional"]) > 5 * t["kl"] and abs(t["dE"]) > 5 * t["kl"]
    assert t["sum"] == pytest.approx(t["kl"], rel=1e-4)
    assert t["dE"] == pytest.approx(report["attacks"]["trades"]["stats"]["dE"]["mean"])


def test_apgd_runs_through_torchattacks_and_apgd_t_is_skipped_with_a_reason(model_and_data):
    model, data = model_and_data
    attacks = {"apgd-ce": ATTACKS.get("apgd-ce").replace(steps=3), "apgd-t": ATTACKS.get("apgd-t").replace(steps=3)}
    report, rows = analysis.attack_energies(model, data, attacks, **FAST)
    assert report["attacks"]["apgd-ce"]["n"] == len(data)
    assert "at least 4 classes" in report["skipped"]["apgd-t"]  # a 3-class model: the DLR loss needs 4


def write_run(folder: Path, loss: str, dE: list[float], robust_acc: list[float]) -> Path:
    folder.mkdir(parents=True)
    lines = [json.dumps({"epoch": e + 1, "loss": loss, "train_dE": d, "test_robust_acc": r, "test_clean_acc": 80.0})
             for e, (d, r) in enumerate(zip(dE, robust_acc))]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def synthetic_runs(tmp_path: Path) -> tuple[Path, Path]:
    """SAT-like: dE(x) ~ 0 then diverging from epoch 15, robust accuracy best at epoch 25 then falling.
    TRADES-like: dE(x) ~ 0 throughout, robust accuracy improving to the end."""
    rng = np.random.default_rng(1)
    epochs = np.arange(1, 41)
    noise = 0.003 * rng.standard_normal(40)
    sat_dE = np.where(epochs < 15, 0.0, -0.05 * (epochs - 14)) + noise
    sat_acc = np.where(epochs <= 25, 20 + epochs, 45 - 0.8 * (epochs - 25))
    sat = write_run(tmp_path / "sat_run", "sat", sat_dE.tolist(), sat_acc.tolist())
    trades = write_run(tmp_path / "trades_run", "trades", noise.tolist(), (20 + 0.7 * epochs).tolist())
    return sat, trades


def test_phase_detector_finds_the_known_boundaries(tmp_path):
    sat, trades = synthetic_runs(tmp_path)
    result = analysis.phases([sat, trades])
    by_loss = {r["label"]: r["phases"] for r in result["runs"]}
    assert by_loss["sat"]["phase2_start"] == 15
    assert by_loss["sat"]["phase3_start"] == 25
    assert by_loss["trades"]["phase2_start"] is None
    assert by_loss["trades"]["phase3_start"] is None
    assert result["settings"]["k"] == analysis.PhaseConfig.k


def test_read_metrics_skips_a_line_being_written_and_names_the_producer_when_missing(tmp_path):
    run = write_run(tmp_path / "run", "sat", [0.0, -0.1], [30.0, 31.0])
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "train_d')  # the trainer is mid-write
    assert [r["epoch"] for r in analysis.read_metrics(run)] == [1, 2]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobgenError, match="robgen train --out"):
        analysis.read_metrics(tmp_path / "empty")


def test_every_figure_is_written(tmp_path, model_and_data):
    model, data = model_and_data
    sat, trades = synthetic_runs(tmp_path)
    report, rows = analysis.attack_energies(model, data, ["fgsm", "trades"], **FAST)
    survey, survey_rows = analysis.survey({"m1": model, "m2": model}, data, "fgsm", **FAST)
    weights, weight_rows = analysis.weights(model, data, **FAST)
    figures = {
        "hist.png": plots.energy_histograms(report, rows),
        "phases.png": plots.phase_figure(analysis.phases([sat, trades])),
        "survey.png": plots.survey_figure(survey, survey_rows),
        "weights.png": plots.weights_figure(weights, weight_rows),
    }
    for name, fig in figures.items():
        for path in plots.save_figure(fig, tmp_path / "figs" / name):
            assert path.stat().st_size > 1000, path
    assert survey["models"][0]["spread"]["dE_iqr"] >= 0
    # The weights are the analytic curve at each image's energy; w(0) = 1/log 2.
    assert weights["weight_at_E0"] == pytest.approx(1 / math.log(2))
    assert torch.allclose(weight_rows["w"], 1 / torch.log1p(torch.exp(weight_rows["E_clean"].abs())), atol=1e-5)


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_cli_energy_writes_figures_and_summaries(ckpt, folder, tmp_path):
    out = tmp_path / "out"
    result = invoke("energy", "--ckpt", str(ckpt), "--data", f"folder:{folder}", "--n", "12",
                    "--attacks", "pgd,trades,fgsm,apgd-t", "--out", str(out), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sorted(report["attacks"]) == ["fgsm", "pgd", "trades"]
    assert "4 classes" in report["skipped"]["apgd-t"]
    for name in ("energy_hist.png", "energy_hist.pdf", "energy_summary.csv", "energy_summary.json"):
        assert (out / name).stat().st_size > 0
        assert str(out / name) in report["files"]
    csv_lines = (out / "energy_summary.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("attack,n,clean_acc")
    assert json.loads((out / "energy_summary.json").read_text())["attacks"]["pgd"]["n"] == 12
    text = invoke("energy", "--ckpt", str(ckpt), "--data", f"folder:{folder}", "--n", "6", "--attacks", "trades",
                  "--out", str(out), "--device", "cpu", "--overwrite")  # the first run's files are replaced
    assert text.exit_code == 0 and "TRADES KL" in text.output and "on average" in text.output


def test_cli_phases_survey_weights(ckpt, folder, tmp_path):
    sat, trades = synthetic_runs(tmp_path)
    result = invoke("phases", str(sat), str(trades), "--out", str(tmp_path / "ph.png"), "--json")
    assert result.exit_code == 0, result.output
    assert [r["phases"]["phase2_start"] for r in json.loads(result.stdout)["runs"]] == [15, None]
    assert (tmp_path / "ph.pdf").stat().st_size > 0 and (tmp_path / "ph.json").is_file()
    result = invoke("survey", "--ckpts", str(ckpt), str(ckpt), "--attack", "fgsm", "--n", "6",
                    "--out", str(tmp_path / "sv.png"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sv.png").stat().st_size > 0 and "IQR" in result.output
    result = invoke("weights", "--ckpt", str(ckpt), "--n", "12", "--out", str(tmp_path / "w"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "w" / "weights.png").stat().st_size > 0


def test_bad_inputs_give_one_line_errors(ckpt, folder, tmp_path):
    wrong = make_ckpt(tmp_path / "ten.safetensors", "cifar10", num_classes=10)
    never = str(tmp_path / "never")
    cases = {
        ("phases", str(tmp_path), "--out", f"{never}/ph.png"): "robgen train --out",
        ("phases", str(tmp_path), "--out", f"{never}/ph.svg"): "must end in .png or .pdf",
        ("energy", "--ckpt", str(wrong), "--data", f"folder:{folder}", "--attacks", "fgsm", "--out", never): "3 classes",
        ("energy", "--ckpt", str(ckpt), "--attacks", "pgd,nope", "--out", never): "unknown attack 'nope'; known: ",
    }
    for args, message in cases.items():
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert message in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "never").exists()  # nothing is written on bad input


def test_survey_names_models_by_file_then_folder_then_number(tmp_path):
    from robgen.reports import model_names

    paths = [tmp_path / "a" / "m.safetensors", tmp_path / "b" / "m.safetensors", tmp_path / "c.safetensors",
             tmp_path / "x" / "d" / "n.safetensors", tmp_path / "y" / "d" / "n.safetensors"]
    assert model_names(paths) == ["a/m", "b/m", "c", "d/n#4", "d/n#5"]
