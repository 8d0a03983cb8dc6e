"""The self-ensemble loss of QNN-alpha (FuxiCTR model_zoo/QNN) as a CTRModule option, for any network."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from test_models import tiny_batch, tiny_tables

from qin_lightning.data.datamodule import Batch
from qin_lightning.models.interaction import QuadraticAlphaNetwork
from qin_lightning.models.qin import QIN
from qin_lightning.training.module import CTRModule


def bce(p: float, y: float) -> float:
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def test_self_ensemble_loss_value_on_a_fixed_batch() -> None:
    logits_1 = [2.0, -1.0, 0.5, -3.0]
    logits_2 = [1.0, 0.5, -0.5, -2.0]
    labels = [1.0, 0.0, 1.0, 0.0]
    expected = 0.0  # p = (p1 + p2) / 2; BCE(p, y) + BCE(p1, p) + BCE(p2, p), each a mean over the batch
    for a, b, y in zip(logits_1, logits_2, labels):
        p1, p2 = sigmoid(a), sigmoid(b)
        p = 0.5 * (p1 + p2)
        expected += (bce(p, y) + bce(p1, p) + bce(p2, p)) / len(labels)
    loss = CTRModule.self_ensemble_loss(torch.tensor(logits_1), torch.tensor(logits_2), torch.tensor(labels))
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # the consistency terms pull towards a detached target: no gradient flows through p into the other pass
    a = torch.tensor(logits_1, requires_grad=True)
    CTRModule.self_ensemble_loss(a, torch.tensor(logits_2), torch.tensor(labels)).backward()
    p1 = torch.sigmoid(a.detach())
    p = 0.5 * (p1 + torch.sigmoid(torch.tensor(logits_2)))
    y = torch.tensor(labels)
    grad_bce = (p - y) / (p * (1 - p)) * 0.5 * p1 * (1 - p1) / 4  # d BCE(p, y) / d a
    grad_consistency = (p1 - p) / 4  # d BCE(sigmoid(a), p.detach()) / d a
    torch.testing.assert_close(a.grad, grad_bce + grad_consistency)


def _module(self_ensemble: bool) -> CTRModule:
    tags, mm, num_tags = tiny_tables()
    net = QIN(tags, mm, num_tags, embedding_dim=4, mm_projection_dim=4,
              interaction=functools.partial(QuadraticAlphaNetwork, field_dim=4, dropout=0.3))
    return CTRModule(net, embedding_l2=0.0, self_ensemble=self_ensemble)


def _batch() -> Batch:
    item_seq, item_id, likes, views = tiny_batch()
    label = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    return Batch(item_seq, item_id, likes, views, label, torch.zeros(6, dtype=torch.long))


def test_training_step_uses_two_passes_and_inference_one() -> None:
    module, batch = _module(self_ensemble=True), _batch()
    calls: list[int] = []
    module.net.register_forward_hook(lambda *args: calls.append(1))
    module.train()
    torch.manual_seed(3)
    loss = module.training_step(batch, 0)
    assert len(calls) == 2
    torch.manual_seed(3)  # the same two dropout draws, by hand
    first = module.net(batch.item_seq, batch.item_id, batch.likes_level, batch.views_level)
    second = module.net(batch.item_seq, batch.item_id, batch.likes_level, batch.views_level)
    assert not torch.allclose(first, second)  # two stochastic passes
    torch.testing.assert_close(loss, CTRModule.self_ensemble_loss(first, second, batch.label))
    calls.clear()
    module.eval()
    with torch.no_grad():
        module.predict_step(batch, 0)
    assert len(calls) == 1


def test_off_by_default_is_plain_bce() -> None:
    module, batch = _module(self_ensemble=False), _batch()
    assert CTRModule(module.net).self_ensemble is False
    module.train()
    torch.manual_seed(3)
    loss = module.training_step(batch, 0)
    torch.manual_seed(3)
    logits = module.net(batch.item_seq, batch.item_id, batch.likes_level, batch.views_level)
    # the default model.bce_input=probability: BCE of the sigmoid's output (tests/test_bce_input.py pins both forms)
    torch.testing.assert_close(loss, torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), batch.label))
