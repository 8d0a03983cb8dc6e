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

import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from qin_lightning.errors import QinError
from qin_lightning.models.inference import rename_old_switches
from qin_lightning.serving.stored_config import MOVED_TARGETS, build_network, plain_config

NET_PREFIX = "net."
TAGS_KEY = "items.item_tags"
MM_KEY = "items.item_mm"
TAG_EMBEDDING_KEY = "items.tag_embedding.weight"
TRUST_HINT = "trust_checkpoint=true"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format
PICKLE_PROTO = b"\x80"  # legacy torch.save (a pickle, protocol >= 2)


class UnsafeCheckpointError(QinError):
    """A checkpoint needs more than plain data to load (it could run code); refused unless trusted."""


def read_checkpoint(path: str | Path, trust: bool = False, trust_hint: str = TRUST_HINT,
                    map_location: str | Callable[..., Any] | None = "cpu") -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` unless ``trust``; one-line QinError otherwise.

    Refused: a file whose pickle names any Python object beyond plain data (the error names it), a missing,
    truncated or corrupt file, and anything that is not a dict with a ``state_dict`` (not a Lightning checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise QinError(f"{path}: checkpoint not found (expected a .ckpt file written by qin_lightning.train)")
    _check_header(path)
    try:
        # weights_only=True explicitly: torch's TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot turn it off
        ckpt = torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            raise QinError(f"{path}: truncated or corrupt checkpoint ({_first_line(err)})") from None
        raise UnsafeCheckpointError(
            f"{path}: refused to load: it contains {_disallowed(err)}, which a safe load (plain tensors, numbers, "
            f"strings, lists and dicts) does not allow, since unpickling it could run code; if you trust the file "
            f"and whoever made it, pass {trust_hint}"
        ) from None
    except Exception as err:  # torch/zipfile/pickle raise many types for a damaged file: all mean the same here
        raise QinError(
            f"{path}: truncated or corrupt checkpoint, not a complete PyTorch file ({_first_line(err)})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise QinError(
            f"{path}: not a Lightning checkpoint (no 'state_dict' entry); expected a .ckpt written by "
            "qin_lightning.train"
        )
    return ckpt


def _check_header(path: Path) -> None:
    """A PyTorch file starts like a zip archive (torch.save) or a pickle (legacy torch.save); else say so."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise QinError(f"{path}: cannot read the checkpoint ({err.strerror or err})") from None
    if not head:
        raise QinError(f"{path}: empty file, expected a checkpoint written by qin_lightning.train")
    if not (head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTO)):
        raise QinError(
            f"{path}: not a PyTorch checkpoint (starts with {head!r}, expected a zip archive written by torch.save)"
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def _disallowed(err: BaseException) -> str:
    """What torch's weights_only unpickler refused, from its message (e.g. "the Python object `posix.system`")."""
    text = str(err)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"the Python object `{found.group(1)}`"
    found = re.search(r"WeightsUnpickler error: \s*(\S[^\n]*)", text)
    return f"a pickle instruction outside plain data ({found.group(1).strip()[:120]})" if found else \
        "Python objects beyond plain data"


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
    return state


def load_network(path: str | Path, trust: bool = False,
                 trust_hint: str = TRUST_HINT) -> tuple[nn.Module, dict[str, Any]]:
    """(network in eval mode on the CPU, run config) from a checkpoint written by our training.

    Untrusted (the default): read with ``weights_only=True``; the whole ``qin_config`` is copied as plain data
    (``stored_config.plain_config``) and the network built from that copy of ``model.net`` by
    ``stored_config.build_network`` (our classes only, sizes checked against the stored tensors). Trusted: the
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
        return build_network(cfg["model"]["net"], state, path, trust_hint).eval(), cfg
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
