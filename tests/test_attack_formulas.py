"""robgen.attacks against its formulas and documented contracts: starts, steps and projections in both norms, the
radius and option checks, the torchattacks chain's settings, the engine report, and how run_attack passes a spec on."""
from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from torch import nn

from robgen import RobgenError, energy
from robgen import attacks as A
from robgen.attacks import ATTACKS, AttackSpec
from robgen.models import ModelMeta, build_classifier


def linear_model(classes: int = 5, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, classes)).eval()


def batch(n: int = 6, classes: int = 5):
    x = 0.25 + 0.5 * torch.rand(n, 3, 4, 4, generator=torch.Generator().manual_seed(1))  # in [0.25, 0.75]
    return x, torch.arange(n) % classes


def grad_of(model, x, y, objective="ce", clean=None):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(A.OBJECTIVES.get(objective)(model(x), y, clean).sum(), x)
    return g


def unit(t: torch.Tensor) -> torch.Tensor:
    return t / t.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uniform_starts_are_their_formulas_in_each_norm():
    x, _ = batch()
    g = gen(3)
    want = x + (2 * torch.rand(x.shape, generator=g) - 1) * 0.1
    torch.testing.assert_close(A.random_start(x, 0.1, "linf", "uniform", gen(3)), want, rtol=0, atol=0)
    g = gen(3)
    direction = torch.randn(x.shape, generator=g)
    radius = torch.rand(x.shape[:1], generator=g).view(-1, 1, 1, 1) * 0.2
    want = x + unit(direction) * radius
    torch.testing.assert_close(A.random_start(x, 0.2, "l2", "uniform", gen(3)), want, rtol=0, atol=1e-7)
    want = x + 0.001 * torch.randn(x.shape, generator=gen(3))  # the TRADES start
    torch.testing.assert_close(A.random_start(x, 0.2, "l2", "normal", gen(3)), want, rtol=0, atol=1e-7)
    same = A.random_start(x, 0.2, "linf", None, gen(3))
    assert torch.equal(same, x) and same is not x


def test_every_start_is_clipped_to_the_image_range():
    x = torch.tensor([0.0, 1.0]).repeat(200).view(100, 1, 2, 2)
    for norm, kind, eps in (("linf", "uniform", 0.5), ("l2", "uniform", 1.0), ("linf", "normal", 0.5)):
        start = A.random_start(x, eps, norm, kind, gen(0))
        assert start.min() == 0 and start.max() == 1, (norm, kind)  # clipped, and both ends reached
        assert ((start > 0) & (start < 1)).any(), (norm, kind)
    with pytest.raises(RobgenError, match="unknown random start 'ring'; use uniform, normal or none"):
        A.random_start(x, 0.1, "linf", "ring", gen(0))


def test_projection_keeps_points_inside_and_pulls_outside_ones_to_the_sphere():
    x = torch.full((2, 3, 4, 4), 0.5)
    inside = x + 0.1 * unit(torch.randn(2, 3, 4, 4, generator=gen(0)))
    torch.testing.assert_close(A.project(inside, x, 0.3, "l2"), inside, rtol=0, atol=1e-7)
    outside = x + 0.45 * unit(torch.randn(2, 3, 4, 4, generator=gen(1)))
    pulled = A.project(outside, x, 0.3, "l2")
    torch.testing.assert_close((pulled - x).flatten(1).norm(dim=1), torch.full((2,), 0.3))
    torch.testing.assert_close(pulled - x, (outside - x) * 0.3 / 0.45)
    torch.testing.assert_close(A.project(x + 0.2, x, 0.1, "linf"), x + 0.1)
    assert A.project(x + 0.9, x, 1.0, "linf").max() == 1.0


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_one_pgd_step_is_the_formula(norm, targeted):
    model, (x, y) = linear_model(), batch()
    g = grad_of(model, x, y)
    direction = g.sign() if norm == "linf" else unit(g)
    want = A.project(x + (-1 if targeted else 1) * 0.05 * direction, x, 0.3, norm)
    got = A.pgd(model, x, y, eps=0.3, step_size=0.05, steps=1, norm=norm, targeted=targeted, start=None)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # two steps: the second from the first's point, projected again
    g2 = grad_of(model, want, y)
    direction = g2.sign() if norm == "linf" else unit(g2)
    want2 = A.project(want + (-1 if targeted else 1) * 0.05 * direction, x, 0.3, norm)
    got2 = A.pgd(model, x, y, eps=0.3, step_size=0.05, steps=2, norm=norm, targeted=targeted, start=None)
    torch.testing.assert_close(got2, want2, rtol=0, atol=1e-6)


