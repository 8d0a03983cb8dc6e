"""Metrics of the challenge: AUC (torchmetrics), logloss with the FuxiCTR clipping eps = 1e-7, and gAUC.

gAUC (group AUC, the MicroLens/FuxiCTR definition): AUC computed per user, averaged with weights = the user's
number of impressions, over users that have both a positive and a negative impression.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc

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


def group_auc(user: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """(gAUC, number of users counted): impression-weighted mean of per-user AUCs, one-class users skipped.

    Vectorised (one lexsort + segment sums): within each user, AUC = (sum of positive ranks - P(P+1)/2) / (P N)
    with tied scores sharing their average rank (Mann-Whitney U, = ROC AUC with ties counted 1/2).
    """
    n = len(user)
    if n == 0:
        return math.nan, 0
    order = np.lexsort((scores, user))  # by user, then score
    u, y, s = user[order], labels[order].astype(np.float64), scores[order]
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new_run = new_user.copy()  # a run = equal (user, score)
    new_run[1:] |= s[1:] != s[:-1]
    pos = np.arange(1, n + 1, dtype=np.float64)  # global 1-based positions
    run_id = np.cumsum(new_run) - 1
    run_start = pos[new_run]
    run_end = np.append(run_start[1:] - 1.0, float(n))
    avg_pos = ((run_start + run_end) / 2.0)[run_id]  # tie-averaged position
    group = np.cumsum(new_user) - 1
    rank = avg_pos - (pos[new_user][group] - 1.0)  # 1-based rank within the user
    count = np.bincount(group).astype(np.float64)
    npos = np.bincount(group, weights=y)
    nneg = count - npos
    rank_pos = np.bincount(group, weights=rank * y)
    both = (npos > 0) & (nneg > 0)
    if not both.any():
        return math.nan, 0
    auc = (rank_pos[both] - npos[both] * (npos[both] + 1.0) / 2.0) / (npos[both] * nneg[both])
    weight = count[both]
    return float((auc * weight).sum() / weight.sum()), int(both.sum())


def split_metrics(probs: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, Any]:
    """AUC, logloss, gAUC and the number of users gAUC counted, of one split's probabilities."""
    gauc, gauc_users = group_auc(users, labels, probs)
    return {
        "auc": float(binary_auroc(torch.from_numpy(probs), torch.from_numpy(labels).long())),
        "logloss": float(BinaryLogLoss()(torch.from_numpy(probs), torch.from_numpy(labels))),
        "gauc": gauc,
        "gauc_users": gauc_users,
    }
