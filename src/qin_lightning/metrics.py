"""Metrics of the challenge: AUC (torchmetrics) and logloss with the FuxiCTR clipping eps = 1e-7."""

from __future__ import annotations

import torch
from torchmetrics import Metric

LOGLOSS_EPS = 1e-7


class BinaryLogLoss(Metric):
    """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps] (sklearn/FuxiCTR ``log_loss``)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, eps: float = LOGLOSS_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:  # (B,), (B,)
        p = probs.detach().double().clamp(self.eps, 1.0 - self.eps)
        y = target.detach().double()
        self.total += -(y * p.log() + (1.0 - y) * (1.0 - p).log()).sum()
        self.count += y.numel()

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()
