"""What the fast recipe relies on: the L2 threat model, the standard loss, the held-out validation split, fp32
attacks under autocast, and start fits on every class image scaled by the class's own size."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from conftest import write_image_folder
from robgen.attacks import ATTACKS
from robgen.cli import main
from robgen.data import train_val_split
from robgen.errors import RobgenError
from robgen.models import ModelMeta, build_classifier
from robgen.sample.starts import LEGACY_N, draw_starts, fit_starts, load_fit, save_fit
from robgen.train import LOSSES, adversarial, batch_loss, make_config
from robgen.train.loop import _check_same_recipe


def model_and_batch(seed: int = 0):
    torch.manual_seed(seed)
    model = build_classifier(ModelMeta("cnn-tiny", 4, (3, 16, 16), (0.5,) * 3, (0.25,) * 3)).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(16, 3, 16, 16, generator=gen)
    x[:4] = x[:4].round()  # pixels at 0 and 1, where the [0, 1] clamp binds
    return model, x, torch.randint(0, 4, (16,), generator=gen)


@pytest.mark.parametrize("loss", ["sat", "trades", "weat-adv"])
def test_l2_training_attack_stays_in_the_ball_and_in_the_image_range(loss):
    model, x, y = model_and_batch()
    eps = 0.5
    x_adv, _ = adversarial(model, x, y, LOSSES.get(loss), eps=eps, step_size=0.25, steps=3, norm="l2",
                           generator=torch.Generator().manual_seed(2))
    dist = (x_adv - x).flatten(1).norm(dim=1)
    assert (dist <= eps + 1e-5).all() and dist.max() > 0.9 * eps  # inside the ball, and it reaches its boundary
    assert 0 <= x_adv.min() and x_adv.max() <= 1
    linf = (x_adv - x).abs().amax()
    assert linf > 8 / 255  # an L2 attack, not an Linf one: single pixels move further than 8/255


def test_l2_defaults_follow_the_norm():
    linf, l2 = make_config("fast"), make_config("fast", norm="l2")
    assert (linf["eps"], linf["step_size"]) == (8 / 255, 4 / 255)
    assert (l2["eps"], l2["step_size"]) == (0.5, 0.25)
    assert make_config("paper", norm="l2")["step_size"] == 0.125  # 10 steps of eps/4
    with pytest.raises(RobgenError, match="resume with the same recipe"):
        _check_same_recipe(linf, l2, Path("run"))


def test_standard_loss_is_clean_cross_entropy_without_an_attack():
    model, x, y = model_and_batch()
    x_adv, clean = adversarial(model, x, y, LOSSES.get("standard"), eps=8 / 255, step_size=2 / 255, steps=5)
    assert x_adv is x
    value, weights = batch_loss(LOSSES.get("standard"), model, x, x_adv, y, 6.0)
    model.train()
    assert weights is None
    torch.testing.assert_close(value, F.cross_entropy(model(x), y))


def test_attacks_run_in_fp32_under_bf16_autocast():
    model, x, y = model_and_batch()
    loss = LOSSES.get("trades")
    plain, _ = adversarial(model, x, y, loss, eps=8 / 255, step_size=4 / 255, steps=2,
                           generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, clean = adversarial(model, x, y, loss, eps=8 / 255, step_size=4 / 255, steps=2,
                                   generator=torch.Generator().manual_seed(3))
    assert mixed.dtype == clean.dtype == torch.float32
    assert torch.equal(plain, mixed)


def test_validation_split_is_held_out_of_training_and_disjoint_from_test(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=10, test_per_class=4, size=8)
    train, val, _ = train_val_split(f"folder:{root}", 6, seed=0)
    again_train, again_val, _ = train_val_split(f"folder:{root}", 6, seed=0, max_train=5)

    def files(subset):
        return {subset.dataset.samples[i][0] for i in subset.indices}

    assert len(val) == 6 and len(train) == 24
    assert not files(train) & files(val)
    assert all(f.startswith(str(root / "train")) for f in files(train) | files(val))  # never a test image
    assert files(again_val) == files(val) and files(again_train) <= files(train) and len(again_train) == 5
    x, _ = val[0]
    assert torch.equal(x, val[0][0])  # the validation images are not augmented
    with pytest.raises(RobgenError, match="leaves nothing to train on"):
        train_val_split(f"folder:{root}", 30)


def coefficient_std(fit, c: int, k: int, draws: int = 4000) -> torch.Tensor:
    """The spread of PCA starts along class c's leading k components (without the [0, 1] clamp's effect)."""
    y = torch.full((draws,), c)
    x0 = draw_starts("pca", fit, y, fit.input_shape, torch.Generator().manual_seed(0), {"sigma_pca": 0.001})
    return ((x0.flatten(1) - fit.mean[c]) @ fit.basis[c][:k].T).std(0)


def test_start_fits_use_every_class_image_and_scale_by_its_count(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=12, size=8, noise=20)
    fit = fit_starts(f"folder:{root}", progress=False)
    assert fit.count.tolist() == [12.0, 12.0, 12.0] and fit.info["per_class"] is None
    assert len(fit.std[0]) == 11  # the rank of 12 centred images: all of them were used
    k = 3
    expected = 0.001 * math.sqrt(12 - 1) * fit.std[0][:k]  # sigma_pca x the singular values of the class matrix
    torch.testing.assert_close(coefficient_std(fit, 0, k), expected, rtol=0.08, atol=0)
    subset = fit_starts(f"folder:{root}", per_class=6, progress=False)
    assert subset.count.tolist() == [6.0] * 3 and len(subset.std[0]) == 5


def test_legacy_fits_keep_their_scaling(tmp_path):
    root = write_image_folder(tmp_path / "d", per_class=12, size=8, noise=20)
    path = save_fit(fit_starts(f"folder:{root}", progress=False), tmp_path / "fit.safetensors")
    fit = load_fit(path)
    tensors = load_file(path)
    del tensors["count"]
    legacy = tmp_path / "legacy.safetensors"
    with safe_open(str(path), framework="pt") as f:
        meta = {**f.metadata(), "format": "robgen-starts/1"}
    save_file(tensors, str(legacy), metadata=meta)
    old = load_fit(legacy)
    assert old.count.tolist() == [float(LEGACY_N)] * 3
    torch.testing.assert_close(old.singular_values(0, 2), fit.singular_values(0, 2) * math.sqrt((LEGACY_N - 1) / 11))


def test_any_attack_runs_in_the_l2_threat_model(ckpt, folder):
    assert ATTACKS.get("pgd20").in_norm("l2") == ATTACKS.get("pgd20-l2")
    assert ATTACKS.get("pgd20-l2").in_norm("linf") == ATTACKS.get("pgd20")
    assert ATTACKS.get("fgsm").in_norm("l2").step_size == pytest.approx(1.25 * 0.5)
    base = ["eval", "--ckpt", str(ckpt), "--data", f"folder:{folder}", "--n", "6", "--json", "--device", "cpu"]
    done = CliRunner().invoke(main, [*base, "--norm", "l2"])
    assert done.exit_code == 0, done.output
    attack = json.loads(done.stdout)["attack"]
    assert (attack["norm"], attack["eps"], attack["step_size"]) == ("l2", 0.5, 0.125)
    bad = CliRunner().invoke(main, [*base, "--norm", "l1"])
    assert bad.exit_code == 1 and bad.output.strip() == "Error: unknown norm 'l1'; use linf or l2"


def test_energy_and_survey_take_the_norm(ckpt, folder, tmp_path):
    common = ["--data", f"folder:{folder}", "--n", "6", "--device", "cpu", "--norm", "l2"]
    energy = CliRunner().invoke(main, ["energy", "--ckpt", str(ckpt), "--attacks", "pgd,fgsm", "--out",
                                       str(tmp_path / "e"), *common])
    assert energy.exit_code == 0, energy.output
    report = json.loads((tmp_path / "e" / "energy_summary.json").read_text())
    assert "norm': 'l2" in str(report) and "linf" not in str(report)
    survey = CliRunner().invoke(main, ["survey", "--ckpts", f"{ckpt},{ckpt}", "--out", str(tmp_path / "s.png"),
                                       *common])
    assert survey.exit_code == 0, survey.output
    assert json.loads((tmp_path / "s.json").read_text())["attack"]["norm"] == "l2"
