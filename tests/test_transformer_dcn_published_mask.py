"""The winner's `history_mask` (issue 42): by default (`published`) our transformer masks what the winners' code
masks. Their MMCTRDataLoader's mask is 1 at a history item and their Transformer passes it as
src_key_padding_mask (True = ignore), unmasking the last position of a row whose mask is all ones; so the history
items are masked as keys, their outputs zeroed and left out of the max-pool. `history` is the form the comments
intend (padding masked). The reference below transcribes those published steps with nn.TransformerEncoder."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from test_models import tiny_tables

from qin_lightning.errors import ConfigError
from qin_lightning.models.transformer_dcn import SequenceTransformer, TransformerDCN


def tiny(history_mask: str | None = None) -> TransformerDCN:
    torch.manual_seed(0)
    extra = {} if history_mask is None else {"history_mask": history_mask}
    return TransformerDCN(*tiny_tables(), embedding_dim=4, mm_projection_dim=4, feedforward_dim=16, first_k_cols=3,
                          dnn_units=[16], head_units=[8], **extra).double().eval()


def histories() -> torch.Tensor:
    """(5, 6) left-padded ids: lengths 3, 6 (full), 0 (empty), 1, 5."""
    ids = torch.arange(1, 31).view(5, 6) % 29 + 1
    length = torch.tensor([3, 6, 0, 1, 5]).unsqueeze(1)
    return ids * (torch.arange(6) >= 6 - length)


def published_reference(model: TransformerDCN, target: torch.Tensor, history: torch.Tensor,
                        item_seq: torch.Tensor) -> torch.Tensor:
    """The winners' Transformer.forward, step by step, on our module's weights (dense grid)."""
    transformer = model.transformer
    s = history.shape[1]
    sequence = torch.cat([history, target.unsqueeze(1).expand(-1, s, -1)], dim=-1)
    mask = (item_seq > 0).double()  # their loader: 1 = history item
    mask[mask.all(dim=-1), -1] = 0  # their adjust_mask
    key_padding_mask = mask.bool()
    out = nn.TransformerEncoder.forward(transformer.encoder, sequence, src_key_padding_mask=key_padding_mask)
    out = out.masked_fill(key_padding_mask.unsqueeze(-1), 0.0)
    recent = out[:, -transformer.first_k_cols:].flatten(start_dim=1)
    pooled = transformer.pool_projection(out.masked_fill(key_padding_mask.unsqueeze(-1), -1e9).max(dim=1).values)
    return torch.cat([recent, pooled], dim=-1)


def sequence_output(model: TransformerDCN, item_seq: torch.Tensor) -> tuple[torch.Tensor, ...]:
    item_id = torch.tensor([2, 3, 4, 5, 6])
    vectors = model.items(torch.cat([item_seq, item_id.unsqueeze(1)], dim=1))
    target, history = vectors[:, -1], vectors[:, :-1]
    return model.transformer(target, history, item_seq > 0), target, history


def test_the_published_mask_is_the_default() -> None:
    for cls in (TransformerDCN, SequenceTransformer):
        assert inspect.signature(cls).parameters["history_mask"].default == "published"
    assert tiny().transformer.history_mask == "published"


@pytest.mark.parametrize("fast", [True, False])
def test_published_mask_is_their_transformer(fast: bool) -> None:
    model = tiny()
    model.transformer.fast = fast
    item_seq = histories()
    with torch.no_grad():
        ours, target, history = sequence_output(model, item_seq)
        theirs = published_reference(model, target, history, item_seq)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_published_mask_ignores_the_history_items_and_history_mask_does_not() -> None:
    """Replacing the history items (all but the last of a full history) changes nothing under `published`, and
    changes the output of every row with a history under `history`."""
    item_seq = histories()
    other = torch.where(item_seq > 0, item_seq % 28 + 2, item_seq)
    other[1, -1] = item_seq[1, -1]  # the full history's last item is what `published` keeps
    with torch.no_grad():
        published = tiny("published")
        torch.testing.assert_close(sequence_output(published, other)[0], sequence_output(published, item_seq)[0],
                                   rtol=1e-12, atol=1e-12)
        history = tiny("history")
        changed = (sequence_output(history, other)[0] - sequence_output(history, item_seq)[0]).abs().amax(1)
    assert (changed[[0, 1, 3, 4]] > 1e-6).all()


def test_an_unknown_history_mask_is_one_config_error() -> None:
    with pytest.raises(ConfigError, match="model.net.history_mask: 'padding', expected one of published, history"):
        tiny("padding")
