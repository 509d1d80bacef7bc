"""The loss registry: cross entropy, focal loss and L1 on one-hot targets.

One place builds every loss, so the training loop is written once for all of them (the source labs
copied `train_batch` per loss). Focal loss is computed per sample from log-softmax and only then
averaged; the DR lab scaled the batch-mean cross entropy instead, which is not focal loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

ALPHA_KINDS = ("none", "inverse_frequency", "effective_number")
EFFECTIVE_NUMBER_BETA = 0.999


def class_weights(kind: str, class_counts: Sequence[int], beta: float = EFFECTIVE_NUMBER_BETA) -> torch.Tensor:
    """Per-class alpha for focal loss, scaled so that the expected weight of a training sample is 1.

    - ``none``: every class 1.
    - ``inverse_frequency``: proportional to 1 / n_c.
    - ``effective_number``: proportional to (1 - beta) / (1 - beta ** n_c), the class-balanced
      weighting of Cui et al. (CVPR 2019), which flattens inverse frequency for large classes.

    Why that scale: weights that merely sum to K (the class count) average about 0.24 over DR's
    73 %-majority distribution, so alpha would also quarter the learning rate and an ablation of
    alpha would confound reweighting with step size. With sum_c p_c w_c = 1 (p_c the training
    share of class c) the mean loss keeps its scale and only the balance between classes moves.
    A class with no training sample is counted as one sample so its weight stays finite.
    """
    if kind not in ALPHA_KINDS:
        raise ValueError(f"unknown focal alpha {kind!r}; expected one of {', '.join(ALPHA_KINDS)}")
    counts = torch.tensor([max(int(c), 1) for c in class_counts], dtype=torch.float64)
    if kind == "none":
        raw = torch.ones_like(counts)
    elif kind == "inverse_frequency":
        raw = 1.0 / counts
    else:
        raw = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    share = counts / counts.sum()
    return (raw / (share * raw).sum()).to(torch.float32)


class FocalLoss(nn.Module):
    """``FL = -alpha_t (1 - p_t)^gamma log p_t`` per sample, then the mean over the batch.

    With gamma = 0 and alpha all ones this is exactly cross entropy. ``1 - p_t`` is computed as
    ``-expm1(log p_t)`` and clamped away from 0 so that gamma < 1 keeps finite gradients when a
    logit dominates (p_t == 1 in floating point).
    """

    alpha: torch.Tensor | None  # a buffer (register_buffer), so it follows the module's device

    def __init__(self, gamma: float, alpha: torch.Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.register_buffer("alpha", alpha if alpha is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1)
        log_pt = log_p.gather(1, target[:, None]).squeeze(1)
        loss = -log_pt
        if self.gamma != 0.0:
            one_minus_pt = (-torch.expm1(log_pt)).clamp_min(1e-12)
            loss = loss * one_minus_pt.pow(self.gamma)
        if self.alpha is not None:
            loss = loss * self.alpha[target]
        return loss.mean()


class OneHotL1Loss(nn.Module):
    """Mean absolute difference between the raw outputs and one-hot targets (the CIFAR lab's L1)."""

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(target, logits.shape[1]).to(torch.float32)
        return F.l1_loss(logits.float(), one_hot)


def _cross_entropy(gamma: float, alpha: str, counts: Sequence[int]) -> nn.Module:
    return nn.CrossEntropyLoss()


def _focal(gamma: float, alpha: str, counts: Sequence[int]) -> nn.Module:
    weights = None if alpha == "none" else class_weights(alpha, counts)
    return FocalLoss(gamma, weights)


def _l1(gamma: float, alpha: str, counts: Sequence[int]) -> nn.Module:
    return OneHotL1Loss()


LOSSES: dict[str, Callable[[float, str, Sequence[int]], nn.Module]] = {
    "ce": _cross_entropy,
    "focal": _focal,
    "l1": _l1,
}


def build_loss(name: str, *, class_counts: Sequence[int], gamma: float = 0.0, alpha: str = "none") -> nn.Module:
    """The loss `name` from the registry; focal's alpha weights come from the training counts."""
    try:
        factory = LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}") from None
    return factory(gamma, alpha, class_counts)
