"""Item encoder: id | masked-mean tags | projected multimodal vector; the likes/views level embeddings.

QIN, DIN and the winner each hold these parts (`items`, `likes_embedding`, `views_embedding`); the two L2
groups of the training protocol are drawn from them in `models.parameter_groups`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def init_embedding(table: nn.Embedding, std: float = 1e-4) -> None:
    """FuxiCTR embedding init: N(0, std), padding row zero."""
    nn.init.normal_(table.weight, mean=0.0, std=std)
    if table.padding_idx is not None:
        with torch.no_grad():
            table.weight[table.padding_idx].zero_()


def gather_rows(table: Tensor, ids: Tensor) -> Tensor:
    """table[ids] for a (N, ...) table and ids of any shape, via index_select (a faster row copy on CPU)."""
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, *table.shape[1:])


def level_embeddings(num_levels: int, embedding_dim: int) -> tuple[nn.Embedding, nn.Embedding]:
    """The likes and views level tables: `num_levels` rows, row 0 = padding (zero, never trained), as published.

    Both are created before either is initialised (the random-number order of every run so far)."""
    likes = nn.Embedding(num_levels, embedding_dim, padding_idx=0)
    views = nn.Embedding(num_levels, embedding_dim, padding_idx=0)
    init_embedding(likes)
    init_embedding(views)
    return likes, views


class ItemEncoder(nn.Module):
    """Item vector (2E + P) = id embedding (E) | masked mean of tag embeddings (E) | Linear(M, P, no bias)(item_mm).

    P = `mm_projection_dim`, 128 for every model: the challenge's dataset config declares the multimodal
    feature with `embedding_dim: 128` whatever the model's embedding_dim, so QIN's item is
    384 = 3 x 128 and DIN's / the winner's (E = 64) is 64 + 64 + 128 = 256.

    Row i of the tables is item i; item 0 is padding and always encodes to the all-zero vector. `fast`: once
    prepared (models.inference), eval mode gathers rows of the (N, I) table of every item vector (exact: the
    same ops on the same rows) instead of encoding the requested ids.
    """

    def __init__(
        self,
        item_tags: Tensor,
        item_mm: Tensor,
        num_tags: int,
        embedding_dim: int = 128,
        mm_projection_dim: int = 128,
        fast: bool = True,
    ) -> None:
        super().__init__()
        num_items, mm_dim = item_mm.shape
        self.embedding_dim = embedding_dim
        self.mm_projection_dim = mm_projection_dim
        self.out_dim = 2 * embedding_dim + mm_projection_dim
        self.fast = fast
        self.register_buffer("item_tags", item_tags.detach().clone().long(), persistent=True)  # (N, T)
        self.register_buffer("item_mm", item_mm.detach().clone().float(), persistent=True)  # (N, M)
        self.id_embedding = nn.Embedding(num_items, embedding_dim, padding_idx=0)
        self.tag_embedding = nn.Embedding(num_tags, embedding_dim, padding_idx=0)
        self.mm_projection = nn.Linear(mm_dim, mm_projection_dim, bias=False)
        init_embedding(self.id_embedding)
        init_embedding(self.tag_embedding)
        nn.init.xavier_normal_(self.mm_projection.weight)
        self.table: Tensor | None = None  # (N, 2E + P) once prepared

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.id_embedding.weight, self.tag_embedding.weight, self.mm_projection.weight]

    def encode(self, ids: Tensor) -> Tensor:
        """Literal encoding of `ids` (any shape) -> (*ids.shape, 2E + P)."""
        tags = gather_rows(self.item_tags, ids)  # (..., T)
        tag_mask = (tags > 0).unsqueeze(-1).to(self.tag_embedding.weight.dtype)  # (..., T, 1)
        tag_sum = (self.tag_embedding(tags) * tag_mask).sum(-2)  # (..., E)
        tag_mean = tag_sum / tag_mask.sum(-2).clamp(min=1.0)  # 0 when the item has no tags
        mm = self.mm_projection(gather_rows(self.item_mm, ids).to(self.mm_projection.weight.dtype))  # (..., P)
        out = torch.cat([self.id_embedding(ids), tag_mean, mm], dim=-1)  # (..., 2E + P)
        return out * (ids > 0).unsqueeze(-1).to(out.dtype)  # padding item -> exact zeros

    def prepare_inference(self) -> None:
        all_ids = torch.arange(self.item_mm.shape[0], device=self.item_mm.device)
        self.table = self.encode(all_ids) if self.fast else None  # (N, 2E + P)

    def release_inference(self) -> None:
        self.table = None

    def forward(self, ids: Tensor) -> Tensor:
        if self.fast and self.table is not None and not self.training:
            return gather_rows(self.table, ids)  # (..., 2E + P)
        return self.encode(ids)
