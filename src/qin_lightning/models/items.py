"""Item encoder: id | masked-mean tags | projected multimodal vector (REFERENCE section 2).

Also home of `WeightsCache`, the small exact inference cache used by the item table, the fast attention
products and the folded quadratic layers: a value derived from some weights is reused only while every one
of those tensors is unchanged (same storage, same in-place version counter, same dtype/device).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

_CACHES_AS_CONSTANTS = False


def caching_allowed() -> bool:
    """Inference caches are used only with autograd off and outside tracing/compilation (export, compile),
    unless `caches_as_constants()` is active (export: the tracer then records the cached tensors as constants).
    """
    if torch.is_grad_enabled():
        return False
    return _CACHES_AS_CONSTANTS or not (torch.jit.is_tracing() or torch.compiler.is_compiling())


@contextlib.contextmanager
def caches_as_constants() -> Iterator[None]:
    """Let a trace (ONNX export) use the inference caches: the exported graph gathers from the (N, I) item
    table and uses the folded / pre-multiplied matrices. Build the caches first (one eval forward under
    `torch.no_grad()` outside the trace), or the trace records their computation instead.
    """
    global _CACHES_AS_CONSTANTS
    previous, _CACHES_AS_CONSTANTS = _CACHES_AS_CONSTANTS, True
    try:
        yield
    finally:
        _CACHES_AS_CONSTANTS = previous


def init_embedding(table: nn.Embedding, std: float = 1e-4) -> None:
    """FuxiCTR embedding init: N(0, std), padding row zero."""
    nn.init.normal_(table.weight, mean=0.0, std=std)
    if table.padding_idx is not None:
        with torch.no_grad():
            table.weight[table.padding_idx].zero_()


def gather_rows(table: Tensor, ids: Tensor) -> Tensor:
    """table[ids] for a (N, ...) table and ids of any shape, via index_select (a faster row copy on CPU)."""
    return table.index_select(0, ids.reshape(-1)).view(*ids.shape, *table.shape[1:])


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
            with torch.autocast(tensors[0].device.type, enabled=False):  # cached values are full precision
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
    """Item vector (2E + P) = id embedding (E) | masked mean of tag embeddings (E) | Linear(M, P, no bias)(item_mm).

    P = `mm_projection_dim`, 128 for every model: the challenge's dataset config declares the multimodal
    feature with `embedding_dim: 128` whatever the model's embedding_dim (REFERENCE 2b), so QIN's item is
    384 = 3 x 128 and DIN's / the winner's (E = 64) is 64 + 64 + 128 = 256.

    Row i of the tables is item i; item 0 is padding and always encodes to the all-zero vector. In eval mode
    with `cache_at_inference` and autograd off, the (N, I) table of every item is computed once and gathered
    from (exact: same ops on the same rows); it is rebuilt whenever a weight or table changes.
    """

    def __init__(
        self,
        item_tags: Tensor,
        item_mm: Tensor,
        num_tags: int,
        embedding_dim: int = 128,
        mm_projection_dim: int = 128,
        cache_at_inference: bool = True,
    ) -> None:
        super().__init__()
        num_items, mm_dim = item_mm.shape
        self.embedding_dim = embedding_dim
        self.mm_projection_dim = mm_projection_dim
        self.out_dim = 2 * embedding_dim + mm_projection_dim
        self.cache_at_inference = cache_at_inference
        self.register_buffer("item_tags", item_tags.detach().clone().long(), persistent=True)  # (N, T)
        self.register_buffer("item_mm", item_mm.detach().clone().float(), persistent=True)  # (N, M)
        self.id_embedding = nn.Embedding(num_items, embedding_dim, padding_idx=0)
        self.tag_embedding = nn.Embedding(num_tags, embedding_dim, padding_idx=0)
        self.mm_projection = nn.Linear(mm_dim, mm_projection_dim, bias=False)
        init_embedding(self.id_embedding)
        init_embedding(self.tag_embedding)
        nn.init.xavier_normal_(self.mm_projection.weight)
        self._cache = WeightsCache()
        self.register_load_state_dict_post_hook(_clear_cache_hook)

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

    def _dependencies(self) -> list[Tensor]:
        return [self.id_embedding.weight, self.tag_embedding.weight, self.mm_projection.weight,
                self.item_tags, self.item_mm]

    def item_table(self) -> Tensor:
        """(N, 2E + P) vectors of all items, cached while weights and tables are unchanged."""
        all_ids = torch.arange(self.item_mm.shape[0], device=self.item_mm.device)
        return self._cache.get(self._dependencies(), lambda: self.encode(all_ids))

    def forward(self, ids: Tensor) -> Tensor:
        if self.cache_at_inference and not self.training and caching_allowed():
            return gather_rows(self.item_table(), ids)  # (..., 2E + P)
        return self.encode(ids)

    def train(self, mode: bool = True) -> "ItemEncoder":
        if mode:  # training invalidates the inference cache; eval() keeps a valid one
            self._cache.clear()
        return super().train(mode)
