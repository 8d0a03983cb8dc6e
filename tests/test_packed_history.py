"""Packed histories (models.history): encoding/attending only non-padding positions is the same function.

Compared with the dense form in float64: outputs and gradients, every attention variant (ASTA relu / softmax /
silu / relu2, literal and fast algebra, with attention-weight dropout), mean pooling, DIN, empty histories
and an all-empty batch.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from probes import forward_calls, path_taken, prepared

from qin_lightning.models.attention import MeanPooling, TargetAttention
from qin_lightning.models.din import DIN
from qin_lightning.models.interaction import QuadraticNetwork
from qin_lightning.models.qin import QIN
from qin_lightning.models.inference import (
    fast_path_state,
    inference_form,
    prepare_inference,
    release_inference,
    set_fast_paths,
)

TIGHT = dict(rtol=1e-10, atol=1e-12)
NUM_ITEMS = 30


def tables():
    g = torch.Generator().manual_seed(0)
    tags = torch.randint(0, 12, (NUM_ITEMS, 5), generator=g)
    tags[:, :2], tags[0] = 0, 0
    mm = torch.randn(NUM_ITEMS, 8, generator=g)
    mm[0] = 0.0
    return tags, mm, 12


def batch(empty: bool = False):
    g = torch.Generator().manual_seed(1)
    item_seq = torch.randint(1, NUM_ITEMS, (6, 7), generator=g)
    for i, n in enumerate([7, 3, 1, 0, 5, 2]):  # left padded; row 3 has an empty history
        item_seq[i, : 7 - n] = 0
    if empty:
        item_seq.zero_()
    levels = torch.randint(0, 11, (2, 6), generator=g)
    return item_seq, torch.randint(1, NUM_ITEMS, (6,), generator=g), levels[0], levels[1]


def outputs_and_grads(net: torch.nn.Module, inputs, seed: int = 5):
    net.zero_grad()
    torch.manual_seed(seed)  # same dropout masks in both forms
    with path_taken(net) as taken:
        out = net(*inputs)
    assert taken["packed"] == net.fast, f"fast={net.fast} but packed={taken['packed']}"
    (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype)).sum().backward()
    return out.detach(), [p.grad.clone() if p.grad is not None else None for p in net.parameters()]


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], **TIGHT)
    assert len(a[1]) == len(b[1]) and any(g is not None for g in a[1])
    for ga, gb in zip(a[1], b[1]):
        if ga is None or gb is None:
            assert ga is None and gb is None or torch.count_nonzero(ga if ga is not None else gb) == 0
        else:
            torch.testing.assert_close(ga, gb, **TIGHT)


def pair(net: torch.nn.Module):
    """(packed, dense): the same net with the net's own `fast` switch (packed histories) on and off; the
    parts' switches (item table, attention, fold) stay as they are."""
    dense = copy.deepcopy(net)
    dense.fast = False
    net.fast = True
    return net, dense


def trained_qin(attention, seed: int = 0) -> QIN:
    torch.manual_seed(seed)
    tags, mm, num_tags = tables()
    net = QIN(tags, mm, num_tags, embedding_dim=4, attention=attention,
              interaction=functools.partial(QuadraticNetwork, num_layers=2, num_row=3, dropout=0.2)).double()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(2):  # non-trivial weights and BatchNorm statistics
        net(*batch()).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return net


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("activation", ["relu", "softmax", "silu", "relu2"])
@pytest.mark.parametrize("empty", [False, True])
def test_packed_qin_matches_dense_in_training(activation, fast, empty):
    net = trained_qin(functools.partial(TargetAttention, activation=activation, dropout=0.3, fast=fast))
    packed, dense = pair(net)
    packed.train(), dense.train()
    assert_same(outputs_and_grads(packed, batch(empty)), outputs_and_grads(dense, batch(empty)))


@pytest.mark.parametrize("activation", ["relu", "softmax"])
def test_packed_qin_matches_dense_in_eval_prepared(activation):
    net = trained_qin(functools.partial(TargetAttention, activation=activation))
    packed, dense = pair(net)
    with torch.no_grad(), inference_form(packed), inference_form(dense):
        with path_taken(packed) as packed_path, path_taken(dense) as dense_path:
            torch.testing.assert_close(packed(*batch()), dense(*batch()), **TIGHT)
        assert packed_path == {"fast_attention": True, "folded_qnn": True, "packed": True, "item_table": True}
        assert dense_path == {**packed_path, "packed": False}
        set_fast_paths(dense, False)  # the literal paper form end to end
        with path_taken(dense) as literal_path:
            torch.testing.assert_close(packed(*batch()), dense(*batch()), **TIGHT)
        assert set(literal_path.values()) == {False}


