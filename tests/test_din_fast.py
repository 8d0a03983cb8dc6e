"""DIN's fast training form (packed histories, the attention MLP's ReLU -> Dropout pairs fused) against the literal
dense form in float64: the same logits and gradients, with dropout on (the same mask draws when every position is
a real item) and with padding (dropout off); with items repeating across rows and positions (each distinct item
encoded and its first-layer term computed once); the "sfc64" dropout draw: the same distribution, seeded by torch."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from probes import forward_calls
from test_models import tiny_tables
from torch import Tensor

from qin_lightning.errors import ConfigError
from qin_lightning.models import din as din_module
from qin_lightning.models.din import DIN, DINAttention


def din_pair(dropout: float) -> tuple[DIN, DIN]:
    """(fast, literal) copies of one float64 DIN in training mode."""
    tags, mm, num_tags = tiny_tables()
    torch.manual_seed(0)
    fast = DIN(tags, mm, num_tags, embedding_dim=4, mm_projection_dim=4, attention_units=[16, 8],
               attention_dropout=dropout, dnn_units=[16, 8], dnn_dropout=dropout).double().train()
    literal = copy.deepcopy(fast)
    literal.fast = False  # dense histories, the attention MLP's own modules
    return fast, literal


def batch(rows: int, length: int, padded: bool, num_items: int = 30) -> tuple[torch.Tensor, ...]:
    """(item_seq, item_id, likes, views); history items drawn from 1..num_items - 1."""
    g = torch.Generator().manual_seed(3)
    item_seq = torch.randint(1, num_items, (rows, length), generator=g)
    if padded:  # left padding of every length, an empty history, gaps
        item_seq = item_seq * (torch.arange(length) >= torch.randint(0, length + 1, (rows, 1), generator=g))
        item_seq[0] = 0
        item_seq[1, 2] = 0
    return (item_seq, torch.randint(1, 30, (rows,), generator=g), torch.randint(0, 11, (rows,), generator=g),
            torch.randint(0, 11, (rows,), generator=g))


def logits_and_gradients(net: DIN, inputs: tuple[torch.Tensor, ...], seed: int) -> tuple[torch.Tensor, dict]:
    torch.manual_seed(seed)
    logits = net(*inputs)
    logits.square().sum().backward()
    return logits.detach(), {name: p.grad for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout, padded", [(0.3, False), (0.0, True)])
def test_fast_training_step_is_the_literal_one(dropout: float, padded: bool) -> None:
    fast, literal = din_pair(dropout)
    inputs = batch(12, 6, padded)
    fused = []
    original = din_module.relu_dropout
    din_module.relu_dropout = lambda h, d, draw: fused.append(draw) or original(h, d, draw)  # count the fused calls
    try:
        out_fast, grads_fast = logits_and_gradients(fast, inputs, seed=7)
    finally:
        din_module.relu_dropout = original
    out_literal, grads_literal = logits_and_gradients(literal, inputs, seed=7)
    assert fused == (["torch", "torch"] if dropout else [])  # both hidden layers of the attention MLP ran fused
    torch.testing.assert_close(out_fast, out_literal, rtol=1e-12, atol=1e-12)
    assert grads_fast.keys() == grads_literal.keys()
    for name, grad in grads_fast.items():
        torch.testing.assert_close(grad, grads_literal[name], rtol=1e-10, atol=1e-12, msg=name)


def attention_on_real_positions(attention: DINAttention) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The literal DINAttention.forward with its MLP run on the real (non-padding) positions only, row-major: the
    literal modules on the (P, 4d) features, so nn.Dropout draws the packed form's (P, H) masks."""

    def forward(target: Tensor, history: Tensor, mask: Tensor) -> Tensor:
        rows, cols = mask.nonzero(as_tuple=True)  # (P,), (P,) row-major
        x, t = history[rows, cols], target[rows]  # (P, d), (P, d)
        weights = attention.score(attention.mlp(torch.cat([t, x, t - x, t * x], dim=-1)))  # (P, 1)
        return torch.zeros_like(target).index_add(0, rows, weights * x)  # (B, d)

    return forward


