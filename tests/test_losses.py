import math

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

import torch
import torch.nn.functional as F

from clipdetect.models.losses import (
    LOSS_NAMES,
    AUCLoss,
    BCELoss,
    CombinedLoss,
    CVaRLoss,
    create_loss,
    cvar,
)


def _batch(n=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, generator=g, dtype=dtype)
    targets = torch.zeros(n, dtype=dtype)
    targets[torch.randperm(n, generator=g)[: n // 2]] = 1
    return logits, targets


def _ru_objective(lam, losses, alpha):
    return lam + np.maximum(0.0, losses - lam).sum() / (alpha * len(losses))


def _ru_minimum(losses, alpha):
    res = minimize_scalar(
        _ru_objective, bounds=(losses.min() - 1, losses.max() + 1), args=(losses, alpha),
        method="bounded", options={"xatol": 1e-12, "maxiter": 2000},
    )
    return res.fun


def test_bce_matches_torch():
    logits, targets = _batch()
    assert torch.allclose(BCELoss()(logits, targets), F.binary_cross_entropy_with_logits(logits, targets))


def test_cvar_integer_alpha_n_is_mean_of_worst():
    logits, targets = _batch(n=40)
    per_sample = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    worst = torch.sort(per_sample, descending=True).values[:32]
    assert torch.allclose(CVaRLoss(alpha=0.8)(logits, targets), worst.mean())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("alpha", [0.8, 0.33, 0.05, 0.71])
def test_cvar_matches_rockafellar_uryasev_minimum(seed, alpha):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(7, 30))
    losses = rng.exponential(size=n)
    expected = _ru_minimum(losses, alpha)
    got = float(cvar(torch.tensor(losses), alpha))
    assert got == pytest.approx(expected, abs=1e-5)
    # the top-k formula, evaluated directly
    m, srt = alpha * n, np.sort(losses)[::-1]
    k = math.floor(m)
    assert got == pytest.approx((srt[:k].sum() + (m - k) * srt[k]) / m, abs=1e-12)


def test_cvar_alpha_one_is_mean_and_small_alpha_is_max():
    losses = torch.tensor([0.3, 2.0, 1.1, 0.7])
    assert torch.allclose(cvar(losses, 1.0), losses.mean())
    assert torch.allclose(cvar(losses, 0.1), losses.max())
    logits, targets = _batch()
    assert torch.allclose(CVaRLoss(alpha=1.0)(logits, targets), BCELoss()(logits, targets))


def test_cvar_gradient_support_and_finite_differences():
    losses = torch.tensor([0.5, 3.0, 1.0, 2.0, 0.1, 1.5, 0.2, 2.5, 0.05, 0.9], dtype=torch.float64)
    losses.requires_grad_(True)
    alpha = 0.45  # m = 4.5, k = 4: weights 1/m on the worst 4, 0.5/m on the 5th, 0 elsewhere
    cvar(losses, alpha).backward()
    order = torch.argsort(losses.detach(), descending=True)
    grad = losses.grad[order]
    m = 4.5
    expected = torch.tensor([1 / m] * 4 + [0.5 / m] + [0.0] * 5, dtype=torch.float64)
    assert torch.allclose(grad, expected)

    logits, targets = _batch(n=12, seed=3)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: CVaRLoss(alpha=0.7)(z, targets), (logits,))


def test_cvar_gradient_zero_on_best_samples():
    logits, targets = _batch(n=20, seed=1)
    logits.requires_grad_(True)
    CVaRLoss(alpha=0.8)(logits, targets).backward()
    per_sample = F.binary_cross_entropy_with_logits(logits.detach(), targets, reduction="none")
    best = torch.argsort(per_sample)[:4]
    assert torch.all(logits.grad[best] == 0)
    assert torch.count_nonzero(logits.grad) == 16


def test_auc_matches_brute_force():
    logits, targets = _batch(n=9, seed=2)
    margin, p = 0.6, 2
    total, pairs = 0.0, 0
    for i in range(9):
        for j in range(9):
            if targets[i] == 1 and targets[j] == 0:
                total += max(0.0, margin - float(logits[i] - logits[j])) ** p
                pairs += 1
    assert float(AUCLoss(margin=margin, p=p)(logits, targets)) == pytest.approx(total / pairs, rel=1e-12)
    # p = 1 and a different margin
    brute = np.mean([max(0.0, 1.0 - float(logits[i] - logits[j]))
                     for i in range(9) for j in range(9) if targets[i] == 1 and targets[j] == 0])
    assert float(AUCLoss(margin=1.0, p=1)(logits, targets)) == pytest.approx(brute, rel=1e-12)


