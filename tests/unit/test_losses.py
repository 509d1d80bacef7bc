"""The loss registry (`objectives.losses`): focal loss per sample, its alpha weights keeping the
loss scale, L1 on one-hot targets, and one-line errors for unknown names."""

import pytest
import torch
import torch.nn.functional as F

from objectives.losses import FocalLoss, build_loss, class_weights


def test_focal_gamma0_alpha_none_equals_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(64, 5) * 3
    target = torch.randint(0, 5, (64,))
    focal = build_loss("focal", class_counts=[10] * 5, gamma=0.0, alpha="none")
    assert torch.allclose(focal(logits, target), F.cross_entropy(logits, target), atol=1e-6, rtol=0)


def test_focal_is_per_sample_not_batch_mean_scaled():
    """The DR lab scaled the batch-mean CE by (1 - exp(-CE))^gamma; per-sample focal differs."""
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]])
    target = torch.tensor([0, 0])  # one easy, one hard sample
    gamma = 2.0
    ce = F.cross_entropy(logits, target, reduction="none")
    expected = ((1 - torch.exp(-ce)) ** gamma * ce).mean()
    lab_version = (1 - torch.exp(-ce.mean())) ** gamma * ce.mean()
    got = FocalLoss(gamma)(logits, target)
    assert torch.allclose(got, expected, atol=1e-6)
    assert not torch.allclose(got, lab_version, atol=1e-3)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 5.0])
@pytest.mark.parametrize("alpha", ["none", "inverse_frequency", "effective_number"])
def test_focal_gradients_finite_for_extreme_logits(gamma, alpha):
    logits = torch.tensor([[1e4, -1e4, 0.0, 0.0, 0.0], [-1e4, 1e4, 0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 0])  # one certain-right, one certain-wrong
    loss = build_loss("focal", class_counts=[73, 7, 15, 3, 2], gamma=gamma, alpha=alpha)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()


def test_alpha_weights_average_one_over_the_training_distribution_and_order():
    """Reweighting must not change the step size: the expected weight of a training sample is 1
    (weights that sum to K average ~0.24 over this 73 %-majority mix and quarter the lr)."""
    counts = [730, 70, 150, 25, 25]
    share = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    for kind in ("none", "inverse_frequency", "effective_number"):
        w = class_weights(kind, counts)
        assert w.shape == (5,)
        assert (share * w.double()).sum().item() == pytest.approx(1.0, rel=1e-6)
    inv = class_weights("inverse_frequency", counts)
    assert inv[0] < inv[2] < inv[1] < inv[3]  # rarer class, larger weight
    assert inv[1] / inv[0] == pytest.approx(730 / 70, rel=1e-5)
    assert inv[0].item() == pytest.approx(1000 / (5 * 730), rel=1e-5)  # N / (K n_c)
    eff = class_weights("effective_number", counts)
    # effective number flattens the weights of inverse frequency
    assert (eff.max() / eff.min()) < (inv.max() / inv.min())
    assert torch.equal(class_weights("none", counts), torch.ones(5))


def test_weighted_focal_keeps_the_loss_scale_of_cross_entropy():
    """With gamma 0, the mean alpha-weighted loss over a batch drawn from the training mix has the
    scale of plain cross entropy (within sampling noise), not a quarter of it."""
    counts = [730, 70, 150, 25, 25]
    g = torch.Generator().manual_seed(0)
    target = torch.multinomial(torch.tensor(counts, dtype=torch.float), 20000, replacement=True, generator=g)
    logits = torch.zeros(len(target), 5)  # every sample's CE is log 5: the ratio is the mean weight
    weighted = build_loss("focal", class_counts=counts, gamma=0.0, alpha="inverse_frequency")(logits, target)
    assert weighted.item() / F.cross_entropy(logits, target).item() == pytest.approx(1.0, abs=0.05)


def test_alpha_scales_each_sample_by_its_class_weight():
    logits = torch.randn(8, 3)
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    w = class_weights("inverse_frequency", [4, 2, 2])
    got = FocalLoss(0.0, w)(logits, target)
    expected = (F.cross_entropy(logits, target, reduction="none") * w[target]).mean()
    assert torch.allclose(got, expected, atol=1e-6)


def test_l1_on_one_hot():
    logits = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    target = torch.tensor([0, 1])
    loss = build_loss("l1", class_counts=[1, 1])
    assert loss(logits, target).item() == pytest.approx((0 + 0 + 0.5 + 0.5) / 4)


def test_unknown_loss_and_alpha():
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge", class_counts=[1])
    with pytest.raises(ValueError, match="unknown focal alpha"):
        class_weights("sqrt", [1, 2])