def test_pgds_defaults_are_the_pgd20_preset():
    torch.manual_seed(0)  # a conv net, whose gradient signs change inside the ball, so every step counts
    model = build_classifier(ModelMeta("cnn-tiny", 10)).eval()
    x, y = torch.rand(4, 3, 32, 32, generator=gen(1)), torch.arange(4)
    got = A.pgd(model, x, y, generator=gen(7))
    assert torch.equal(got, A.run_attack("pgd20", model, x, y, num_classes=10, generator=gen(7)))
    for steps in (19, 21):
        assert not torch.equal(got, A.run_attack(ATTACKS.get("pgd20").replace(steps=steps), model, x, y,
                                                 num_classes=10, generator=gen(7)))
    model, (x, y) = linear_model(), batch()
    with pytest.raises(RobgenError, match="unknown norm 'l1'; use linf or l2"):
        A.pgd(model, x, y, norm="l1")


def test_the_kl_attack_uses_the_callers_clean_logits():
    model, (x, y) = linear_model(), batch()
    with torch.no_grad():
        own = model(x)
    other = own.flip(1)  # another prediction to move away from
    spec = dict(eps=0.3, step_size=0.05, steps=1, objective="kl", start=None)
    given = A.pgd(model, x, y, clean_logits=other, **spec)
    torch.testing.assert_close(given, A.project(x + 0.05 * grad_of(model, x, y, "kl", other).sign(), x, 0.3, "linf"),
                               rtol=0, atol=1e-6)
    assert torch.equal(A.pgd(model, x, y, clean_logits=own, **spec), A.pgd(model, x, y, **spec))
    assert not torch.equal(given, A.pgd(model, x, y, **spec))


def test_run_attack_passes_every_field_of_the_spec_on():
    model, (x, y) = linear_model(), batch()
    spec = AttackSpec("pgd", eps=0.4, step_size=0.07, steps=2, norm="l2", objective="marginal", start="uniform")
    want = A.pgd(model, x, y, eps=0.4, step_size=0.07, steps=2, norm="l2", objective="marginal", start="uniform",
                 generator=gen(5))
    assert torch.equal(A.run_attack(spec, model, x, y, num_classes=5, generator=gen(5)), want)
    torch.manual_seed(123)  # the global generator plays no part
    assert torch.equal(A.run_attack(spec, model, x, y, num_classes=5, generator=gen(5)), want)
    kl = AttackSpec("pgd", eps=0.3, step_size=0.05, steps=1, objective="kl", start=None)
    other = model(x).detach().flip(1)
    assert torch.equal(A.run_attack(kl, model, x, y, num_classes=5, clean_logits=other),
                       A.pgd(model, x, y, eps=0.3, step_size=0.05, steps=1, objective="kl", start=None,
                             clean_logits=other))
    # the L2 radius limit is the image's diagonal, sqrt(C H W), not that of one channel or row
    wide = AttackSpec("pgd", eps=40.0, step_size=1.0, steps=1, norm="l2")  # above sqrt(32 * 32), below sqrt(3072)
    x32 = torch.rand(2, 3, 32, 32, generator=gen(0))
    cnn = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 5)).eval()
    assert A.run_attack(wide, cnn, x32, y[:2], num_classes=5, generator=gen(0)).shape == x32.shape
    with pytest.raises(RobgenError, match="^unknown attack method 'cw'$"):
        A.run_attack(AttackSpec("cw"), model, x, y, num_classes=5)
    # 'none' reads no radius, so a spec with any eps returns the images untouched
    assert torch.equal(A.run_attack(AttackSpec("none", eps=7.0), model, x, y, num_classes=5), x)


def test_radius_limits_and_their_messages():
    A.check_radius(1.0, "linf", (3, 4, 4))
    A.check_radius(math.sqrt(48), "l2", (3, 4, 4))
    with pytest.raises(RobgenError, match=r"linf eps must be in \(0, 1\] for images in \[0, 1\] of shape \(3, 4, 4\), "
                                          r"got 1.01; e.g. 8/255"):
        A.check_radius(1.01, "linf", (3, 4, 4))
    with pytest.raises(RobgenError, match=r"l2 eps must be in \(0, 6.928\] .* got 7.0; e.g. 0.5"):
        A.check_radius(7.0, "l2", (3, 4, 4))
    with pytest.raises(RobgenError, match=r"linf eps must be in \(0, 1\]"):
        A.check_radius(0.0, "linf", (3, 4, 4))
    with pytest.raises(RobgenError, match="unknown norm 'l1'; use linf or l2"):
        A.check_radius(0.1, "l1", (3, 4, 4))


