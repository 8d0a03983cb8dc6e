"""The inputs every CTR network here shares: items (id | tags | multimodal) and the likes/views levels.

`SampleFeatures` owns the item encoder and the two level embeddings, splits the parameters into the two L2
groups of the training protocol, and assembles the per-sample vector [likes | views | target | pooled history]
(B, 2E + 2I) that QIN's QNN and DIN's DNN read (I = 2E + P: the item width, P the multimodal projection).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from qin_lightning.models.history import attend_history
from qin_lightning.models.items import ItemEncoder, init_embedding


class SampleFeatures(nn.Module):
    """Base of QIN, DIN and the winner: item encoder + level embeddings (row 0 = padding, as published)."""

    def __init__(
        self,
        item_tags: Tensor,
        item_mm: Tensor,
        num_tags: int,
        embedding_dim: int,
        num_levels: int,
        mm_projection_dim: int = 128,
    ) -> None:
        super().__init__()
        self.items = ItemEncoder(item_tags, item_mm, num_tags, embedding_dim, mm_projection_dim)
        self.likes_embedding = nn.Embedding(num_levels, embedding_dim, padding_idx=0)
        self.views_embedding = nn.Embedding(num_levels, embedding_dim, padding_idx=0)
        init_embedding(self.likes_embedding)
        init_embedding(self.views_embedding)

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Every embedding table + the multimodal projection: the embedding L2 term."""
        return self.items.embedding_parameters() + [self.likes_embedding.weight, self.views_embedding.weight]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter: the "net" L2 term (DIN's protocol)."""
        embedding = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in embedding]

    def features(
        self,
        attention: nn.Module,
        item_seq: Tensor,
        item_id: Tensor,
        likes_level: Tensor,
        views_level: Tensor,
        pack_history: bool,
    ) -> Tensor:
        # item_seq (B, S), item_id / likes_level / views_level (B,) -> (B, 2E + 2I)
        target, pooled = attend_history(self.items, attention, item_seq, item_id, pack_history)
        return torch.cat([self.likes_embedding(likes_level), self.views_embedding(views_level), target, pooled], -1)
