"""QIN = item encoder + target attention (ASTA, eq. 3) + quadratic network (QNN, eq. 4) + linear head."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from qin_lightning.models.attention import TargetAttention
from qin_lightning.models.interaction import QuadraticNetwork, init_linear
from qin_lightning.models.items import ItemEncoder, init_embedding


class QIN(nn.Module):
    """Quadratic Interest Network; `forward` returns logits (B,).

    likes_level / views_level: tables of `num_levels` rows with row 0 as padding (zero, never trained), as in
    the published FuxiCTR run, whose feature map declares `padding_idx: 0` for both (its training log,
    QIN_variety_v9_9701.log); all rows count as parameters (31,244,293 in total with the defaults).
    """

    def __init__(
        self,
        item_tags: Tensor,
        item_mm: Tensor,
        num_tags: int,
        embedding_dim: int = 128,
        num_levels: int = 11,
        attention: Callable[[int], nn.Module] = TargetAttention,
        interaction: Callable[[int], nn.Module] = QuadraticNetwork,
    ) -> None:
        super().__init__()
        self.items = ItemEncoder(item_tags, item_mm, num_tags, embedding_dim)
        self.likes_embedding = nn.Embedding(num_levels, embedding_dim, padding_idx=0)
        self.views_embedding = nn.Embedding(num_levels, embedding_dim, padding_idx=0)
        init_embedding(self.likes_embedding)
        init_embedding(self.views_embedding)
        item_dim = self.items.out_dim  # 3E
        self.attention = attention(item_dim)
        self.interaction = interaction(2 * embedding_dim + 2 * item_dim)  # 8E
        self.head = nn.Linear(self.interaction.out_dim, 1)
        init_linear(self.head)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return self.items.embedding_parameters() + [self.likes_embedding.weight, self.views_embedding.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        embedding = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in embedding]

    def forward(self, item_seq: Tensor, item_id: Tensor, likes_level: Tensor, views_level: Tensor) -> Tensor:
        # item_seq (B, S), item_id / likes_level / views_level (B,) -> logits (B,)
        items = self.items(torch.cat([item_seq, item_id.unsqueeze(1)], dim=1))  # (B, S+1, 3E), one lookup
        history, target = items[:, :-1], items[:, -1]  # (B, S, 3E), (B, 3E)
        pooled = self.attention(target, history, item_seq > 0)  # (B, 3E)
        x = torch.cat([self.likes_embedding(likes_level), self.views_embedding(views_level), target, pooled], -1)
        return self.head(self.interaction(x)).squeeze(-1)  # (B,)
