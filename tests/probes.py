"""Probes that tell which form of a model part really ran (literal or exact-fast), for the parity tests.

A parity test compares a fast form with the literal one; if a switch silently stopped switching, it would compare
a path with itself and stay green. These probes observe the path taken, mostly through public submodules:
- attention: the fast form never calls the W_q / W_k / W_v / W_o projections (it multiplies their weights);
- folded QNN: the folded layer never calls its (D, D*R) `linear`;
- item table: once prepared, `items(ids)` gathers rows of the (N, 3E) table, so the id embedding is called once
  for all N items when the table is prepared and not at all afterwards;
- packed history: the item encoder receives the (B + P,) targets and non-padding history ids (DIN: the (B + U,)
  targets and distinct history ids), not (B, S + 1), and the attention module's `forward_packed` is called;
- the winner's transformer by span: its encoder runs on pieces of the grid narrower than the (B, S) history,
  where the dense form runs once on the whole (B, S, 2I) grid.
Whether a part holds a prepared inference form (models.inference) is read by `prepared` (the one place that
knows the attribute names).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from qin_lightning.models.attention import TargetAttention


@contextlib.contextmanager
def forward_calls(*modules: nn.Module) -> Iterator[list[tuple[torch.Size, ...]]]:
    """Records the tensor-argument shapes of every forward call of `modules` while the block runs."""
    calls: list[tuple[torch.Size, ...]] = []

    def record(module: nn.Module, args: tuple) -> None:
        calls.append(tuple(a.shape for a in args if isinstance(a, torch.Tensor)))

    handles = [m.register_forward_pre_hook(record) for m in modules]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def method_calls(obj: object, name: str) -> Iterator[list[int]]:
    """Counts calls of the bound method `obj.name` while the block runs (one entry per call)."""
    calls: list[int] = []
    original = getattr(obj, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(*args, **kwargs)

    setattr(obj, name, counted)
    try:
        yield calls
    finally:
        delattr(obj, name)  # the instance attribute shadowed the class method


def projections(attention: TargetAttention) -> tuple[nn.Module, ...]:
    """The four projections of target attention (called by the literal form only)."""
    return attention.W_q, attention.W_k, attention.W_v, attention.W_o


def prepared(module: nn.Module) -> bool:
    """Whether `module` holds a prepared inference form (item table, attention products, folded QNN layer)."""
    return getattr(module, "table", None) is not None or getattr(module, "prepared", None) is not None


def encoder_grids(transformer: nn.Module) -> contextlib.AbstractContextManager[list[tuple[torch.Size, ...]]]:
    """The (rows, columns, width) grids the winner's transformer encoder runs on while the block runs."""
    return forward_calls(transformer.encoder)


@contextlib.contextmanager
def path_taken(net: nn.Module) -> Iterator[dict[str, bool | None]]:
    """Which form each part of a QIN / DIN / Transformer+DCN `net` ran during the block (filled in when it ends).

    Keys of a net with target attention (QIN, DIN): "fast_attention" (no projection called), "folded_qnn" (no QNN
    `linear` called, None without a QNN), "packed" (attention.forward_packed called and the item encoder saw
    only 1-D ids). Of the winner: "by_span" (its encoder ran on narrower grids than the (B, S) history, never on
    the whole grid). Of every net: "item_table" (the id embedding was never called on request ids: rows came
    from the cached table).
    """
    taken: dict[str, bool | None] = {}
    attention = getattr(net, "attention", None)
    transformer = getattr(net, "transformer", None)
    linears = [layer.linear for layer in getattr(getattr(net, "interaction", None), "layers", [])]
    with contextlib.ExitStack() as stack:
        proj = stack.enter_context(forward_calls(*projections(attention))) if isinstance(
            attention, TargetAttention) else None
        qnn = stack.enter_context(forward_calls(*linears)) if linears else None
        inputs = stack.enter_context(forward_calls(net))
        items_in = stack.enter_context(forward_calls(net.items))
        ids_in = stack.enter_context(forward_calls(net.items.id_embedding))
        packed = stack.enter_context(method_calls(attention, "forward_packed")) if hasattr(
            attention, "forward_packed") else []
        grids = stack.enter_context(encoder_grids(transformer)) if transformer is not None else None
        yield taken
    num_items = net.items.item_mm.shape[0]
    if attention is not None:
        taken["fast_attention"] = proj is not None and not proj
        taken["folded_qnn"] = None if qnn is None else not qnn
        taken["packed"] = bool(packed) and all(len(shapes[0]) == 1 for shapes in items_in)
    if grids is not None:
        history_shapes = {shapes[0] for shapes in inputs}  # item_seq (B, S) of each call of the net
        taken["by_span"] = bool(grids) and not any(shapes[0][:2] in history_shapes for shapes in grids)
    taken["item_table"] = bool(items_in) and len(ids_in) <= 1 and all(shapes[0] == (num_items,) for shapes in ids_in)
