"""The one network builder: a ``model.net`` config (``_target_`` one of the networks the package's model configs
name) built around the data's item tables. Training builds with it, the memory check builds with it on the meta
device (shapes only), and a stored checkpoint's config is built with it once checked as plain data of our own
classes (qin_lightning.serving.stored_config)."""

from __future__ import annotations

from typing import Any, Mapping

from omegaconf import DictConfig
from torch import Tensor, nn

from qin_lightning.config import instantiate_reporting


def build_network(net_config: DictConfig | Mapping[str, Any], item_tags: Tensor, item_mm: Tensor,
                  num_tags: int) -> nn.Module:
    """The network of `net_config` holding the item tables: tags (N, T) int64, multimodal vectors (N, M) and the
    tag vocabulary size (the tag embedding's rows); on the current default device (``torch.device("meta")``
    builds shapes only)."""
    return instantiate_reporting(net_config, item_tags=item_tags, item_mm=item_mm, num_tags=num_tags)
