"""training/metrics.py: logloss with the FuxiCTR clipping, gAUC against a per-user loop, split metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from qin_lightning.training.metrics import BinaryLogLoss, group_auc, split_metrics


def _loop_gauc(user: np.ndarray, label: np.ndarray, score: np.ndarray) -> float:
    num = den = 0.0
    for u in np.unique(user):
        m = user == u
        if 0 < label[m].sum() < m.sum():
            auc = float(binary_auroc(torch.from_numpy(score[m]), torch.from_numpy(label[m]).long()))
            num, den = num + auc * m.sum(), den + m.sum()
    return num / den


def test_group_auc_matches_per_user_loop() -> None:
    rng = np.random.default_rng(0)
    n = 3000
    user = rng.integers(0, 200, n)
    label = (rng.random(n) < 0.3).astype(np.float32)
    score = np.round(rng.random(n), 2).astype(np.float32)  # many ties
    label[user == 7] = 1.0  # a one-class user: skipped
    gauc, users = group_auc(user, label, score)
    assert gauc == pytest.approx(_loop_gauc(user, label, score), abs=1e-6)
    assert users == sum(1 for u in np.unique(user) if 0 < label[user == u].sum() < (user == u).sum())
    assert np.isnan(group_auc(np.zeros(4, int), np.ones(4), np.arange(4.0))[0])


def test_logloss_clips_like_fuxictr() -> None:
    probs, labels = torch.tensor([0.0, 1.0, 0.25]), torch.tensor([1.0, 0.0, 1.0])
    eps = 1e-7
    expected = -(np.log(eps) + np.log(eps) + np.log(0.25)) / 3
    assert float(BinaryLogLoss()(probs, labels)) == pytest.approx(expected, rel=1e-6)


def test_split_metrics_of_a_small_split() -> None:
    probs = np.array([0.9, 0.2, 0.6, 0.4], dtype=np.float32)
    labels = np.array([1.0, 0.0, 0.0, 1.0], dtype=np.float32)
    users = np.array([0, 0, 1, 1])
    m = split_metrics(probs, labels, users)
    assert m["auc"] == pytest.approx(0.75) and m["gauc"] == pytest.approx(0.5) and m["gauc_users"] == 2
