import pytest
import torch

from robgen import RobgenError, energy
from robgen.attacks import ATTACKS, pgd, run_attack
from robgen.models import ModelMeta, build_classifier


@pytest.fixture
def model_and_batch():
    torch.manual_seed(0)
    model = build_classifier(ModelMeta("cnn-tiny", 10)).eval()
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(2))
    return model, x, y


@pytest.mark.parametrize("norm, eps, step", [("linf", 8 / 255, 2 / 255), ("l2", 0.5, 0.1)])
def test_pgd_raises_the_loss_and_stays_in_the_ball(model_and_batch, norm, eps, step):
    model, x, y = model_and_batch
    x_adv = pgd(model, x, y, eps=eps, step_size=step, steps=10, norm=norm, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert energy.cross_entropy(model(x_adv), y).mean() > energy.cross_entropy(model(x), y).mean()
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert torch.all(size <= eps + 1e-6)
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_targeted_pgd_raises_the_target_probability(model_and_batch):
    model, x, _ = model_and_batch
    target = torch.full((16,), 3)
    x_adv = pgd(model, x, target, targeted=True, steps=10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = energy.class_probs(model(x))[:, 3].mean()
        after = energy.class_probs(model(x_adv))[:, 3].mean()
    assert after > before


def test_attacks_are_deterministic_given_a_seed(model_and_batch):
    model, x, y = model_and_batch
    runs = [run_attack("pgd10", model, x, y, num_classes=10, generator=torch.Generator().manual_seed(5))
            for _ in range(2)]
    assert torch.equal(*runs)
    other = run_attack("pgd10", model, x, y, num_classes=10, generator=torch.Generator().manual_seed(6))
    assert not torch.equal(runs[0], other)


def test_kl_attack_computes_the_clean_prediction_once(model_and_batch):
    model, x, y = model_and_batch
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    pgd(model, x, y, objective="kl", steps=5, start="normal")
    assert len(calls) == 5 + 1


def test_kl_attack_raises_the_kl(model_and_batch):
    model, x, y = model_and_batch
    x_adv = run_attack("trades", model, x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = model(x)
        assert energy.trades_kl(clean, model(x_adv)).mean() > energy.trades_kl(clean, model(x + 0.001)).mean()


def test_fgsm_stays_in_the_ball(model_and_batch):
    model, x, y = model_and_batch
    x_adv = run_attack("fgsm", model, x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= 8 / 255 + 1e-6


def test_attack_leaves_parameter_gradients_alone(model_and_batch):
    model, x, y = model_and_batch
    pgd(model, x, y, steps=2)
    assert all(p.grad is None for p in model.parameters())


def test_bad_attack_inputs(model_and_batch):
    model, x, y = model_and_batch
    with pytest.raises(RobgenError, match="unknown attack 'pgd7'; known:.*pgd20"):
        ATTACKS.get("pgd7")
    with pytest.raises(RobgenError, match=r"linf eps must be in \(0, 1\]"):
        run_attack(ATTACKS.get("pgd10").replace(eps=8.0), model, x, y, num_classes=10)


def test_reports_list_only_the_settings_an_attack_reads():
    assert ATTACKS.get("autoattack").settings() == {"method": "autoattack", "eps": 8 / 255, "norm": "linf", "steps": 100}
    assert ATTACKS.get("apgd-ce").settings()["steps"] == 100 and "step_size" not in ATTACKS.get("apgd-ce").settings()
    assert ATTACKS.get("pgd20").settings()["step_size"] == 2 / 255


@pytest.mark.parametrize("engine", ["reference", "torchattacks"])
def test_autoattack_runs_on_either_engine_with_the_spec_steps_and_says_which(model_and_batch, monkeypatch, engine):
    from robgen import attacks

    if engine == "torchattacks":
        monkeypatch.setattr(attacks, "REFERENCE_AUTOATTACK", ())  # as where the reference is not installed
    elif attacks.reference_autoattack() is None:
        pytest.skip("the reference AutoAttack is not installed: pip install 'robgen[autoattack]'")
    _, x, _ = model_and_batch
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).eval()  # varied predictions
    y = model(x).argmax(1)  # every point starts correctly classified
    spec = ATTACKS.get("autoattack").replace(steps=3)
    report = attacks.attack_engine(spec)
    assert report["engine"].startswith(attacks.REFERENCE_AUTOATTACK if engine == "reference" else "torchattacks")
    assert report["version"].startswith("standard") and ("fallback" in report["note"]) == (engine == "torchattacks")
    x_adv = run_attack(spec, model, x, y, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= spec.eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert (model(x_adv).argmax(1) == y).float().mean() < 0.5
