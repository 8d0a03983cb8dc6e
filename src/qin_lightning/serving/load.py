"""Read checkpoints safely and rebuild a trained network from one (train's resume, eval, predict, export).

A checkpoint is untrusted input: it may come from anyone. It is read with ``torch.load(weights_only=True)``
(tensors, numbers, strings, lists, dicts: unpickling cannot run code), and the config stored in it
(``qin_config``) is data, never instantiated or resolved: the network is rebuilt by
``qin_lightning.serving.stored_config`` from plain values naming only our own classes. ``trust=True``
(``trust_checkpoint=true``, ``--trust-checkpoint``) lifts both restrictions for a file the user trusts (then the
stored config is instantiated with Hydra).

A checkpoint holds `state_dict` (CTRModule keys: `net.<param>`, item tables included as buffers) and
`qin_config`, the resolved Hydra config of the run. The network is built from `qin_config["model"]["net"]`
with zero item tables shaped like the stored buffers, then the state dict is loaded (strict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from qin_lightning.checkpoint import TRUST_HINT, read_checkpoint
from qin_lightning.data.layout import NUM_LEVELS
from qin_lightning.errors import QinError
from qin_lightning.models.inference import rename_old_switches
from qin_lightning.serving.stored_config import MOVED_TARGETS, plain_config, stored_network

NET_PREFIX = "net."
TAGS_KEY = "items.item_tags"
MM_KEY = "items.item_mm"
TAG_EMBEDDING_KEY = "items.tag_embedding.weight"
LEVEL_KEYS = ("likes_embedding.weight", "views_embedding.weight")


def _update_moved_targets(node: Any) -> None:
    """Rewrite, in place, every ``_target_`` of MOVED_TARGETS to the class's current path (trusted loading)."""
    if isinstance(node, dict):
        if node.get("_target_") in MOVED_TARGETS:
            node["_target_"] = MOVED_TARGETS[node["_target_"]]
        for value in node.values():
            _update_moved_targets(value)
    elif isinstance(node, list):
        for value in node:
            _update_moved_targets(value)


def network_state(ckpt: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The `net.` entries of the CTRModule state dict, prefix removed."""
    state = {k[len(NET_PREFIX):]: v for k, v in ckpt["state_dict"].items() if k.startswith(NET_PREFIX)}
    if not state:
        raise QinError(f"{path}: state_dict has no '{NET_PREFIX}*' entries (not a CTRModule checkpoint)")
    for key in (TAGS_KEY, MM_KEY, TAG_EMBEDDING_KEY):
        if key not in state:
            raise QinError(f"{path}: state_dict lacks '{NET_PREFIX}{key}' (expected the item tables of a QIN/DIN)")
    check_network_state(state, path)
    return state


def check_network_state(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """What the network indexes with must be inside what it indexes: the item tags inside the tag table, the
    data's likes/views levels (0..NUM_LEVELS-1) inside the level tables; every weight finite. One QinError line."""
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise QinError(f"{path}: state_dict {NET_PREFIX}{key}: expected a tensor, got {type(value).__name__}")
    tags, mm, tag_table = state[TAGS_KEY], state[MM_KEY], state[TAG_EMBEDDING_KEY]
    if tags.dtype != torch.long or not mm.dtype.is_floating_point or not tag_table.dtype.is_floating_point:
        raise QinError(
            f"{path}: state_dict net.items.*: expected int64 item_tags and float item_mm / tag_embedding.weight, "
            f"got {tags.dtype}, {mm.dtype}, {tag_table.dtype}"
        )
    if tag_table.dim() != 2 or tags.dim() != 2 or mm.dim() != 2:
        raise QinError(f"{path}: state_dict net.items.*: expected 2-D item tables, got shapes "
                       f"{tuple(tags.shape)}, {tuple(mm.shape)}, {tuple(tag_table.shape)}")
    if tags.shape[0] != mm.shape[0]:
        raise QinError(f"{path}: state_dict {NET_PREFIX}{TAGS_KEY}: {tags.shape[0]:,} items, but "
                       f"{NET_PREFIX}{MM_KEY} has {mm.shape[0]:,}; expected one row per item in both")
    if tags.numel() and (int(tags.min()) < 0 or int(tags.max()) >= tag_table.shape[0]):
        bad = int(tags.min()) if int(tags.min()) < 0 else int(tags.max())
        row = int(torch.nonzero(tags == bad)[0, 0])
        raise QinError(f"{path}: state_dict {NET_PREFIX}{TAGS_KEY}: row {row} holds tag id {bad}, expected "
                       f"0..{tag_table.shape[0] - 1} (the rows of {NET_PREFIX}{TAG_EMBEDDING_KEY})")
    for key in LEVEL_KEYS:
        table = state.get(key)
        if table is not None and (table.dim() != 2 or table.shape[0] < NUM_LEVELS):
            raise QinError(f"{path}: state_dict {NET_PREFIX}{key}: shape {tuple(table.shape)}, expected at least "
                           f"{NUM_LEVELS} rows (the data's levels are 0..{NUM_LEVELS - 1})")
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            where = tuple(int(i) for i in torch.nonzero(~torch.isfinite(value))[0])
            raise QinError(f"{path}: state_dict {NET_PREFIX}{key}: holds {float(value[where])} at {list(where)}, "
                           "expected finite weights (a model with NaN or infinite weights predicts NaN)")


def load_network(path: str | Path, trust: bool = False,
                 trust_hint: str = TRUST_HINT) -> tuple[nn.Module, dict[str, Any]]:
    """(network in eval mode on the CPU, run config) from a checkpoint written by our training.

    Untrusted (the default): read with ``weights_only=True``; the whole ``qin_config`` is copied as plain data
    (``stored_config.plain_config``) and the network built from that copy of ``model.net`` by
    ``stored_config.stored_network`` (our classes only, sizes checked against the stored tensors). Trusted: the
    stored ``model.net`` is instantiated with Hydra.
    """
    ckpt = read_checkpoint(path, trust=trust, trust_hint=trust_hint)
    cfg = ckpt.get("qin_config")
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or "net" not in cfg["model"]:
        raise QinError(
            f"{path}: checkpoint has no 'qin_config' with model.net (it was not written by qin_lightning.train)"
        )
    state = network_state(ckpt, path)
    if not trust:
        cfg = plain_config(cfg, "", path, trust_hint)
        assert isinstance(cfg, dict)
        return stored_network(cfg["model"]["net"], state, path, trust_hint).eval(), cfg
    _update_moved_targets(cfg)
    tags, mm = state[TAGS_KEY], state[MM_KEY]
    try:
        net = instantiate(
            OmegaConf.create(rename_old_switches(cfg["model"]["net"])),
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