def test_auc_loss_large_batch_is_finite():
    logits, targets = _batch(n=2048, dtype=torch.float32)
    assert torch.isfinite(AUCLoss()(logits, targets))


@pytest.mark.parametrize("loss", [AUCLoss(), CombinedLoss()])
@pytest.mark.parametrize("label", [0, 1])
def test_one_class_batch_raises(loss, label):
    logits = torch.randn(6)
    targets = torch.full((6,), float(label))
    with pytest.raises(ValueError, match="sampler") as info:
        loss(logits, targets)
    n_fake = 6 if label == 1 else 0
    assert f"{n_fake} fake" in str(info.value) and f"{6 - n_fake} real" in str(info.value)


def test_pure_cvar_combined_accepts_one_class_batch():
    logits, targets = torch.randn(6), torch.ones(6)
    assert torch.allclose(CombinedLoss(gamma=1.0)(logits, targets), CVaRLoss()(logits, targets))


@pytest.mark.parametrize("loss", [BCELoss(), CVaRLoss(), AUCLoss(), CombinedLoss()])
def test_input_validation(loss):
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):
        loss(torch.randn(4), torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="shape"):
        loss(torch.randn(4), torch.tensor([0.0, 1.0, 1.0]))


@pytest.mark.parametrize("gamma", [0.0, 0.1, 0.5, 1.0])
def test_combined_is_convex_combination(gamma):
    logits, targets = _batch(seed=4)
    combined = CombinedLoss(gamma=gamma, alpha=0.7, margin=0.5, p=2)(logits, targets)
    expected = gamma * CVaRLoss(alpha=0.7)(logits, targets) + (1 - gamma) * AUCLoss(0.5, 2)(logits, targets)
    assert torch.allclose(combined, expected)


def test_create_loss():
    assert isinstance(create_loss("bce"), BCELoss)
    assert create_loss("cvar", alpha=0.5).alpha == 0.5
    assert isinstance(create_loss("auc", margin=1.0), AUCLoss)
    assert isinstance(create_loss("cvar+auc", gamma=0.2), CombinedLoss)
    assert isinstance(create_loss("combined"), CombinedLoss)
    assert set(LOSS_NAMES) == {"bce", "cvar", "auc", "cvar+auc", "combined"}
    with pytest.raises(ValueError, match="cvar\\+auc"):
        create_loss("focal")
    with pytest.raises(ValueError, match="alpha"):
        create_loss("cvar", alpha=0.0)
    with pytest.raises(ValueError):
        create_loss("bce", alpha=0.5)


def test_trusted_batches_give_the_same_loss_without_host_checks():
    """Inside ``trusted_batches`` (the trainer on a GPU) the combined loss takes its masked,
    read-back-free form: the same value and gradient as the checked form."""
    from clipdetect.models.losses import CombinedLoss, trusted_batches

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, generator=g, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(64, generator=g) < 0.3).double()
    loss = CombinedLoss(gamma=0.3)
    ref = loss(logits, y)
    (g_ref,) = torch.autograd.grad(ref, logits)
    with trusted_batches():
        got = loss(logits, y)
        (g_got,) = torch.autograd.grad(got, logits)
        loss(logits, torch.full_like(y, 2.0))  # value checks are off: no error, no read-back
    assert torch.allclose(got, ref, rtol=1e-12) and torch.allclose(g_got, g_ref, rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="0 \\(real\\) or 1"):  # and back on after the block
        loss(logits, torch.full_like(y, 2.0))


def test_group_pairs_rank_a_fake_against_its_own_reals_only():
    from clipdetect.models.losses import pairwise_auc_loss

    s = torch.tensor([0.0, 1.0, 5.0, -4.0])
    fake = torch.tensor([False, True, False, True])
    groups = torch.tensor([0, 0, 1, 1])
    want = (torch.clamp(0.6 - (s[1] - s[0]), min=0) ** 2 + torch.clamp(0.6 - (s[3] - s[2]), min=0) ** 2) / 2
    assert torch.allclose(pairwise_auc_loss(s, fake, groups=groups), want)
    # no pair inside any group: no ranking term
    assert pairwise_auc_loss(s, fake, groups=torch.tensor([0, 1, 2, 3])).item() == 0.0
    combined = create_loss("cvar+auc", gamma=0.0)
    assert torch.allclose(combined(s, fake.float(), groups=groups), want)
