"""The config stored in a checkpoint (`qin_config`) is data, never code: checked as plain values, then built
by the same builders as training's config.

A checkpoint may come from anyone, so nothing in its `qin_config` is instantiated, interpolated or resolved as
it stands. Instead (`plain_config`, then `stored_network` / `stored_datamodule`):

1. The stored value is copied into plain Python values: dicts with string keys, lists, str, int, float, bool,
   None (a ``_target_`` of a class that moved is renamed, `MOVED_TARGETS`). Anything else (a tuple, a tensor,
   any other type) is refused, as is every string containing ``${`` (an OmegaConf interpolation or resolver:
   none is ever evaluated) and every Hydra key other than ``_target_`` (``_args_``, ``_call_``, ``_convert_``,
   ``_recursive_``, ...; ``_partial_`` only as the ``true`` that our own attention/interaction configs carry,
   and it changes nothing: see 2).
2. That copy is checked node by node, and only the checked copy is built (with training's builders:
   ``models.build.build_network`` for ``model.net``, Hydra's instantiate for ``data``): a ``_target_`` must be
   the exact name of a class in the allowlists below (`NETWORKS` and `NETWORK_PARTS` for ``model.net``, `DATA_MODULES` and
   `DATA_PARTS` for ``data``); a network's parts are always passed as partials (the network calls them with
   its width); every other key must be a parameter of that class, with a value of the kind its default has
   (an int where the default is an int, ...), and a class may only be named as the value of such a parameter.
3. Sizes are checked before anything is allocated: every int and every list length of ``model.net`` is at
   most the largest dimension (or the number) of the checkpoint's tensors, the network is first built on the
   ``meta`` device (no storage), creating at most a few times the stored tensors and elements (a config
   declaring 3 million layers stops at the first one over), and every parameter and buffer shape must equal the
   stored one before it is built for real (the stored tensors own their bytes: qin_lightning.checkpoint); the
   stored ``data`` subtree is bounded (`check_data_bounds`) and a synthetic dataset's declared sizes must fit
   in the available memory.

``trust_checkpoint=true`` (``--trust-checkpoint``) skips all of this and instantiates the stored config with
Hydra, as a trusted config: for files the user trusts completely.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Union

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class
from torch import Tensor, nn

from qin_lightning.config import instantiate_reporting, model_targets
from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.data.movielens.source import MovieLensSource
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.data.synthetic import check_fits_in_memory as check_synthetic_fits
from qin_lightning.errors import QinError
from qin_lightning.machine import creation_budget
from qin_lightning.models.build import build_network
from qin_lightning.models.inference import rename_old_switches

Plain = Union[dict[str, "Plain"], list["Plain"], str, int, float, bool, None]
TARGET = "_target_"
PARTIAL = "_partial_"
MAX_DEPTH = 16  # our configs nest 3 deep


def _names(*classes: type) -> dict[str, type]:
    return {f"{cls.__module__}.{cls.__qualname__}": cls for cls in classes}


# the only classes a stored config may name, per subtree; `*_PARTS` only as a parameter of a `NETWORKS` /
# `DATA_MODULES` class. The network classes are the ones the package's own model configs name
# (conf/model/*.yaml and their attention/interaction parts: qin_lightning.config.model_targets)
_NETWORK_TARGETS, _PART_TARGETS = model_targets()
NETWORKS = _names(*map(get_class, _NETWORK_TARGETS))
NETWORK_PARTS = _names(*map(get_class, _PART_TARGETS))
DATA_MODULES = _names(MMCTRDataModule)
DATA_PARTS = _names(SyntheticConfig, MovieLensSource)
# classes that moved after checkpoints naming them were written: old name -> current name
MOVED_TARGETS = {"qin_lightning.data.movielens.MovieLensSource": "qin_lightning.data.movielens.source.MovieLensSource"}
# what a constructor of ours raises for a value it cannot use (e.g. Path(None), a source path too long to stat)
CONSTRUCTOR_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError, RuntimeError, OSError,
                      ArithmeticError)
# building a stored model.net (meta device included) may create at most 3 x the stored elements + this many, and
# this many tensors per stored tensor + BUILD_SLACK_TENSORS (a network creates each weight once or twice)
BUILD_SLACK_ELEMENTS = 1_000_000
BUILD_TENSORS_PER_STORED = 16
BUILD_SLACK_TENSORS = 256
# what the network takes from the checkpoint's tensors, never from its config
NETWORK_TENSOR_ARGS = ("item_tags", "item_mm", "num_tags")


class StoredConfigError(QinError):
    """A checkpoint's stored config is not plain data of our own classes (refused unless trusted)."""


