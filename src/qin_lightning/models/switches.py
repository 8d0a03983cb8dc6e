"""One switch for all exact fast paths of a model (the bench's "fast" vs "plain" configurations, export)."""

from __future__ import annotations

from torch import nn

from qin_lightning.models.attention import TargetAttention
from qin_lightning.models.interaction import QuadraticLayer
from qin_lightning.models.items import ItemEncoder


def set_fast_paths(net: nn.Module, fast: bool) -> None:
    """Turn every exact fast path of `net` on, or off (`fast=False`: the literal paper form everywhere).

    Fast paths: TargetAttention.fast (ASTA on the item vectors), QuadraticLayer.fold_at_inference (eval-mode
    folded QNN, post placement only), ItemEncoder.cache_at_inference (the (N, I) item table at inference) and
    `pack_history` (QIN / DIN: only non-padding history positions are encoded and attended). Weights,
    buffers and caches are untouched: the same weights compute the same function either way.
    """
    for module in net.modules():
        if isinstance(module, TargetAttention):
            module.fast = fast
        elif isinstance(module, QuadraticLayer):
            module.fold_at_inference = fast and module.placement == "post"
        elif isinstance(module, ItemEncoder):
            module.cache_at_inference = fast
        if hasattr(module, "pack_history"):
            module.pack_history = fast


def fast_path_state(net: nn.Module) -> dict[str, bool]:
    """{switch: value} of the first module carrying each switch (for benchmark records)."""
    state: dict[str, bool] = {}
    for module in net.modules():
        if isinstance(module, TargetAttention):
            state.setdefault("attention.fast", module.fast)
        elif isinstance(module, QuadraticLayer):
            state.setdefault("interaction.fold_at_inference", module.fold_at_inference)
        elif isinstance(module, ItemEncoder):
            state.setdefault("items.cache_at_inference", module.cache_at_inference)
        if hasattr(module, "pack_history"):
            state.setdefault("pack_history", bool(module.pack_history))
    return state


def clear_inference_caches(net: nn.Module) -> None:
    """Drop every inference cache of `net` (item table, folded QNN, attention products).

    The caches also check the `_version` of the weights they depend on, but not every in-place update bumps
    it (fused Adam kernels do not), and Lightning restores train/eval modes by assigning `.training` rather
    than calling `train()`. So the trainer clears them explicitly after every optimizer step.
    """
    for module in net.modules():
        cache = getattr(module, "_cache", None)
        if cache is not None and hasattr(cache, "clear"):
            cache.clear()
