"""Item lookup + target attention over the history, shared by QIN and DIN (dense or packed, same function)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qin_lightning.models.items import ItemEncoder
from qin_lightning.models.ragged import Ragged


def packing_possible(attention: nn.Module, item_seq: Tensor) -> bool:
    """Packed histories need `attention.forward_packed` and a data-dependent size (nonzero): used for CPU
    tensors outside tracing / compilation only (on CUDA `nonzero` would sync the host every step)."""
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    return hasattr(attention, "forward_packed") and not item_seq.is_cuda and not tracing


def attend_history(
    items: ItemEncoder, attention: nn.Module, item_seq: Tensor, item_id: Tensor, pack: bool
) -> tuple[Tensor, Tensor]:
    """(target (B, I), pooled history (B, I)) for item_seq (B, S) and item_id (B,).

    Dense: the B x (S + 1) items are encoded in one lookup and attention sees (B, S, I).
    Packed (exact; `pack` and `packing_possible`): only the B targets and the P non-padding history items
    are encoded ((B + P, I), P ~ 8B on MicroLens instead of 64B) and `attention.forward_packed` pools them.
    Padding items encode to exact zeros with zero attention weight, so the dense form only adds exact zeros.
    """
    mask = item_seq > 0  # (B, S)
    if pack and packing_possible(attention, item_seq):
        batch = item_id.shape[0]
        ragged = Ragged.from_mask(mask)  # the P non-padding positions, row-major
        history_ids = item_seq.reshape(-1).index_select(0, ragged.flat)  # (P,)
        vectors = items(torch.cat([item_id, history_ids]))  # (B + P, I), one lookup
        target = vectors[:batch]  # (B, I)
        return target, attention.forward_packed(target, vectors[batch:], ragged, mask)
    vectors = items(torch.cat([item_seq, item_id.unsqueeze(1)], dim=1))  # (B, S + 1, I), one lookup
    history, target = vectors[:, :-1], vectors[:, -1]  # (B, S, I), (B, I)
    return target, attention(target, history, mask)