def test_spec_checks_name_the_option():
    for field, option in (("eps", "--eps"), ("step_size", "--step-size")):
        for method in ("pgd", "fgsm"):
            with pytest.raises(RobgenError, match=rf"^{option} must be a finite number in \(0, inf\], got 0$"):
                AttackSpec(method, **{field: 0})
    with pytest.raises(RobgenError, match=r"^--eps must be a finite number in \(0, inf\], got 0$"):
        AttackSpec("apgd-ce", eps=0)
    with pytest.raises(RobgenError, match="^--steps must be a whole number, positive; got 0$"):
        AttackSpec("pgd", steps=0)
    AttackSpec("apgd-ce", step_size=0)  # AutoAttack's parts take no step size
    AttackSpec("none", eps=0, step_size=0, steps=0)  # 'none' reads nothing


def test_replace_and_in_norm():
    spec = ATTACKS.get("pgd20")
    assert spec.replace(eps=None, steps=None) == spec and spec.replace(steps=5).steps == 5
    with pytest.raises(RobgenError, match=r"^attack method 'autoattack' does not read --step-size, --start; drop it "
                                          r"or choose an attack that does$"):
        ATTACKS.get("autoattack").replace(step_size=0.1, start="normal")
    assert spec.in_norm("l2") == ATTACKS.get("pgd20-l2") and ATTACKS.get("pgd20-l2").in_norm("linf") == spec
    assert spec.in_norm(None) is spec and spec.in_norm("linf") is spec
    assert ATTACKS.get("none").in_norm("l2") is ATTACKS.get("none")
    fgsm = ATTACKS.get("fgsm").in_norm("l2")
    assert (fgsm.norm, fgsm.eps, fgsm.step_size) == ("l2", pytest.approx(0.5), pytest.approx(1.25 * 0.5))
    with pytest.raises(RobgenError, match="unknown norm 'l1'; use linf or l2"):
        spec.in_norm("l1")


def test_what_each_attack_needs_to_run(monkeypatch):
    get = ATTACKS.get
    assert A.unavailable(get("pgd20"), 2) is None and A.unavailable(get("apgd-ce"), 3) is None
    assert A.unavailable(get("apgd-t"), 4) is None
    for name in ("apgd-t", "autoattack"):
        assert A.unavailable(get(name), 3) == (f"attack {name!r} needs at least 4 classes (its DLR loss), the model "
                                               "has 3")
    real = A.importlib.util.find_spec
    monkeypatch.setattr(A.importlib.util, "find_spec", lambda n: None if n == "torchattacks" else real(n))
    assert A.unavailable(get("apgd-ce"), 10) == ("attack 'apgd-ce' needs the torchattacks package: pip install "
                                                 "'robgen[attacks]'")
    with pytest.raises(RobgenError, match="needs the torchattacks package"):
        A._torchattacks(get("apgd-ce"), linear_model(), 10, 0)
    monkeypatch.setattr(A, "reference_autoattack", lambda: ("pyautoattack", "0.2.0"))
    assert A.unavailable(get("autoattack"), 10) is None  # the reference needs no torchattacks
    assert A.unavailable(get("apgd-ce"), 10) is not None


def test_reference_autoattack_is_found_by_either_install_name(monkeypatch):
    if A.reference_autoattack() is None:  # nothing installed here
        monkeypatch.setitem(sys.modules, "autoattack", types.ModuleType("autoattack"))  # the git install's name
        assert A.reference_autoattack() == ("autoattack", "unknown")  # no package metadata for a bare module
    name, version = A.reference_autoattack()
    assert name in A.REFERENCE_AUTOATTACK and version


def test_the_torchattacks_chain_has_the_documented_settings():
    model = linear_model()
    spec = AttackSpec("autoattack", eps=0.5, steps=7, norm="l2")
    chain = A._torchattacks(spec, model, 5, 11)
    apgd_ce, apgd_t, fab, square = chain.attacks
    assert [type(a).__name__ for a in chain.attacks] == ["APGD", "APGDT", "FAB", "Square"]
    for part in chain.attacks:
        assert (part.norm, part.eps, part.seed) == ("L2", 0.5, 11)
    assert (apgd_ce.steps, apgd_ce.loss, apgd_t.steps, apgd_t.n_target_classes) == (7, "ce", 7, 4)
    assert (fab.steps, fab.multi_targeted, fab.n_target_classes, square.n_queries) == (7, True, 4, 5000)
    one = A._torchattacks(AttackSpec("apgd-ce", eps=8 / 255, steps=3), model, 5, 2)
    assert (type(one).__name__, one.norm, one.steps) == ("APGD", "Linf", 3)
    assert type(A._torchattacks(AttackSpec("apgd-t", steps=3), model, 5, 2)).__name__ == "APGDT"


