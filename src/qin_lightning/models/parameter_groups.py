"""The two L2 groups of the training protocol (FuxiCTR's `embedding_regularizer` / `net_regularizer`): the
embedding tables of a network with `items`, `likes_embedding`, `views_embedding` (every network here), and the
rest."""

from __future__ import annotations

from torch import nn


def embedding_parameters(net: nn.Module) -> list[nn.Parameter]:
    """The embedding L2 group of a network with `items`, `likes_embedding`, `views_embedding`: every
    embedding table + the multimodal projection."""
    return net.items.embedding_parameters() + [net.likes_embedding.weight, net.views_embedding.weight]


def dense_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Every other trainable parameter of `net`: the "net" L2 group (DIN's protocol)."""
    embedding = {id(p) for p in embedding_parameters(net)}
    return [p for p in net.parameters() if p.requires_grad and id(p) not in embedding]
