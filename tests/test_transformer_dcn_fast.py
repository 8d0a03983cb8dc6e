"""The winner's fast training form (the encoder batch-first on each row's span, `PairEncoder` given the target)
against nn.TransformerEncoder on the dense grid (the literal reference) in float64: the same logits and gradients
with dropout on (the same mask draws when every history is full) and on padded histories (dropout off)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_models import tiny_tables

from qin_lightning.models.transformer_dcn import PairEncoder, TransformerDCN


def winner_pair(dropout: float, num_heads: int) -> tuple[TransformerDCN, TransformerDCN]:
    """(fast, literal) copies of one float64 winner in training mode."""
    tags, mm, num_tags = tiny_tables()
    torch.manual_seed(0)
    fast = TransformerDCN(tags, mm, num_tags, embedding_dim=4, mm_projection_dim=4, feedforward_dim=16,
                          num_heads=num_heads, first_k_cols=5, cross_rank=3, dnn_units=[16], head_units=[8],
                          transformer_dropout=dropout, dnn_dropout=dropout,
                          history_mask="history").double().train()  # the span form exists for this mask only
    literal = copy.deepcopy(fast)
    literal.transformer.fast = False  # nn.TransformerEncoder's forward on the whole (B, S) grid
    return fast, literal


def batch(rows: int, length: int, padded: bool) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    item_seq = torch.randint(1, 30, (rows, length), generator=g)
    if padded:  # left padding of every length, an empty history, gaps and right padding
        item_seq = item_seq * (torch.arange(length) >= torch.randint(0, length + 1, (rows, 1), generator=g))
        item_seq[0] = 0
        item_seq[1, -1] = 0
    return (item_seq, torch.randint(1, 30, (rows,), generator=g), torch.randint(0, 11, (rows,), generator=g),
            torch.randint(0, 11, (rows,), generator=g))


def logits_and_gradients(net: TransformerDCN, inputs: tuple[torch.Tensor, ...], seed: int) -> tuple:
    torch.manual_seed(seed)
    logits = net(*inputs)
    logits.square().sum().backward()
    return logits.detach(), {name: p.grad for name, p in net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dropout, padded, num_heads, length", [(0.2, False, 1, 9), (0.2, False, 2, 4),
                                                                (0.0, True, 1, 11), (0.0, True, 2, 11)])
def test_fast_training_step_is_the_literal_one(dropout: float, padded: bool, num_heads: int, length: int) -> None:
    fast, literal = winner_pair(dropout, num_heads)
    inputs = batch(24, length, padded)  # length 4 < first_k_cols 5: the recent window is zero-filled in front
    targets = []
    handle = fast.transformer.encoder.register_forward_pre_hook(lambda m, args: targets.append(len(args) == 3))
    out_fast, grads_fast = logits_and_gradients(fast, inputs, seed=7)
    handle.remove()
    out_literal, grads_literal = logits_and_gradients(literal, inputs, seed=7)
    assert isinstance(fast.transformer.encoder, PairEncoder) and targets and all(targets)  # the batch-first form ran
    torch.testing.assert_close(out_fast, out_literal, rtol=1e-11, atol=1e-12)
    assert grads_fast.keys() == grads_literal.keys()
    for name, grad in grads_fast.items():
        torch.testing.assert_close(grad, grads_literal[name], rtol=1e-9, atol=1e-11, msg=name)


def test_pair_encoder_keeps_the_state_of_nn_transformer_encoder() -> None:
    """The same parameters under the same keys (checkpoints of either load into the other)."""
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, 0.1, batch_first=True)
    plain = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    pair = PairEncoder(layer, 2, enable_nested_tensor=False)
    assert list(pair.state_dict()) == list(plain.state_dict())
