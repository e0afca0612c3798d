"""robgen.train.losses' two steps against their contracts: the inner attack (eval mode, the loss's own objective and
start, the clean logits computed once and handed on) and the outer loss (train mode, the forwards each loss needs,
(1/B) sum_i w_i l_i)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robgen.attacks import pgd
from robgen.train import LOSSES, adversarial, batch_loss


class Net(nn.Module):
    """Linear logits after a BatchNorm, recording the inputs and mode of every forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.bn = nn.BatchNorm1d(12)
        self.fc = nn.Linear(12, 4)
        self.seen: list[tuple[torch.Tensor, bool]] = []

    def forward(self, x):
        self.seen.append((x.detach().clone(), self.training))
        return self.fc(self.bn(x.flatten(1)))


def batch():
    g = torch.Generator().manual_seed(1)
    return 0.2 + 0.6 * torch.rand(8, 3, 2, 2, generator=g), torch.arange(8) % 4


@pytest.mark.parametrize("name", ["sat", "trades", "weat-adv", "weat-nat", "mart"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_inner_attack_is_the_losss_pgd_in_eval_mode(name, norm):
    model, (x, y) = Net().train(), batch()
    loss = LOSSES.get(name)
    x_adv, clean = adversarial(model, x, y, loss, eps=0.1, step_size=0.03, steps=2, norm=norm,
                               generator=torch.Generator().manual_seed(5))
    assert not model.training and all(not training for _, training in model.seen)
    assert torch.equal(model.seen[0][0], x)  # the clean forward comes first, once
    with torch.no_grad():
        torch.testing.assert_close(clean, model(x))
    want = pgd(model, x, y, eps=0.1, step_size=0.03, steps=2, norm=norm, objective=loss.objective, start=loss.start,
               clean_logits=clean, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x_adv, want)
    if norm == "linf":  # the default threat model
        again, _ = adversarial(model, x, y, loss, eps=0.1, step_size=0.03, steps=2,
                               generator=torch.Generator().manual_seed(5))
        assert torch.equal(again, want)


def test_the_kl_attack_is_handed_the_clean_logits_not_recomputing_them(monkeypatch):
    import robgen.train.losses as L

    seen = []
    monkeypatch.setattr(L, "pgd", lambda *a, **k: seen.append(k) or a[1])
    model, (x, y) = Net(), batch()
    _, clean = adversarial(model, x, y, LOSSES.get("trades"), eps=0.1, step_size=0.03, steps=3)
    (kwargs,) = seen
    assert kwargs["clean_logits"] is clean and kwargs["objective"] == "kl" and kwargs["start"] == "normal"
    assert (kwargs["eps"], kwargs["step_size"], kwargs["steps"], kwargs["norm"]) == (0.1, 0.03, 3, "linf")
    assert kwargs["generator"] is None


def test_standard_training_attacks_nothing():
    model, (x, y) = Net(), batch()
    x_adv, clean = adversarial(model, x, y, LOSSES.get("standard"), eps=0.1, step_size=0.03, steps=2)
    assert x_adv is x and len(model.seen) == 1 and not model.training
    with torch.no_grad():
        torch.testing.assert_close(clean, model(x))


@pytest.mark.parametrize("name, forwards", [("standard", ["x"]), ("sat", ["adv"]), ("trades", ["x", "adv"]),
                                            ("weat-adv", ["x", "adv"]), ("weat-nat", ["x", "adv"]),
                                            ("mart", ["x", "adv"])])
def test_the_outer_loss_runs_the_forwards_it_needs_in_train_mode(name, forwards):
    model, (x, y) = Net().eval(), batch()
    x_adv = (x + 0.05).clamp(0, 1)
    value, weights = batch_loss(LOSSES.get(name), model, x, x_adv, y, 6.0)
    assert model.training and [("x" if torch.equal(s, x) else "adv") for s, _ in model.seen] == forwards
    assert all(training for _, training in model.seen)
    # the value from the same train-mode logits, computed afresh: (1/B) sum_i w_i l_i
    fresh = Net().train()
    clean = fresh(x) if "x" in forwards else None
    adv = fresh(x_adv) if "adv" in forwards else clean
    per_sample, w = LOSSES.get(name).fn(clean, adv, y, 6.0)
    expected = (per_sample if w is None else w * per_sample).sum() / len(x)
    torch.testing.assert_close(value, expected)
    assert (weights is None) == (w is None) and (w is None or torch.allclose(weights, w))
    assert value.dtype == torch.float32 and value.dim() == 0


def test_weighted_losses_divide_by_the_batch_size_not_the_weights():
    model, (x, y) = Net(), batch()
    value, weights = batch_loss(LOSSES.get("weat-adv"), model, x, (x + 0.05).clamp(0, 1), y, 6.0)
    assert weights.sum() < len(x)  # WEAT weights are below 1: the two normalisations differ
    fresh = Net().train()
    per_sample, w = LOSSES.get("weat-adv").fn(fresh(x), fresh((x + 0.05).clamp(0, 1)), y, 6.0)
    torch.testing.assert_close(value, (w * per_sample).mean())
    assert not torch.allclose(value, (w * per_sample).sum() / w.sum())


def test_a_new_loss_is_one_decorated_function(monkeypatch):
    from robgen.train.losses import Loss, register_loss

    monkeypatch.setattr(LOSSES, "_items", dict(LOSSES._items))  # the registration ends with the test

    def halved(clean, adv, y, beta):
        return adv.sum(1) / 2, None

    assert register_loss("halved", objective="kl", start="normal")(halved) is halved
    assert LOSSES.get("halved") == Loss("halved", "kl", "normal", True, halved)  # the clean logits by default
    register_loss("halved-adv-only", objective="ce", start="uniform", uses_clean=False)(halved)
    assert LOSSES.get("halved-adv-only") == Loss("halved-adv-only", "ce", "uniform", False, halved)
    with pytest.raises(ValueError, match="registered twice"):
        register_loss("halved", objective="kl", start="normal")(halved)
