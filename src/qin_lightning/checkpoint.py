"""Rebuild a trained network from a Lightning checkpoint written by `qin_lightning.train` (eval/predict/export).

A checkpoint holds `state_dict` (CTRModule keys: `net.<param>`, item tables included as buffers) and
`qin_config`, the resolved Hydra config of the run. The network is instantiated from `qin_config["model"]["net"]`
with zero item tables shaped like the stored buffers, then the state dict is loaded (strict).
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from qin_lightning.errors import QinError

NET_PREFIX = "net."
TAGS_KEY = "items.item_tags"
MM_KEY = "items.item_mm"
TAG_EMBEDDING_KEY = "items.tag_embedding.weight"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load a checkpoint on the CPU; QinError when it is missing or not a readable checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise QinError(f"{path}: checkpoint not found (expected a .ckpt file written by qin_lightning.train)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise QinError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise QinError(f"{path}: not a Lightning checkpoint (no 'state_dict' entry)")
    return ckpt


def network_state(ckpt: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The `net.` entries of the CTRModule state dict, prefix removed."""
    state = {k[len(NET_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    if not state:
        raise QinError(f"{path}: state_dict has no '{NET_PREFIX}*' entries (not a CTRModule checkpoint)")
    for key in (TAGS_KEY, MM_KEY, TAG_EMBEDDING_KEY):
        if key not in state:
            raise QinError(f"{path}: state_dict lacks '{NET_PREFIX}{key}' (expected the item tables of a QIN/DIN)")
    return state


def load_network(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(network in eval mode on the CPU, resolved run config) from a checkpoint written by our training."""
    ckpt = read_checkpoint(path)
    cfg = ckpt.get("qin_config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "net" not in cfg["model"]:
        raise QinError(
            f"{path}: checkpoint has no 'qin_config' with model.net (it was not written by qin_lightning.train)"
        )
    state = network_state(ckpt, path)
    tags, mm = state[TAGS_KEY], state[MM_KEY]
    try:
        net = instantiate(
            OmegaConf.create(cfg["model"]["net"]),
            item_tags=torch.zeros_like(tags),
            item_mm=torch.zeros_like(mm),
            num_tags=int(state[TAG_EMBEDDING_KEY].shape[0]),
        )
    except (HydraException, TypeError, ValueError, QinError) as err:
        raise QinError(f"{path}: cannot rebuild the network from qin_config.model.net ({err})") from err
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise QinError(f"{path}: weights do not match qin_config.model.net ({first})") from err
    return net.eval(), cfg
