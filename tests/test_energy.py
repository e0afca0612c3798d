import math

import pytest
import torch
import torch.nn.functional as F

from robgen import energy


LOGITS = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 3.0, 0.5]])
Y = torch.tensor([1, 0, 2])


def test_energies_match_hand_computed_values():
    assert energy.joint_energy(LOGITS, Y).tolist() == [-2.0, -0.0, -0.5]
    expected_marginal = [
        -math.log(math.e + math.e**2 + 1),
        -math.log(3.0),
        -math.log(math.exp(-1) + math.exp(3) + math.exp(0.5)),
    ]
    assert energy.marginal_energy(LOGITS).tolist() == pytest.approx(expected_marginal, rel=1e-6)


def test_probabilities_are_boltzmann_in_the_joint_energy():
    joint_all = -LOGITS
    boltzmann = torch.exp(-joint_all) / torch.exp(-joint_all).sum(1, keepdim=True)
    assert torch.allclose(energy.class_probs(LOGITS), boltzmann)


def test_cross_entropy_is_joint_minus_marginal():
    logits = torch.randn(16, 10, generator=torch.Generator().manual_seed(0)) * 5
    y = torch.randint(0, 10, (16,))
    ce = energy.joint_energy(logits, y) - energy.marginal_energy(logits)
    assert torch.allclose(energy.cross_entropy(logits, y), ce)
    assert torch.allclose(ce, F.cross_entropy(logits, y, reduction="none"), atol=1e-5)


def test_deltas_are_signed_clean_minus_adversarial():
    clean, adv = LOGITS, LOGITS + torch.tensor([[0.0, 1.0, 0.0]])
    assert torch.allclose(energy.delta_joint(clean, adv, Y), torch.tensor([1.0, 0.0, 0.0]))
    assert torch.all(energy.delta_marginal(clean, adv) > 0)  # raising a logit lowers E(x*)


def test_weat_weight_formula_and_value_at_zero():
    assert energy.weat_weight(torch.zeros(1, 4) - math.log(4)).item() == pytest.approx(1 / math.log(2), rel=1e-6)
    e = energy.marginal_energy(LOGITS)
    assert torch.allclose(energy.weat_weight(LOGITS), 1 / torch.log(1 + torch.exp(e.abs())))


def test_weat_weight_carries_no_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    assert not energy.weat_weight(logits).requires_grad


def test_trades_kl_splits_into_conditional_term_plus_delta_marginal():
    g = torch.Generator().manual_seed(1)
    clean, adv = torch.randn(32, 10, generator=g) * 3, torch.randn(32, 10, generator=g) * 3
    kl = energy.trades_kl(clean, adv)
    reference = F.kl_div(adv.log_softmax(1), clean.log_softmax(1), reduction="none", log_target=True).sum(1)
    assert torch.allclose(kl, reference, atol=1e-5)
    conditional, delta = energy.trades_kl_terms(clean, adv)
    assert torch.allclose(conditional + delta, kl, atol=1e-5)
    assert torch.allclose(delta, energy.delta_marginal(clean, adv))


def test_target_energies_registry():
    assert energy.TARGET_ENERGIES.names() == ["ce", "joint", "marginal"]
    assert torch.equal(energy.TARGET_ENERGIES.get("joint")(LOGITS, Y), energy.joint_energy(LOGITS, Y))