@pytest.mark.parametrize("dropout", [0.3, 0.0])
@pytest.mark.parametrize("padded", [False, True])
def test_distinct_items_are_the_literal_form(dropout: float, padded: bool) -> None:
    """Items 1..4 only, so every item repeats across rows and positions (U <= 4 distinct of P >= 40 positions):
    the item encoder sees the B targets and the U distinct items, and the logits and every parameter gradient are
    the literal dense form's. With dropout and padding the literal form's attention MLP runs on the real positions
    only (`attention_on_real_positions`): the dense form draws masks for the padding positions too."""
    fast, literal = din_pair(dropout)
    if dropout and padded:
        literal.attention.forward = attention_on_real_positions(literal.attention)
    inputs = batch(12, 6, padded, num_items=5)
    history_ids = inputs[0][inputs[0] > 0]
    distinct = history_ids.unique().numel()
    assert distinct <= 4 < history_ids.numel()
    with forward_calls(fast.items) as encoded:
        out_fast, grads_fast = logits_and_gradients(fast, inputs, seed=7)
    assert encoded == [(torch.Size([12 + distinct]),)]
    out_literal, grads_literal = logits_and_gradients(literal, inputs, seed=7)
    torch.testing.assert_close(out_fast, out_literal, rtol=1e-12, atol=1e-12)
    assert grads_fast.keys() == grads_literal.keys()
    for name, grad in grads_fast.items():
        torch.testing.assert_close(grad, grads_literal[name], rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relu_dropout_is_relu_then_dropout(dtype: torch.dtype) -> None:
    h = torch.randn(50, 40, dtype=dtype, requires_grad=True)
    dropout = torch.nn.Dropout(0.25).train()
    torch.manual_seed(1)
    expected = dropout(torch.relu(h))
    torch.manual_seed(1)
    fused = din_module.relu_dropout(h, dropout)
    assert torch.equal(fused, expected)
    g = torch.randn_like(h)
    assert torch.equal(*(torch.autograd.grad(y, h, g)[0] for y in (fused, expected)))


def test_sfc64_draw_is_bernoulli_keep_seeded_by_torch() -> None:
    """Kept where h > 0 with probability 1 - p (within 5 standard errors over 400,000 draws), kept values scaled by
    1 / (1 - p), the same masks after the same torch.manual_seed, other masks after another."""
    h = torch.randn(1000, 400, dtype=torch.float64, requires_grad=True)
    dropout = torch.nn.Dropout(0.3).train()
    torch.manual_seed(2)
    out = din_module.relu_dropout(h, dropout, "sfc64")
    positive = h > 0
    kept = (out != 0) & positive
    assert not out[~positive].any()
    rate, n = float(kept.sum()) / int(positive.sum()), int(positive.sum())
    assert abs(rate - 0.7) < 5 * (0.7 * 0.3 / n) ** 0.5
    torch.testing.assert_close(out[kept], h[kept] / 0.7, rtol=1e-15, atol=0)
    grad, = torch.autograd.grad(out.sum(), h)
    torch.testing.assert_close(grad, kept.double() / 0.7, rtol=1e-15, atol=0)
    torch.manual_seed(2)
    assert torch.equal(din_module.relu_dropout(h, dropout, "sfc64"), out)
    torch.manual_seed(3)
    assert not torch.equal(din_module.relu_dropout(h, dropout, "sfc64"), out)


def test_sfc64_draw_changes_only_the_training_masks() -> None:
    """DIN with attention_dropout_draw="sfc64": the same function in eval mode; an unknown draw is a config error."""
    tags, mm, num_tags = tiny_tables()
    torch.manual_seed(0)
    net = DIN(tags, mm, num_tags, embedding_dim=4, mm_projection_dim=4, attention_units=[16, 8],
              attention_dropout=0.3, dnn_units=[16, 8]).double().eval()
    other = copy.deepcopy(net)
    other.attention.dropout_draw = "sfc64"
    inputs = batch(12, 6, padded=True)
    torch.testing.assert_close(other(*inputs), net(*inputs), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="model.net.attention_dropout_draw: unknown value 'numpy'"):
        DIN(tags, mm, num_tags, embedding_dim=4, attention_dropout_draw="numpy")