def test_torchattacks_get_a_seed_drawn_from_the_generator(monkeypatch):
    seen = []
    monkeypatch.setattr(A, "_torchattacks", lambda spec, model, k, seed: seen.append(seed) or (lambda x, y: x))
    model, (x, y) = linear_model(), batch()
    torch.manual_seed(99)
    A.run_attack("apgd-ce", model, x, y, num_classes=5, generator=gen(4))
    assert seen == [int(torch.randint(0, 2**31 - 1, (1,), generator=gen(4)))]


def test_the_reference_autoattack_gets_the_spec_and_only_autoattack_goes_there(monkeypatch):
    calls = []
    monkeypatch.setattr(A, "reference_autoattack", lambda: ("pyautoattack", "0.2.0"))
    monkeypatch.setattr(A, "_reference_autoattack", lambda *args: calls.append(args) or args[2])
    monkeypatch.setattr(A, "_torchattacks", lambda spec, model, k, seed: calls.append(spec.method) or (lambda x, y: x))
    model, (x, y) = linear_model(), batch()
    spec = ATTACKS.get("autoattack").replace(eps=0.1)
    A.run_attack(spec, model, x, y, num_classes=5, generator=gen(4))
    A.run_attack("apgd-ce", model, x, y, num_classes=5, generator=gen(4))
    (args, method) = calls
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen(4)))
    assert args[:2] == (spec, model) and args[2] is x and args[3] is y and args[4:] == (5, seed)
    assert method == "apgd-ce"


def test_the_engine_report_says_which_code_ran(monkeypatch):
    assert A.attack_engine(ATTACKS.get("pgd20")) == {"engine": "robgen"}
    version = A.importlib.metadata.version("torchattacks")
    monkeypatch.setattr(A, "reference_autoattack", lambda: None)
    assert A.attack_engine(ATTACKS.get("apgd-ce")) == {"engine": f"torchattacks {version}"}
    assert A.attack_engine(ATTACKS.get("autoattack").replace(steps=10)) == {
        "engine": f"torchattacks {version}",
        "version": "standard chain (APGD-CE, APGD-T, FAB-T at 10 iterations, Square 5000 queries)",
        "note": "fallback: the reference AutoAttack is not installed (pip install 'robgen[autoattack]' for the number "
                "RobustBench reports)"}
    real = A.importlib.util.find_spec
    monkeypatch.setattr(A.importlib.util, "find_spec", lambda n: None if n == "torchattacks" else real(n))
    assert A.attack_engine(ATTACKS.get("apgd-t")) == {"engine": "torchattacks missing"}
    monkeypatch.setattr(A, "reference_autoattack", lambda: ("pyautoattack", "0.2.0"))
    note = "the reference AutoAttack (Croce & Hein 2020)"
    assert A.attack_engine(ATTACKS.get("autoattack")) == {"engine": "pyautoattack 0.2.0", "version": "standard",
                                                          "note": note}
    assert A.attack_engine(ATTACKS.get("autoattack").replace(steps=10))["version"] == \
        "standard, 10 iterations instead of 100"
    assert A.attack_engine(ATTACKS.get("apgd-ce")) == {"engine": "torchattacks missing"}


def test_a_targeted_step_descends_the_targets_cross_entropy():
    model, (x, _) = linear_model(), batch()
    target = torch.full((6,), 2)
    x_adv = A.pgd(model, x, target, eps=0.2, step_size=0.05, steps=3, targeted=True, start=None)
    with torch.no_grad():
        assert (energy.cross_entropy(model(x_adv), target) < energy.cross_entropy(model(x), target)).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_reference_autoattack_is_a_direct_call_of_its_standard_version(norm):
    """robgen's reference engine = pyautoattack's standard version called by hand with the same radius, norm, seed,
    iterations and targets (all four attacks, each on the points still robust); a 5-class model gets 4 targets."""
    pyautoattack = pytest.importorskip("pyautoattack")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 5)).eval()  # Square needs more than 4 x 4 pixels
    x = torch.rand(8, 3, 16, 16, generator=gen(1))
    y = model(x).argmax(1)  # every point starts correctly classified
    spec = ATTACKS.get("autoattack").replace(steps=2, norm=norm, eps=8 / 255 if norm == "linf" else 0.5)
    ours = A._reference_autoattack(spec, model, x, y, num_classes=5, seed=7)
    direct = pyautoattack.AutoAttack(model, norm="Linf" if norm == "linf" else "L2", eps=spec.eps, version="standard",
                                     seed=7, device=x.device)
    direct.apgd_targeted.n_target_classes = direct.fab.n_target_classes = 4
    direct.apgd.n_iter = direct.apgd_targeted.n_iter = direct.fab.n_iter = 2
    expected, _ = direct.run_standard_evaluation(x, y, batch_size=len(x))
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, x) and not ours.requires_grad
    radius = (ours - x).abs().amax() if norm == "linf" else (ours - x).flatten(1).norm(dim=1).max()
    assert radius <= spec.eps + 1e-5


