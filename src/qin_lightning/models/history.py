"""The item lookup of a batch and target attention over its history, dense or packed (the same function).

Dense: the B x (S + 1) items are encoded in one lookup and attention sees the history as (B, S, I).
Packed (exact; the nets' `fast` switch, CPU only): only the B targets and the P non-padding history items are
encoded ((B + P, I), P ~ 8B on MicroLens instead of 64B) and `attention.forward_packed` pools them. Padding
items encode to exact zeros with zero attention weight, so the dense form only adds exact zeros.
Packed with `distinct` (DIN): only the U distinct history items of the batch are encoded ((B + U, I)); the P
position vectors are gathered from them, and the attention gets both (`DistinctItems`) for its per-item terms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from qin_lightning.models.ragged import Ragged


class DistinctItems(NamedTuple):
    """The U distinct items of a packed history: their vectors (U, I) and each position's index into them (P,),
    so that the history's values are values.index_select(0, inverse)."""

    values: Tensor
    inverse: Tensor


class PackedHistory(NamedTuple):
    """The history at its non-padding positions: values (P, I), row-major over the (B, S) mask (`ragged`);
    `distinct`: the same positions as U distinct items (when asked for)."""

    values: Tensor
    ragged: Ragged
    distinct: DistinctItems | None = None


def can_pack(attention: nn.Module, item_seq: Tensor) -> bool:
    """Packed histories need `attention.forward_packed` and a data-dependent size (nonzero): used for CPU
    tensors outside tracing / compilation only (on CUDA `nonzero` would sync the host every step)."""
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    return hasattr(attention, "forward_packed") and not item_seq.is_cuda and not tracing


def lookup_items(
    items: nn.Module, item_seq: Tensor, item_id: Tensor, pack: bool, distinct: bool = False
) -> tuple[Tensor, Tensor | PackedHistory]:
    """(target (B, I), history (B, S, I) or PackedHistory) for item_seq (B, S) and item_id (B,), one lookup.

    `distinct` (packed only): encode each distinct history item once and gather the positions from it (the same
    values; repeated items' gradients are summed before the encoder instead of inside it)."""
    if pack:
        ragged = Ragged.from_mask(item_seq > 0)  # the P non-padding positions, row-major
        history_ids = item_seq.reshape(-1).index_select(0, ragged.flat)  # (P,)
        batch = item_id.shape[0]
        if distinct:
            ids, inverse = torch.unique(history_ids, return_inverse=True)  # (U,), (P,) with ids[inverse] = history_ids
            vectors = items(torch.cat([item_id, ids]))  # (B + U, I)
            unique = DistinctItems(vectors[batch:], inverse)  # (U, I), (P,)
            return vectors[:batch], PackedHistory(unique.values.index_select(0, inverse), ragged, unique)  # (P, I)
        vectors = items(torch.cat([item_id, history_ids]))  # (B + P, I)
        return vectors[:batch], PackedHistory(vectors[batch:], ragged)  # (B, I), (P, I)
    vectors = items(torch.cat([item_seq, item_id.unsqueeze(1)], dim=1))  # (B, S + 1, I)
    return vectors[:, -1], vectors[:, :-1]  # (B, I), (B, S, I)


def attend(attention: nn.Module, target: Tensor, history: Tensor | PackedHistory, mask: Tensor) -> Tensor:
    """attention(target (B, I), history, mask (B, S)) -> pooled history (B, I), for either history form."""
    if isinstance(history, PackedHistory):
        distinct = () if history.distinct is None else (history.distinct,)  # only DIN's attention asks for it
        return attention.forward_packed(target, history.values, history.ragged, mask, *distinct)
    return attention(target, history, mask)