def test_packed_mean_pooling_matches_dense():
    net = trained_qin(MeanPooling)
    packed, dense = pair(net)
    packed.train(), dense.train()
    assert_same(outputs_and_grads(packed, batch()), outputs_and_grads(dense, batch()))


@pytest.mark.parametrize("empty", [False, True])
def test_packed_din_matches_dense(empty):
    torch.manual_seed(0)
    tags, mm, num_tags = tables()
    net = DIN(tags, mm, num_tags, embedding_dim=4, attention_units=[8, 4], attention_dropout=0.0,
              dnn_units=[16, 8], dnn_dropout=0.1).double()
    packed, dense = pair(net)
    packed.train(), dense.train()
    assert_same(outputs_and_grads(packed, batch(empty)), outputs_and_grads(dense, batch(empty)))
    packed.eval(), dense.eval()
    packed.attention.mlp.net[-1].p = dense.attention.mlp.net[-1].p = 0.5  # eval: dropout inactive anyway
    with torch.no_grad():
        with path_taken(packed) as packed_path, path_taken(dense) as dense_path, \
                forward_calls(packed.attention.mlp.net[0]) as packed_first, \
                forward_calls(dense.attention.mlp.net[0]) as dense_first:
            torch.testing.assert_close(packed(*batch(empty)), dense(*batch(empty)), **TIGHT)
        assert packed_path["packed"] and not dense_path["packed"]
        # the packed form splits the first layer (its weights, never the (P, 4d) features through the module)
        assert packed_first == [] and dense_first != []


def test_set_fast_paths_switches_everything():
    net = trained_qin(TargetAttention).eval()
    set_fast_paths(net, False)
    assert fast_path_state(net) == {"fast": False, "items.fast": False, "attention.fast": False,
                                    "interaction.layers.0.fast": False}
    with torch.no_grad(), inference_form(net), path_taken(net) as taken:  # every part runs literally
        net(*batch())
        assert not prepared(net.items) and not prepared(net.attention)  # nothing to prepare
    assert set(taken.values()) == {False}
    set_fast_paths(net, True)
    assert set(fast_path_state(net).values()) == {True}
    with torch.no_grad(), inference_form(net), path_taken(net) as taken:
        net(*batch())
        assert prepared(net.items) and prepared(net.attention)
    assert set(taken.values()) == {True}


def test_ragged_products_gradcheck_and_empty_rows():
    from qin_lightning.models.ragged import Ragged, row_dot, row_sum

    mask = torch.tensor([[0, 1, 1], [0, 0, 0], [1, 0, 1]], dtype=torch.bool)
    r = Ragged.from_mask(mask)
    assert r.rows.tolist() == [0, 0, 2, 2] and r.crow.tolist() == [0, 2, 2, 4]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(4, 4, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(4, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, v: row_dot(q, v, r), (q, v))
    assert torch.autograd.gradcheck(lambda w, v: row_sum(w, v, r), (w, v))
    dense = torch.zeros(3, 3, 4, dtype=torch.float64).masked_scatter(mask.unsqueeze(-1), v.detach())
    torch.testing.assert_close(row_sum(w, v, r), (w.new_zeros(9).scatter(0, r.flat, w).view(3, 3, 1)
                                                  * dense).sum(1), **TIGHT)
    empty = Ragged.from_mask(torch.zeros(2, 3, dtype=torch.bool))
    assert row_sum(w[:0], v[:0], empty).shape == (2, 4) and row_dot(q[:2], v[:0], empty).shape == (0,)


def test_inference_form_is_prepared_in_full_precision_under_autocast():
    net = trained_qin(TargetAttention).float().eval()
    inputs = batch()
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            prepare_inference(net)  # the item table / products / folds are prepared inside autocast
        assert prepared(net.items) and prepared(net.attention)
        assert all(prepared(layer) for layer in net.interaction.layers)
        assert net.items.table.dtype == net.attention.prepared[0].dtype == torch.float32
        torch.testing.assert_close(net.items.table, net.items.encode(torch.arange(NUM_ITEMS)), rtol=0, atol=0)
        cached = net(*inputs)
        release_inference(net)
        set_fast_paths(net, False)
        torch.testing.assert_close(cached, net(*inputs), rtol=1e-5, atol=1e-6)
