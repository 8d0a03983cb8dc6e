"""Item encoder: id | masked-mean tags | projected multimodal vector (REFERENCE section 2).

Also home of `WeightsCache`, the small exact inference cache used by the item table, the fast attention
products and the folded quadratic layers: a value derived from some weights is reused only while every one
of those tensors is unchanged (same storage, same in-place version counter, same dtype/device).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn


def caching_allowed() -> bool:
    """Inference caches are used only with autograd off and outside tracing/compilation (export, compile)."""
    return not (torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling())


def init_embedding(table: nn.Embedding, std: float = 1e-4) -> None:
    """FuxiCTR embedding init: N(0, std), padding row zero."""
    nn.init.normal_(table.weight, mean=0.0, std=std)
    if table.padding_idx is not None:
        with torch.no_grad():
            table.weight[table.padding_idx].zero_()


class WeightsCache:
    """Caches `compute()` while the tensors it depends on are unchanged.

    The key is (data_ptr, _version, dtype, device) of every dependency. `_version` is bumped by every in-place
    write (optimizer steps, `load_state_dict`'s `copy_`, BatchNorm running-stat updates) and `data_ptr` changes
    when `.to()` / `.half()` reallocate. Only used when autograd is off, so a cached value never has to carry
    gradients; with grad enabled callers recompute.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: Tensor | tuple[Tensor, ...] | None = None

    @staticmethod
    def key(tensors: list[Tensor]) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def get(self, tensors: list[Tensor], compute: Callable[[], Tensor | tuple[Tensor, ...]]):
        key = self.key(tensors)
        if self._value is None or key != self._key:
            self._value = compute()
            self._key = key
        return self._value

    def clear(self) -> None:
        self._key, self._value = None, None


def _clear_cache_hook(module: nn.Module, incompatible_keys: object) -> None:
    """load_state_dict post-hook: drop any inference cache of `module` (its weights were just replaced)."""
    cache = getattr(module, "_cache", None)
    if isinstance(cache, WeightsCache):
        cache.clear()


class ItemEncoder(nn.Module):
    """Item vector (3E) = id embedding | masked mean of tag embeddings | Linear(M, E, no bias)(item_mm).

    Row i of the tables is item i; item 0 is padding and always encodes to the all-zero vector. In eval mode
    with `cache_at_inference` and autograd off, the (N, 3E) table of every item is computed once and gathered
    from (exact: same ops on the same rows); it is rebuilt whenever a weight or table changes.
    """

    def __init__(
        self,
        item_tags: Tensor,
        item_mm: Tensor,
        num_tags: int,
        embedding_dim: int = 128,
        cache_at_inference: bool = True,
    ) -> None:
        super().__init__()
        num_items, mm_dim = item_mm.shape
        self.embedding_dim = embedding_dim
        self.out_dim = 3 * embedding_dim
        self.cache_at_inference = cache_at_inference
        self.register_buffer("item_tags", item_tags.detach().clone().long(), persistent=True)  # (N, T)
        self.register_buffer("item_mm", item_mm.detach().clone().float(), persistent=True)  # (N, M)
        self.id_embedding = nn.Embedding(num_items, embedding_dim, padding_idx=0)
        self.tag_embedding = nn.Embedding(num_tags, embedding_dim, padding_idx=0)
        self.mm_projection = nn.Linear(mm_dim, embedding_dim, bias=False)
        init_embedding(self.id_embedding)
        init_embedding(self.tag_embedding)
        nn.init.xavier_normal_(self.mm_projection.weight)
        self._cache = WeightsCache()
        self.register_load_state_dict_post_hook(_clear_cache_hook)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.id_embedding.weight, self.tag_embedding.weight, self.mm_projection.weight]

    def encode(self, ids: Tensor) -> Tensor:
        """Literal encoding of `ids` (any shape) -> (*ids.shape, 3E)."""
        tags = self.item_tags[ids]  # (..., T)
        tag_mask = (tags > 0).unsqueeze(-1).to(self.tag_embedding.weight.dtype)  # (..., T, 1)
        tag_sum = (self.tag_embedding(tags) * tag_mask).sum(-2)  # (..., E)
        tag_mean = tag_sum / tag_mask.sum(-2).clamp(min=1.0)  # 0 when the item has no tags
        mm = self.mm_projection(self.item_mm[ids].to(self.mm_projection.weight.dtype))  # (..., E)
        out = torch.cat([self.id_embedding(ids), tag_mean, mm], dim=-1)  # (..., 3E)
        return out * (ids > 0).unsqueeze(-1).to(out.dtype)  # padding item -> exact zeros

    def _dependencies(self) -> list[Tensor]:
        return [self.id_embedding.weight, self.tag_embedding.weight, self.mm_projection.weight,
                self.item_tags, self.item_mm]

    def item_table(self) -> Tensor:
        """(N, 3E) vectors of all items, cached while weights and tables are unchanged."""
        all_ids = torch.arange(self.item_mm.shape[0], device=self.item_mm.device)
        return self._cache.get(self._dependencies(), lambda: self.encode(all_ids))

    def forward(self, ids: Tensor) -> Tensor:
        if self.cache_at_inference and not self.training and caching_allowed():
            return self.item_table()[ids]  # (..., 3E)
        return self.encode(ids)

    def train(self, mode: bool = True) -> "ItemEncoder":
        self._cache.clear()
        return super().train(mode)