def _refuse(path: str | Path, where: str, expected: str, got: str, trust_hint: str) -> StoredConfigError:
    return StoredConfigError(
        f"{path}: qin_config {where}: expected {expected}, got {got}; a checkpoint's config is read as plain "
        f"data, never run (if you trust the file and whoever made it, pass {trust_hint})"
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:80] + '...' if len(text) > 80 else text}"


# ---- 1. plain data -----------------------------------------------------------------------------------------
def plain_config(value: Any, where: str, path: str | Path, trust_hint: str, depth: int = 0) -> Plain:
    """A copy of `value` made of plain Python values only (module doc, step 1); StoredConfigError otherwise."""
    if depth > MAX_DEPTH:
        raise _refuse(path, where, f"at most {MAX_DEPTH} nested levels", "deeper nesting", trust_hint)
    kind = type(value)
    if value is None or kind in (bool, int, float):
        return value
    if kind is str:
        if "${" in value:
            raise _refuse(path, where, "a plain string", f"an interpolation {_shown(value)}", trust_hint)
        return value
    if kind is list:
        return [plain_config(v, f"{where}[{i}]", path, trust_hint, depth + 1) for i, v in enumerate(value)]
    if kind is dict:
        copy: dict[str, Plain] = {}
        for key, item in value.items():
            if type(key) is not str or "${" in key:
                raise _refuse(path, f"{where} key {key!r}", "a plain string key", _shown(key), trust_hint)
            inner = f"{where}.{key}" if where else key
            if key.startswith("_") and key.endswith("_") and key not in (TARGET, PARTIAL):
                raise _refuse(path, inner, "no Hydra instruction but _target_", f"the key {key}", trust_hint)
            copy[key] = plain_config(item, inner, path, trust_hint, depth + 1)
            if key == TARGET and isinstance(copy[key], str) and copy[key] in MOVED_TARGETS:
                copy[key] = MOVED_TARGETS[copy[key]]
        return copy
    raise _refuse(path, where, "a dict, list, str, int, float, bool or null", _shown(value), trust_hint)


# ---- 2. built by the walk that checks it -------------------------------------------------------------------
def _kind_of(default: Any) -> tuple[tuple[type, ...], str] | None:
    """The value types a parameter with this default accepts (None: any plain scalar or a class node)."""
    if isinstance(default, bool):
        return (bool,), "true or false"
    if isinstance(default, int):
        return (int,), "an integer"
    if isinstance(default, float):
        return (int, float), "a number"
    if isinstance(default, str):
        return (str,), "a string"
    if isinstance(default, list):
        return (list,), "a list"
    return None


