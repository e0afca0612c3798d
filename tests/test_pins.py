"""Exact values of the science: each test pins a formula or a known outcome, so that a wrong sign, a dropped factor
or a skipped step fails here (issue 18's mutants; see README "Contributing" for the mutation run)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from conftest import write_image_folder
from test_attacks import model_and_batch  # noqa: F401 - the fixture: a 10-class cnn-tiny and 16 images
from robgen import RobgenError, energy
from robgen import attacks as attacks_module
from robgen.attacks import ATTACKS, AttackSpec, project, random_start, random_targets, run_attack
from robgen import evaluate as evaluate_module
from robgen.evaluate import collect_energies, evaluate
from robgen.models import Classifier, ModelMeta, build_classifier
from robgen.sample import SamplerConfig, descend, draw_starts, sample
from robgen.sample import generate
from robgen.sample.starts import StartFit
from robgen.train import LOSSES, adversarial, make_config, train
from robgen.train import loop

EPS = 8 / 255


# ---------------------------------------------------------------- samplers

def constant_grad(g: torch.Tensor):
    """grad_fn of the linear energy E(x) = <g, x>: its gradient is g everywhere."""
    return lambda x: ((x * g).flatten(1).sum(1), g.expand_as(x).clone())


def quadratic_grad(c: torch.Tensor):
    """grad_fn of E(x) = |x - c|^2 / 2: its gradient is x - c."""
    return lambda x: (0.5 * (x - c).flatten(1).pow(2).sum(1), x - c)


def start(shape=(2, 3, 4, 4)) -> torch.Tensor:
    return 0.3 + 0.4 * torch.rand(shape, generator=torch.Generator().manual_seed(7))


def test_one_sgld_step_is_the_paper_formula():
    x0 = start()
    g = 0.2 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(8))
    cfg = SamplerConfig(steps=1, step_size=0.3, noise=0.01)
    x1, _ = descend("sgld", constant_grad(g), x0, cfg, torch.Generator().manual_seed(3))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(3))
    # x1 = x0 - (eta / 2) grad + sqrt(2 eta) sigma N(0, I)
    torch.testing.assert_close(x1, x0 - 0.15 * g + math.sqrt(0.6) * 0.01 * noise, rtol=0, atol=1e-6)
    assert cfg.noise_std == pytest.approx(math.sqrt(2 * 0.3) * 0.01)
    assert SamplerConfig(steps=1, step_size=0.3, noise=0.01, alpha=0.5).noise_std == pytest.approx(0.005)


def test_sgld_momentum_accumulates_the_previous_velocity():
    x0, c = start(), torch.full((2, 3, 4, 4), 0.5)
    eta, zeta = 0.4, 0.6
    x2, _ = descend("sgld", quadratic_grad(c), x0, SamplerConfig(steps=2, step_size=eta, momentum=zeta, noise=0.0),
                    torch.Generator())
    v1 = -(eta / 2) * (x0 - c)
    x1 = x0 + v1
    v2 = zeta * v1 - (eta / 2) * (x1 - c)  # v <- zeta v - (eta / 2) grad
    torch.testing.assert_close(x2, x1 + v2, rtol=0, atol=1e-6)


def test_sgld_rand_gives_each_chain_its_own_log_normal_step_size():
    x0 = start((6, 3, 4, 4))
    g = 0.2 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(8))
    cfg = SamplerConfig(steps=2, step_size=0.3, noise=0.01, step_spread=0.7)
    x2, _ = descend("sgld-rand", constant_grad(g), x0, cfg, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    z = torch.randn((6, 1, 1, 1), generator=gen)  # one draw per chain, before the first step's noise
    eta = 0.3 * torch.exp(0.7 * z)
    x = x0
    for _ in range(2):  # x <- x - (eta_i / 2) grad + sqrt(2 eta_i) sigma N(0, I), eta_i fixed for the run
        x = (x - eta / 2 * g + torch.sqrt(2 * eta) * 0.01 * torch.randn(x0.shape, generator=gen)).clamp(0, 1)
    torch.testing.assert_close(x2, x, rtol=0, atol=1e-6)
    assert eta.flatten().unique().numel() == 6
    # --alpha replaces sqrt(2 eta_i) for every chain alike
    with_alpha = SamplerConfig(steps=1, step_size=0.3, noise=0.01, alpha=0.5).noise_std_per_chain(eta)
    torch.testing.assert_close(with_alpha, torch.full_like(eta, 0.005), rtol=0, atol=1e-9)
    with pytest.raises(RobgenError, match="the sgld sampler does not read --step-spread"):
        generate.SampleConfig(step_spread=0.5).check()
    with pytest.raises(RobgenError, match="--step-spread must be >= 0"):
        SamplerConfig(steps=1, step_size=0.3, step_spread=-1.0)


def test_heun_averages_the_predictor_and_corrector_gradients():
    x0, c = start(), torch.full((2, 3, 4, 4), 0.5)
    eta = 0.4
    x1, _ = descend("heun", quadratic_grad(c), x0, SamplerConfig(steps=1, step_size=eta, noise=0.0), torch.Generator())
    g1 = x0 - c
    g2 = (x0 - (eta / 2) * g1).clamp(0, 1) - c
    torch.testing.assert_close(x1, x0 - (eta / 2) * (g1 + g2) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_sampler_takes_normalised_steps_and_stays_in_its_ball(norm):
    x0 = start()
    g = torch.randn(x0.shape, generator=torch.Generator().manual_seed(9))
    x1, _ = descend("pgd", constant_grad(g), x0, SamplerConfig(steps=1, step_size=0.01, norm=norm), torch.Generator())
    direction = g.sign() if norm == "linf" else g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(x1, x0 - 0.01 * direction, rtol=0, atol=1e-6)
    eps = 0.05 if norm == "linf" else 0.3
    far, _ = descend("pgd", constant_grad(g), x0, SamplerConfig(steps=20, step_size=0.05, norm=norm, eps=eps),
                     torch.Generator())
    delta = (far - x0).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    torch.testing.assert_close(size, torch.full((2,), eps), rtol=0, atol=1e-5)  # walked to the ball's edge, no further


def test_early_stop_freezes_a_sample_once_its_energy_reaches_the_target():
    x0 = torch.full((2, 1, 2, 2), 0.5)
    mean_energy = lambda x: (x.flatten(1).mean(1), torch.ones_like(x))  # noqa: E731 - E = mean pixel, grad 1
    cfg = SamplerConfig(steps=4, step_size=0.2, noise=0.0)  # each step lowers every pixel by 0.1
    x, track = descend("sgld", mean_energy, x0, cfg, torch.Generator(), stop_at=torch.tensor([0.35, -1.0]))
    # Sample 0 reaches E = 0.3 <= 0.35 after two steps and stays; sample 1 never reaches -1 and takes all four.
    torch.testing.assert_close(x.flatten(1).mean(1), torch.tensor([0.3, 0.1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(track[:, 0], torch.tensor([0.5, 0.4, 0.3, 0.3]), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- starts

def synthetic_fit(count: float = 101.0) -> StartFit:
    """One class in D = 4: mean 0.5, two principal axes (pixels 0 and 1) with std 0.1 and 0.05."""
    basis = torch.eye(4)[:2]
    std = torch.tensor([0.1, 0.05])
    return StartFit((1, 2, 2), torch.full((1, 4), 0.5), [basis], [std], (std**2).sum().view(1), torch.zeros(1),
                    torch.tensor([count]), [torch.full((3, 4), 128, dtype=torch.uint8)], {})


def pixel_std(init: str, fit: StartFit, opts: dict | None = None, draws: int = 20000) -> torch.Tensor:
    x0 = draw_starts(init, fit, torch.zeros(draws, dtype=torch.int64), (1, 2, 2), torch.Generator().manual_seed(0), opts)
    return x0.flatten(1).std(0)


def test_pca_start_spread_is_sigma_pca_times_the_singular_values():
    # s_i = sqrt(n_y - 1) std_i = 10 std_i, so with the default sigma_pca 0.005 the spread is 0.05 std_i.
    spread = pixel_std("pca", synthetic_fit(101.0))
    torch.testing.assert_close(spread, torch.tensor([0.005, 0.0025, 0.0, 0.0]), rtol=0.03, atol=1e-7)
    wider = pixel_std("pca", synthetic_fit(401.0), {"sigma_pca": 0.01})  # s_i = 20 std_i
    torch.testing.assert_close(wider, torch.tensor([0.02, 0.01, 0.0, 0.0]), rtol=0.03, atol=1e-7)


def test_gaussian_and_data_starts_have_their_documented_spread():
    gaussian = pixel_std("gaussian", synthetic_fit())
    expected = torch.tensor([0.1**2 + 1e-4, 0.05**2 + 1e-4, 1e-4, 1e-4]).sqrt()  # Sigma_y + 1e-4 I
    torch.testing.assert_close(gaussian, expected, rtol=0.03, atol=0)
    data = pixel_std("data", synthetic_fit(), {"data_noise": 0.05})
    torch.testing.assert_close(data, torch.full((4,), 0.05), rtol=0.03, atol=0)


def test_start_fit_holds_the_class_mean_and_the_singular_values_of_its_images(tmp_path):
    from robgen.data import load_split
    from robgen.sample import fit_starts

    root = write_image_folder(tmp_path / "d", per_class=6, size=4, noise=40)
    fit = fit_starts(f"folder:{root}", progress=False)
    data, _ = load_split(f"folder:{root}", "train")
    for c in range(3):
        x = torch.stack([data[i][0].flatten() for i in range(len(data)) if data[i][1] == c])
        torch.testing.assert_close(fit.mean[c], x.mean(0))
        singular = torch.linalg.svdvals(x - x.mean(0))[:5]
        torch.testing.assert_close(fit.singular_values(c, 5), singular, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fit.basis[c] @ fit.basis[c].T, torch.eye(5), rtol=0, atol=1e-4)
    assert fit.count.tolist() == [6.0, 6.0, 6.0]
    from robgen.sample.starts import _checked

    four = build_classifier(ModelMeta("cnn-tiny", 4, (3, 4, 4)))
    with pytest.raises(RobgenError, match=r"is for 3 classes of shape \(3, 4, 4\), but the model takes 4 classes"):
        _checked(fit, four, "fit.safetensors")


# ---------------------------------------------------------------- the sample run

FAST = dict(n=4, steps=2, batch_size=2, progress=False)


def images_of(out) -> np.ndarray:
    with np.load(out / "samples.npz") as f:
        return f["images"].astype(np.int16)


def test_every_chunk_draws_its_own_noise(ckpt, tmp_path):
    sample(ckpt, classes=[0], init="uniform", out=tmp_path / "s", **FAST)  # two chunks of the same class
    images = images_of(tmp_path / "s")
    assert not np.array_equal(images[:2], images[2:])
    assert generate.chunk_seed(0, 0) != generate.chunk_seed(0, 1) != generate.chunk_seed(1, 1)


def test_the_ce_energy_descends_cross_entropy(ckpt, tmp_path, monkeypatch):
    from robgen.models.checkpoint import load_classifier

    seen = []
    real = generate.descend
    monkeypatch.setattr(generate, "descend", lambda name, grad_fn, *a, **k: seen.append(grad_fn) or real(name, grad_fn, *a, **k))
    model = load_classifier(ckpt)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name, target in (("ce", energy.cross_entropy), ("joint", energy.joint_energy),
                         ("marginal", lambda logits, y: energy.marginal_energy(logits))):
        seen.clear()
        sample(ckpt, classes=[1], init="uniform", energy=name, out=tmp_path / name, **{**FAST, "n": 2})
        e, grad = seen[0](x)
        xr = x.clone().requires_grad_(True)
        logits = model(xr)
        (expected,) = torch.autograd.grad(target(logits, torch.tensor([1, 1])).sum(), xr)
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(e, energy.joint_energy(logits, torch.tensor([1, 1])).detach())


def test_early_stop_in_a_sample_run_stops_at_the_fits_class_energy(ckpt, folder, tmp_path):
    from robgen.models.checkpoint import checkpoint_id, load_classifier
    from robgen.sample import fit_starts
    from robgen.sample.starts import save_fit

    fit = fit_starts(f"folder:{folder}", model=load_classifier(ckpt), checkpoint_sha256=checkpoint_id(ckpt)["sha256"],
                     progress=False)
    runs = {}
    for target in (1e6, -1e6):  # every sample is below 1e6 at once; none ever reaches -1e6
        fit.energy = torch.full_like(fit.energy, target)
        stats = save_fit(fit, tmp_path / f"fit{target}.safetensors")
        for steps in (1, 3):
            for stop in (True, False):
                out = tmp_path / f"{target}_{steps}_{stop}"
                sample(ckpt, classes=[0], start_stats=stats, early_stop=stop, out=out, **{**FAST, "steps": steps})
                runs[target, steps, stop] = images_of(out)
    assert np.array_equal(runs[1e6, 1, True], runs[1e6, 3, True])  # frozen at the start
    assert not np.array_equal(runs[1e6, 3, True], runs[1e6, 3, False])
    assert np.array_equal(runs[-1e6, 3, True], runs[-1e6, 3, False])  # never frozen


# ---------------------------------------------------------------- attacks

def ce_grad(model, x, y):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(energy.cross_entropy(model(x), y).sum(), x)
    return g


def test_fgsm_is_one_signed_step_of_1_25_eps_from_a_uniform_start(model_and_batch):
    model, x, y = model_and_batch
    x_adv = run_attack("fgsm", model, x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    x0 = random_start(x, EPS, "linf", "uniform", torch.Generator().manual_seed(0))
    expected = project(x0 + 1.25 * EPS * ce_grad(model, x0, y).sign(), x, EPS, "linf")
    torch.testing.assert_close(x_adv, expected, rtol=0, atol=1e-6)


def test_one_pgd_step_ascends_the_loss_by_eps_over_4(model_and_batch):
    model, x, y = model_and_batch
    spec = ATTACKS.get("pgd20").replace(steps=1)
    x_adv = run_attack(spec, model, x, y, num_classes=10, generator=torch.Generator().manual_seed(4))
    x0 = random_start(x, EPS, "linf", "uniform", torch.Generator().manual_seed(4))
    torch.testing.assert_close(x_adv, project(x0 + EPS / 4 * ce_grad(model, x0, y).sign(), x, EPS, "linf"),
                               rtol=0, atol=1e-6)


def test_targeted_attacks_never_target_the_true_class(model_and_batch, monkeypatch):
    y = torch.arange(10).repeat(100)
    targets = random_targets(y, 10, torch.Generator().manual_seed(0))
    assert (targets != y).all()
    assert all(set(targets[y == c].tolist()) == set(range(10)) - {c} for c in range(10))  # every wrong class
    model, x, y = model_and_batch
    seen = []
    real = attacks_module.pgd
    monkeypatch.setattr(attacks_module, "pgd", lambda m, x_, t, **k: seen.append((t, k)) or real(m, x_, t, **k))
    x_adv = run_attack("pgd-targeted", model, x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    (target, kwargs), = seen
    assert (target != y).all() and kwargs["targeted"]
    again = random_targets(y, 10, torch.Generator().manual_seed(0))
    assert torch.equal(random_targets(y, 10, torch.Generator().manual_seed(0)), again)  # drawn from the seed
    with torch.no_grad():  # descending CE to a wrong class raises the CE of the true one
        assert energy.cross_entropy(model(x_adv), y).mean() > energy.cross_entropy(model(x), y).mean()


def kl_of(model, x, x_adv):
    with torch.no_grad():
        return energy.trades_kl(model(x), model(x_adv))


def random_kl(model, x, tries: int = 8) -> torch.Tensor:
    """The mean KL of random sign steps of the full radius: what an attack that does not ascend gets."""
    steps = [(x + EPS * torch.randn(x.shape, generator=torch.Generator().manual_seed(s)).sign()).clamp(0, 1)
             for s in range(tries)]
    return torch.stack([kl_of(model, x, s).mean() for s in steps]).mean()


def test_the_training_kl_attack_ascends_the_kl(model_and_batch):
    model, x, y = model_and_batch
    # Near x the KL is flat (its minimum), so a descending attack ends near 0 and a random step of the same size
    # gets ~1e-6; the ascent gets ~50 times that.
    floor = 10 * random_kl(model, x)
    for name in ("trades", "weat-adv", "weat-nat"):
        x_adv, clean = adversarial(model, x, y, LOSSES.get(name), eps=EPS, step_size=EPS / 4, steps=10,
                                   generator=torch.Generator().manual_seed(0))
        assert kl_of(model, x, x_adv).mean() > floor, name
        assert (x_adv - x).abs().max() <= EPS + 1e-6
    x_adv = run_attack("trades", model, x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert kl_of(model, x, x_adv).mean() > floor


def test_every_loss_is_its_formula():
    g = torch.Generator().manual_seed(3)
    clean, adv = 2 * torch.randn(6, 4, generator=g), 2 * torch.randn(6, 4, generator=g)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    ce = lambda logits: F.cross_entropy(logits, y, reduction="none")  # noqa: E731
    kl = F.kl_div(adv.log_softmax(1), clean.log_softmax(1), reduction="none", log_target=True).sum(1)
    w = 1 / torch.log1p(torch.exp(torch.logsumexp(clean, 1).abs()))  # 1 / log(1 + exp(|E(x)|))
    p_adv = adv.softmax(1)
    wrong = p_adv.scatter(1, y.view(-1, 1), -1.0).max(1).values
    mart = ce(adv) - torch.log(1.0001 - wrong) + 6 * kl * (1.0000001 - clean.softmax(1).gather(1, y.view(-1, 1)).squeeze(1))
    expected = {
        "standard": (ce(clean), None), "sat": (ce(adv), None), "trades": (ce(clean) + 6 * kl, None),
        "weat-adv": (ce(adv) + 6 * kl, w), "weat-nat": (ce(clean) + 6 * kl, w), "mart": (mart, None),
    }
    assert sorted(expected) == LOSSES.names()
    for name, (value, weights) in expected.items():
        got, got_w = LOSSES.get(name).fn(clean, adv, y, 6.0)
        torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-5, msg=name)
        assert (got_w is None) == (weights is None), name
        if weights is not None:
            torch.testing.assert_close(got_w, weights, rtol=1e-6, atol=1e-6)
    objectives = {"standard": None, "sat": "ce", "trades": "kl", "weat-adv": "kl", "weat-nat": "kl", "mart": "ce"}
    assert {n: LOSSES.get(n).objective for n in LOSSES.names()} == objectives


# ---------------------------------------------------------------- evaluation

class MeanPixel(nn.Module):
    """Two classes by mean brightness: logits k (m - 1/2) * (-1, +1); every pixel's gradient has the same sign, so
    a Linf attack moves the mean by exactly its radius."""

    def forward(self, x):
        d = 10 * (x.flatten(1).mean(1) - 0.5)
        return torch.stack([-d, d], 1)


def brightness_data(margin: float) -> TensorDataset:
    y = torch.tensor([0, 1] * 4)
    x = (0.5 + margin * (2 * y - 1).float()).view(-1, 1, 1, 1).expand(-1, 3, 4, 4).contiguous()
    return TensorDataset(x, y)


def mean_pixel_model() -> Classifier:
    return Classifier(MeanPixel(), ModelMeta("cnn-tiny", 2, (3, 4, 4))).eval()


def test_robust_accuracy_and_energies_of_an_attack_with_a_known_outcome():
    model, data = mean_pixel_model(), brightness_data(0.01)
    broken = evaluate(model, data, "pgd20", batch_size=3, workers=0, progress=False)
    assert (broken["clean_acc"], broken["robust_acc"]) == (100.0, 0.0)  # 8/255 > the 0.01 margin: every image flips
    d_clean, d_adv = 0.1, 10 * (0.01 - EPS)  # the true class's logit before and after
    assert broken["Ey_clean"] == pytest.approx(-d_clean, abs=1e-5)
    assert broken["Ey_adv"] == pytest.approx(-d_adv, abs=1e-5)
    assert broken["E_clean"] == pytest.approx(-math.log(2 * math.cosh(d_clean)), abs=1e-5)
    assert broken["E_adv"] == pytest.approx(-math.log(2 * math.cosh(d_adv)), abs=1e-5)
    assert broken["dE"] == pytest.approx(broken["E_clean"] - broken["E_adv"], abs=1e-6)
    assert broken["dEy"] == pytest.approx(broken["Ey_clean"] - broken["Ey_adv"], abs=1e-6)
    assert broken["attack"] == {"name": "pgd20", "engine": "robgen", **ATTACKS.get("pgd20").settings()}
    assert broken["n"] == 8
    assert isinstance(broken["seconds"], float) and 0 <= broken["seconds"] < 60
    held = evaluate(model, data, ATTACKS.get("pgd20").replace(eps=0.005), batch_size=3, workers=0, progress=False)
    assert (held["clean_acc"], held["robust_acc"]) == (100.0, 100.0)
    assert held["attack"]["name"] == "pgd" and held["attack"]["eps"] == 0.005
    assert ATTACKS.get("none").settings() == {"method": "none"}
    none = evaluate(model, data, "none", workers=0, progress=False)
    assert none["robust_acc"] == none["clean_acc"] == 100.0 and none["dE"] == 0.0


def test_evaluate_draws_its_attack_starts_from_its_seed(model_and_batch):
    model, x, y = model_and_batch
    runs = [evaluate(model, TensorDataset(x, y), "pgd10", seed=s, workers=0, progress=False)["E_adv"] for s in (0, 0, 1)]
    assert runs[0] == runs[1] != runs[2]


def test_a_killed_evaluation_resumes_from_its_kept_batches_to_the_same_result(model_and_batch, tmp_path, monkeypatch):
    model, x, y = model_and_batch
    data, kw = TensorDataset(x, y), dict(batch_size=4, seed=3, workers=0, progress=False)
    whole = collect_energies(model, data, "pgd10", **kw)
    kept = tmp_path / "batches"
    first = collect_energies(model, data, "pgd10", batches_dir=kept, **kw)
    assert sorted(p.name for p in kept.iterdir()) == ["batch_00000.pt", "batch_00001.pt", "batch_00002.pt",
                                                        "batch_00003.pt", "key.json"]
    (kept / "batch_00002.pt").unlink()
    (kept / "batch_00003.pt").unlink()  # killed after two of four batches
    attacked = []
    real = evaluate_module.run_attack
    monkeypatch.setattr(evaluate_module, "run_attack", lambda *a, **k: attacked.append(1) or real(*a, **k))
    resumed = collect_energies(model, data, "pgd10", batches_dir=kept, **kw)
    assert len(attacked) == 2  # only the two lost batches ran again, from the random state the kept ones left
    for rows in (first, resumed):
        for key in whole:
            torch.testing.assert_close(rows[key], whole[key], rtol=0, atol=0)
    with pytest.raises(RobgenError, match="keeps the batches of another evaluation"):
        collect_energies(model, data, "pgd20", batches_dir=kept, **kw)
    with pytest.raises(RobgenError, match="batch_00000.pt was made from other images"):
        collect_energies(model, TensorDataset(x.flip(0), y.flip(0)), "pgd10", batches_dir=kept, **kw)


def test_collected_kl_is_the_kl_of_the_two_predictions():
    model, data = mean_pixel_model(), brightness_data(0.01)
    rows = collect_energies(model, data, "trades", workers=0, progress=False)
    x, y = data.tensors
    x_adv = run_attack("trades", model, x, y, num_classes=2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean, adv = model(x), model(x_adv)
    reference = F.kl_div(adv.log_softmax(1), clean.log_softmax(1), reduction="none", log_target=True).sum(1)
    torch.testing.assert_close(rows["kl"], reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(rows["kl_conditional"], (clean.softmax(1) * (clean - adv)).sum(1), rtol=1e-5, atol=1e-6)
    assert (rows["pred_adv"] == adv.argmax(1)).all() and (rows["pred_clean"] == clean.argmax(1)).all()


# ---------------------------------------------------------------- the trainer

def test_per_epoch_validation_attack_and_train_dE_sign(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "d", per_class=6, size=8)
    seen = []
    real = loop.collect_energies
    monkeypatch.setattr(loop, "collect_energies", lambda m, data, spec, **k: seen.append((len(data), spec)) or real(m, data, spec, **k))
    config = make_config(data=f"folder:{root}", arch="cnn-tiny", epochs=1, batch_size=4, val_n=3, attack_steps=1)
    train(config, tmp_path / "run", device="cpu", workers=0, progress=False, log=lambda line: None)
    (n, spec), = seen
    assert n == 3 and spec == AttackSpec("pgd", eps=EPS, step_size=EPS / 4, steps=20, norm="linf", start="uniform")
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert line["train_dE"] == pytest.approx(line["train_E_clean"] - line["train_E_adv"], abs=1e-9)
    assert line["train_dEy"] == pytest.approx(line["train_Ey_clean"] - line["train_Ey_adv"], abs=1e-9)
    # dE(x) = E(x) - E(x*): with E(x) = -1 and E(x*) = -3 on average, the attack lowered the energy, dE = +2.
    sums = loop.EpochSums.zeros(torch.device("cpu"))
    for key, total in dict(images=2.0, loss=1.0, E_clean=-2.0, E_adv=-6.0, Ey_clean=0.0, Ey_adv=2.0).items():
        setattr(sums, key, torch.tensor(total, dtype=torch.float64))
    m = sums.metrics()
    assert (m["train_E_clean"], m["train_E_adv"], m["train_dE"], m["train_dEy"]) == (-1.0, -3.0, 2.0, -1.0)


def test_the_training_attack_is_the_losss_own_attack(model_and_batch, monkeypatch):
    from robgen.train import losses

    model, x, y = model_and_batch
    seen = []
    real = losses.pgd
    monkeypatch.setattr(losses, "pgd", lambda m, x_, y_, **k: seen.append(k) or real(m, x_, y_, **k))
    for name in ("sat", "trades", "mart"):
        seen.clear()
        loss = LOSSES.get(name)
        _, clean = adversarial(model, x, y, loss, eps=EPS, step_size=EPS / 2, steps=2, generator=torch.Generator())
        (k,) = seen
        assert (k["objective"], k["start"], k["steps"], k["eps"], k["step_size"]) == (loss.objective, loss.start, 2, EPS, EPS / 2)
        assert k["clean_logits"] is clean and k["norm"] == "linf" and not k.get("targeted")


@pytest.mark.parametrize("bad, message", [
    ({"steps": 0}, "--steps must be positive"), ({"step_size": 0.0}, "--step-size must be positive"),
    ({"noise": -0.1}, "--noise must be >= 0"), ({"momentum": 1.0}, r"--momentum must be in \[0, 1\)"),
    ({"norm": "l1"}, "unknown norm 'l1'"), ({"eps": 0.0}, "--eps must be positive"),
    ({"step_size": math.inf}, "--step-size must be positive, got inf"), ({"noise": math.inf}, "--noise must be >= 0"),
    ({"alpha": -1.0}, "--alpha must be >= 0, got -1.0"), ({"alpha": math.inf}, "--alpha must be >= 0"),
    ({"eps": math.inf}, "--eps must be positive"), ({"step_spread": math.inf}, "--step-spread must be >= 0"),
    ({"noise": math.nan}, "--noise must be >= 0"),
])
def test_sampler_settings_out_of_range_are_one_line_errors(bad, message):
    with pytest.raises(RobgenError, match=f"^{message}"):
        SamplerConfig(**{"steps": 1, "step_size": 0.1, **bad})


def test_sampler_settings_at_their_bounds_are_accepted():
    cfg = SamplerConfig(steps=1, step_size=0.1, noise=0.0, alpha=0.0, momentum=0.0, step_spread=0.0)
    assert cfg.noise_std == 0.0 and cfg.step_spread == 0.0


def test_early_stop_counts_reaching_the_target_exactly():
    x0 = torch.full((1, 1, 2, 2), 0.5)
    cfg = SamplerConfig(steps=3, step_size=0.2, noise=0.0)
    x, _ = descend("sgld", lambda x: (torch.full((1,), 0.25), torch.ones_like(x)), x0, cfg, torch.Generator(),
                   stop_at=torch.tensor([0.25]))
    assert torch.equal(x, x0)  # E = 0.25 <= 0.25 before the first step: frozen at the start


@pytest.mark.parametrize("bad_step", [0, 2])
def test_a_non_finite_energy_is_reported_with_its_step(bad_step):
    calls = []

    def energy_fn(x):
        calls.append(1)
        e = torch.zeros(2)
        if len(calls) > bad_step:
            e[1] = math.nan
        return e, torch.zeros_like(x)

    cfg = SamplerConfig(steps=4, step_size=0.3, noise=0.0)
    expected = ("the energy is NaN/inf at step 0 of sgld, before any step: the model gives non-finite logits on the "
                "starts (NaN weights or a zero normalisation std in the checkpoint, or a start fit holding NaN)"
                if bad_step == 0 else
                "the energy became NaN/inf at step 2 of sgld; lower --step-size (now 0.3) or drop --bf16")
    with pytest.raises(RobgenError) as err:
        descend("sgld", energy_fn, torch.full((2, 1, 2, 2), 0.5), cfg, torch.Generator())
    assert str(err.value) == expected
