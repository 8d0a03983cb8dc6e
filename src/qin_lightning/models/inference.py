"""The inference form of a network: one explicit lifecycle, one switch name.

Every model part with an exact fast form has a `fast` switch (True by default; False = the literal paper form):
  ItemEncoder.fast       inference: gather rows of the prepared (N, I) table of every item vector
  TargetAttention.fast   scores and output through the two d x d weight products (training too)
  QuadraticLayer.fast    eval mode: the R row matrices (and eval BatchNorm) folded into one D x D matrix
  QIN / DIN .fast        only the non-padding history positions are encoded and attended (CPU); also the
                         item encoder's switch (`model.net.fast`)

The values a fast form derives from the weights (item table, attention products, folded QNN layers) are
computed once by `prepare_inference(net)` and dropped by `release_inference(net)`; `inference_form(net)`
does both around a block. A prepared part uses its stored tensors in eval mode (also while tracing: an
ONNX export records them as constants); an unprepared part computes them from the current weights (the
same values, and differentiable); training mode never uses a prepared form. The stored tensors are a
snapshot: prepare after `.to(device)` / `load_state_dict`, and release before the weights change again
(the LightningModule prepares at the start of every validation / test / predict epoch and releases at
its end).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

# the switch names checkpoints written before the lifecycle carry in qin_config.model.net (same meaning)
_OLD_SWITCH_NAMES = ("pack_history", "fold_at_inference")


@runtime_checkable
class Preparable(Protocol):
    """A model part with a prepared inference form."""

    def prepare_inference(self) -> None: ...

    def release_inference(self) -> None: ...


def prepare_inference(net: nn.Module) -> nn.Module:
    """Puts `net` in eval mode and prepares every part's inference form from its current weights (full
    precision, no autograd); returns `net`."""
    net.eval()
    weight = next(net.parameters(), None)
    with torch.no_grad(), torch.autocast(weight.device.type if weight is not None else "cpu", enabled=False):
        for module in net.modules():
            if isinstance(module, Preparable):
                module.prepare_inference()
    return net


def release_inference(net: nn.Module) -> None:
    """Drops every prepared inference form of `net` (parts compute from their weights again)."""
    for module in net.modules():
        if isinstance(module, Preparable):
            module.release_inference()


@contextlib.contextmanager
def inference_form(net: nn.Module) -> Iterator[nn.Module]:
    """`net` in eval mode with its inference form prepared for the block, released after it."""
    prepare_inference(net)
    try:
        yield net
    finally:
        release_inference(net)


def set_fast_paths(net: nn.Module, fast: bool) -> None:
    """Sets the `fast` switch of every part of `net` (False: the literal paper form everywhere)."""
    for module in net.modules():
        if hasattr(module, "fast"):
            module.fast = fast


def fast_path_state(net: nn.Module) -> dict[str, bool]:
    """{"<path>.fast": value} of the first part of each class carrying the switch, e.g. "fast" (the net),
    "items.fast", "attention.fast", "interaction.layers.0.fast" (benchmark records)."""
    state: dict[str, bool] = {}
    seen: set[type] = set()
    for name, module in net.named_modules():
        if hasattr(module, "fast") and type(module) not in seen:
            seen.add(type(module))
            state[f"{name}.fast" if name else "fast"] = bool(module.fast)
    return state


def rename_old_switches(net_config: Any) -> Any:
    """A checkpoint's qin_config.model.net with the switches' older names (`pack_history`,
    `fold_at_inference`) renamed to `fast`, so checkpoints written before the rename still load."""
    if isinstance(net_config, dict):
        return {("fast" if key in _OLD_SWITCH_NAMES else key): rename_old_switches(value)
                for key, value in net_config.items()}
    return net_config