class _Checker:
    """Checks one subtree (``model.net`` or ``data``) of a plain config against one allowlist; returns the checked
    copy (the nodes' ``_target_``, ``_partial_`` and parameters), which is what gets built."""

    def __init__(self, roots: dict[str, type], parts: dict[str, type], partial_parts: bool,
                 path: str | Path, trust_hint: str, fixed: tuple[str, ...] = ()) -> None:
        self.roots, self.parts, self.partial_parts = roots, parts, partial_parts
        self.path, self.trust_hint = path, trust_hint
        self.fixed = fixed  # parameters of the root class that come from elsewhere (the tensors), never stored

    def refuse(self, where: str, expected: str, got: str) -> StoredConfigError:
        return _refuse(self.path, where, expected, got, self.trust_hint)

    def check(self, node: Plain, where: str) -> dict[str, Plain]:
        return self._node(node, where, self.roots, is_part=False)

    def _node(self, node: Plain, where: str, allowed: dict[str, type], is_part: bool) -> dict[str, Plain]:
        if not isinstance(node, dict):
            raise self.refuse(where, "a mapping with a _target_", _shown(node))
        target = node.get(TARGET)
        if not isinstance(target, str) or target not in allowed:
            raise self.refuse(f"{where}._target_", f"one of {sorted(allowed)}", _shown(target))
        cls = allowed[target]
        partial = node.get(PARTIAL)
        if PARTIAL in node and not (is_part and self.partial_parts and partial is True):
            raise self.refuse(f"{where}._partial_", "no _partial_ (only a network part may carry _partial_: true)",
                              _shown(partial))
        params = inspect.signature(cls).parameters
        # a network's parts are always built as partials (the network calls them with its width)
        checked: dict[str, Plain] = {TARGET: target, **({PARTIAL: True} if is_part and self.partial_parts else {})}
        for key, value in node.items():
            if key in (TARGET, PARTIAL):
                continue
            inner = f"{where}.{key}"
            param = params.get(key)
            if param is None or key in self.fixed or param.kind not in (param.POSITIONAL_OR_KEYWORD,
                                                                       param.KEYWORD_ONLY):
                raise self.refuse(inner, f"a parameter of {target}", f"the key {key!r}")
            checked[key] = self._value(value, inner, param.default)
        return checked

    def _value(self, value: Plain, where: str, default: Any) -> Plain:
        if isinstance(value, dict):
            return self._node(value, where, self.parts, is_part=True)
        kind = _kind_of(default)
        if isinstance(value, list):
            if kind is not None and kind[0] != (list,):
                raise self.refuse(where, kind[1], _shown(value))
            for i, item in enumerate(value):
                if isinstance(item, (dict, list)):
                    raise self.refuse(f"{where}[{i}]", "a plain value", _shown(item))
            return list(value)
        if kind is not None and value is not None and (type(value) not in kind[0]):
            raise self.refuse(where, kind[1], _shown(value))
        return value


def _from_checkpoint(err: QinError, path: str | Path, where: str) -> QinError:
    """A constructor's own one-line error, said to come from this checkpoint's config."""
    return type(err)(f"{path}: qin_config {where}: {err}")


