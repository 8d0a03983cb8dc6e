"""QIN = item encoder + target attention (ASTA, eq. 3) + quadratic network (QNN, eq. 4) + linear head."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from qin_lightning.models.attention import TargetAttention
from qin_lightning.models.history import attend, can_pack, lookup_items
from qin_lightning.models.interaction import QuadraticNetwork, init_linear, logit_head
from qin_lightning.models.items import ItemEncoder, level_embeddings


class QIN(nn.Module):
    """Quadratic Interest Network; `forward` returns logits (B,).

    likes_level / views_level: tables of `num_levels` rows with row 0 as padding (zero, never trained), as in
    the published FuxiCTR run, whose feature map declares `padding_idx: 0` for both (its training log,
    QIN_variety_v9_9701.log); all rows count as parameters (31,244,293 in total with the defaults).

    `fast` (exact): the item encoder's prepared item table, and packed histories: only the non-padding history
    positions are encoded and attended (histories are mostly padding: ~8 of 64 items) when the attention
    module has `forward_packed`; only exact-zero terms are dropped. Packing runs for CPU tensors outside
    tracing / compilation; on CUDA the dense form runs (packing needs a data-dependent size: a host sync).
    """

    def __init__(
        self,
        item_tags: Tensor,
        item_mm: Tensor,
        num_tags: int,
        embedding_dim: int = 128,
        num_levels: int = 11,
        mm_projection_dim: int = 128,
        attention: Callable[[int], nn.Module] = TargetAttention,
        interaction: Callable[[int], nn.Module] = QuadraticNetwork,
        fast: bool = True,
    ) -> None:
        super().__init__()
        self.fast = fast
        self.items = ItemEncoder(item_tags, item_mm, num_tags, embedding_dim, mm_projection_dim, fast)
        self.likes_embedding, self.views_embedding = level_embeddings(num_levels, embedding_dim)
        item_dim = self.items.out_dim  # I = 2E + P (384 for QIN)
        self.attention = attention(item_dim)
        self.interaction = interaction(2 * embedding_dim + 2 * item_dim)  # D = 2E + 2I (1024 for QIN)
        self.head = nn.Linear(self.interaction.out_dim, 1)
        init_linear(self.head)

    def forward(self, item_seq: Tensor, item_id: Tensor, likes_level: Tensor, views_level: Tensor) -> Tensor:
        # item_seq (B, S), item_id / likes_level / views_level (B,) -> logits (B,)
        pack = self.fast and can_pack(self.attention, item_seq)
        target, history = lookup_items(self.items, item_seq, item_id, pack)  # (B, I), (B, S, I) or packed
        pooled = attend(self.attention, target, history, item_seq > 0)  # (B, I), eq. 3
        levels = [self.likes_embedding(likes_level), self.views_embedding(views_level)]  # 2 x (B, E)
        x = torch.cat([*levels, target, pooled], dim=-1)  # (B, D) = (B, 2E + 2I)
        return logit_head(self.head, self.interaction(x))  # (B,), eq. 4 then the linear head (fp32 logits)