def test_the_engine_variable_chooses_the_torchattacks_chain_and_the_report_says_so(monkeypatch):
    spec = ATTACKS.get("autoattack")
    monkeypatch.setenv(A.ENGINE_VARIABLE, "torchattacks")
    assert A.reference_autoattack() is None
    report = A.attack_engine(spec)
    assert report["engine"].startswith("torchattacks ")
    assert report["note"] == "chosen by $ROBGEN_AUTOATTACK_ENGINE=torchattacks, instead of the reference AutoAttack"
    monkeypatch.setenv(A.ENGINE_VARIABLE, "reference")
    if A.reference_autoattack() is not None:
        assert A.attack_engine(spec)["engine"].startswith(A.reference_autoattack()[0])
    monkeypatch.setenv(A.ENGINE_VARIABLE, "fab")
    with pytest.raises(RobgenError) as err:
        A.reference_autoattack()
    assert str(err.value) == "$ROBGEN_AUTOATTACK_ENGINE='fab': use reference or torchattacks"


class FakeGitAutoAttack:
    """The git install's API (`import autoattack`): verbose= in the constructor, bs= in run_standard_evaluation."""

    made: list = []

    def __init__(self, model, **kwargs):
        self.model, self.kwargs = model, kwargs
        self.apgd, self.apgd_targeted, self.fab = (types.SimpleNamespace(n_iter=None, n_target_classes=None)
                                                   for _ in range(3))
        FakeGitAutoAttack.made.append(self)

    def run_standard_evaluation(self, x, y, bs):
        self.ran = (x, y, bs)
        return x + 0.25


@pytest.mark.parametrize("classes, targets", [(5, 4), (12, 9)])
def test_the_git_installs_autoattack_gets_the_same_standard_call(monkeypatch, classes, targets):
    monkeypatch.setitem(sys.modules, "autoattack", types.SimpleNamespace(AutoAttack=FakeGitAutoAttack,
                                                                         __name__="autoattack"))
    monkeypatch.setattr(A, "reference_autoattack", lambda: ("autoattack", "0.1"))
    FakeGitAutoAttack.made = []
    model, x, y = nn.Identity(), torch.rand(3, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2])
    spec = ATTACKS.get("autoattack").replace(steps=7, norm="l2", eps=0.5)
    out = A._reference_autoattack(spec, model, x, y, num_classes=classes, seed=11)
    (adversary,) = FakeGitAutoAttack.made
    assert adversary.model is model and adversary.kwargs == dict(norm="L2", eps=0.5, version="standard", seed=11,
                                                                 verbose=False, device=x.device)
    assert adversary.verbose is False
    assert adversary.apgd_targeted.n_target_classes == adversary.fab.n_target_classes == targets
    assert adversary.apgd.n_iter == adversary.apgd_targeted.n_iter == adversary.fab.n_iter == 7
    ran_x, ran_y, bs = adversary.ran
    assert ran_x.dtype == torch.float32 and torch.equal(ran_x, x.float()) and ran_y is y and bs == 3
    assert torch.equal(out, x.float() + 0.25)


def test_the_reference_engines_version_when_its_metadata_is_missing(monkeypatch):
    pytest.importorskip("pyautoattack")
    monkeypatch.delitem(sys.modules, "pyautoattack", raising=False)  # found on the path, not yet imported
    assert A.reference_autoattack() == ("pyautoattack", A.importlib.metadata.version("pyautoattack"))

    def no_metadata(name):
        raise A.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(A.importlib.metadata, "version", no_metadata)  # e.g. a source checkout on PYTHONPATH
    assert A.reference_autoattack() == ("pyautoattack", "unknown")


def test_random_draws_take_the_dtype_of_what_they_perturb():
    like = torch.zeros(2, dtype=torch.float64)
    for draw in (A._randn, A._rand):
        assert draw((2, 3), torch.Generator().manual_seed(0), like).dtype == torch.float64