def _built_error(err: BaseException) -> str:
    """The first line of what a constructor raised (Hydra wraps it: its cause)."""
    return _first_line(err.__cause__ if isinstance(err, InstantiationException) and err.__cause__ else err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


# ---- 3. sizes before allocation ----------------------------------------------------------------------------
def _check_net_sizes(node: Plain, where: str, limit: int, count: int, path: str | Path, trust_hint: str) -> None:
    """Every int <= `limit` (the largest stored tensor dimension) and every list <= `count` entries."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_net_sizes(value, f"{where}.{key}", limit, count, path, trust_hint)
    elif isinstance(node, list):
        if len(node) > count:
            raise _refuse(path, where, f"a list of at most {count} entries (the checkpoint holds {count} tensors)",
                          f"{len(node)} entries", trust_hint)
        for i, value in enumerate(node):
            _check_net_sizes(value, f"{where}[{i}]", limit, count, path, trust_hint)
    elif type(node) is int and abs(node) > limit:
        raise _refuse(path, where, f"an integer of at most {limit:,} (the largest dimension of the checkpoint's "
                                   "tensors)", f"{node:,}", trust_hint)


def stored_network(net_config: Any, state: dict[str, Tensor], path: str | Path, trust_hint: str) -> nn.Module:
    """Our network described by a stored ``model.net`` (plain, checked: module doc), holding `state` (strict).

    `state` is the network's state dict (item tables included), the only source of the item tables and the
    tag vocabulary; the network is first built on the meta device and its shapes compared with `state`.
    """
    plain = rename_old_switches(plain_config(net_config, "model.net", path, trust_hint))
    dims = [int(d) for t in state.values() for d in t.shape]
    _check_net_sizes(plain, "model.net", max([len(state), *dims]), len(state), path, trust_hint)
    checked = _Checker(NETWORKS, NETWORK_PARTS, True, path, trust_hint, NETWORK_TENSOR_ARGS).check(plain, "model.net")
    tags, mm, tag_table = state["items.item_tags"], state["items.item_mm"], state["items.tag_embedding.weight"]
    stored_elements = sum(t.numel() for t in state.values())
    budget = (3 * stored_elements + BUILD_SLACK_ELEMENTS, BUILD_TENSORS_PER_STORED * len(state) + BUILD_SLACK_TENSORS)

    def make(device: str) -> nn.Module:
        try:
            with creation_budget(*budget, f"building it (the checkpoint holds {len(state)} tensors of "
                                          f"{stored_elements:,} elements)"), torch.device(device):
                return build_network(checked, torch.zeros(tags.shape, dtype=tags.dtype),
                                     torch.zeros(mm.shape, dtype=mm.dtype), int(tag_table.shape[0]))
        except QinError as err:  # a constructor's own one-line error, said to come from this checkpoint
            raise _from_checkpoint(err, path, "model.net") from None
        except (InstantiationException, *CONSTRUCTOR_ERRORS) as err:
            raise QinError(f"{path}: qin_config model.net: cannot build the network ({_built_error(err)})") from None

    _check_shapes(make("meta"), state, path)
    net = make("cpu")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise QinError(f"{path}: weights do not match qin_config.model.net ({_first_line(err)})") from None
    return net


def _check_shapes(meta_net: nn.Module, state: dict[str, Tensor], path: str | Path) -> None:
    """The network described by the config has exactly the stored tensors' names and shapes."""
    expected = meta_net.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        problem = f"missing net.{missing[0]}" if missing else f"unexpected net.{unexpected[0]}"
        raise QinError(f"{path}: weights do not match qin_config.model.net ({problem}; "
                       f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for key, tensor in expected.items():
        if tuple(tensor.shape) != tuple(state[key].shape):
            raise QinError(f"{path}: state_dict net.{key}: expected shape {tuple(tensor.shape)} (from "
                           f"qin_config.model.net), got {tuple(state[key].shape)}")


# bounds of a stored data config's own settings (the synthetic generator's and a source's: their classes)
DATA_BOUNDS: dict[str, tuple[int, int, bool]] = {  # key: (lowest, highest, may be null)
    "max_len": (1, 65_536, False),
    "batch_size": (1, 1_048_576, False),
    "eval_batch_size": (1, 1_048_576, True),
    "num_workers": (0, 256, False),
    "seed": (0, 2**63 - 1, False),
    "num_tags": (1, 2**31 - 1, True),
}


def check_data_bounds(plain: Plain, path: str | Path, trust_hint: str) -> None:
    """The stored data module's own numbers within `DATA_BOUNDS` (before anything is built or allocated)."""
    if not isinstance(plain, dict):
        return  # the builder refuses it
    for key, (low, high, nullable) in DATA_BOUNDS.items():
        if key not in plain:
            continue
        value = plain[key]
        if value is None and nullable:
            continue
        if type(value) is not int or not low <= value <= high:
            expected = f"an integer in {low:,}..{high:,}" + (" or null" if nullable else "")
            raise _refuse(path, f"data.{key}", expected, _shown(value), trust_hint)
    if "pin_memory" in plain and plain["pin_memory"] is not None and type(plain["pin_memory"]) is not bool:
        raise _refuse(path, "data.pin_memory", "true, false or null", _shown(plain["pin_memory"]), trust_hint)


def stored_datamodule(data_config: Any, path: str | Path, trust_hint: str) -> MMCTRDataModule:
    """Our data module described by a stored ``data`` config (plain, checked: module doc); its numbers bounded
    (`check_data_bounds`, the generator's and source's own checks) and a synthetic dataset whose declared sizes
    would not fit in the available memory refused, before anything is generated or read."""
    plain = plain_config(data_config, "data", path, trust_hint)
    check_data_bounds(plain, path, trust_hint)
    checked = _Checker(DATA_MODULES, DATA_PARTS, False, path, trust_hint).check(plain, "data")
    try:  # as training builds its data module (training.build.build_datamodule)
        dm = instantiate_reporting(checked, _convert_="object")
    except QinError as err:
        raise _from_checkpoint(err, path, "data") from None
    except (InstantiationException, *CONSTRUCTOR_ERRORS) as err:
        raise QinError(f"{path}: qin_config data: cannot build the data module ({_built_error(err)})") from None
    if dm.synthetic is not None:
        try:
            check_synthetic_fits(dm.synthetic, "qin_config data.synthetic")
        except QinError as err:
            raise StoredConfigError(f"{path}: {err}") from None
    return dm
