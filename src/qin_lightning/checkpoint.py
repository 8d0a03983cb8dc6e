"""Read a checkpoint file strictly: a checkpoint is untrusted input, it may come from anyone.

``torch.load(weights_only=True)`` (tensors, numbers, strings, lists, dicts: unpickling cannot run code) unless the
user trusts the file (``trust_checkpoint=true``, ``--trust-checkpoint``); a missing, empty, truncated, foreign or
unsafe file is one ``QinError`` line. Used by training's resume and by everything that loads a trained network.

Every tensor of an untrusted file must own exactly its bytes, the rules safetensors applies: strided, contiguous,
starting at the start of its storage, a storage of exactly ``numel x itemsize`` bytes, shared with no other tensor
(a scalar may be: Lightning's ModelCheckpoint state shares them).
So a tensor's declared shape is paid for by the bytes in the file: ``torch.zeros(1).expand(N, D)`` (4 bytes on
disk declaring any shape) is refused before anything is sized from it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Callable

import torch

from qin_lightning.errors import QinError

TRUST_HINT = "trust_checkpoint=true"
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format
PICKLE_PROTO = b"\x80"  # legacy torch.save (a pickle, protocol >= 2)
MAX_DEPTH = 32  # nesting of a checkpoint's dicts / lists (Lightning's: about 6)


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
    if not trust:
        check_tensor_storage(ckpt, path, trust_hint)
    return ckpt


def check_tensor_storage(value: Any, path: str | Path, trust_hint: str = TRUST_HINT) -> None:
    """Every tensor in `value` (nested dicts / lists) owns exactly its bytes (module doc); one QinError line."""
    seen: dict[int, str] = {}
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise QinError(f"{path}: {where or 'checkpoint'}: expected at most {MAX_DEPTH} nested levels")
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, torch.Tensor):
            _check_one_tensor(node, where, path, seen, trust_hint)


def _check_one_tensor(tensor: torch.Tensor, where: str, path: str | Path, seen: dict[int, str],
                      trust_hint: str) -> None:
    def refuse(problem: str) -> QinError:
        return QinError(f"{path}: {where}: expected a tensor that owns exactly its bytes (contiguous, "
                        f"unshared, storage = numel x itemsize), got {problem}; if you trust the file and whoever "
                        f"made it, pass {trust_hint}")

    if tensor.layout != torch.strided:
        raise refuse(f"a {tensor.layout} tensor")
    storage = tensor.untyped_storage()
    needed = tensor.numel() * tensor.element_size()
    if not tensor.is_contiguous() or tensor.storage_offset() != 0:
        raise refuse(f"shape {tuple(tensor.shape)} with strides {tuple(tensor.stride())} at offset "
                     f"{tensor.storage_offset()} (a view or an expanded tensor)")
    if storage.nbytes() != needed:
        raise refuse(f"shape {tuple(tensor.shape)} ({needed:,} bytes) on a storage of {storage.nbytes():,} bytes")
    if tensor.numel() > 1:  # a shared scalar (Lightning's ModelCheckpoint state) costs no more than its reference
        pointer = storage.data_ptr()
        if pointer in seen:
            raise refuse(f"a storage shared with {seen[pointer]}")
        seen[pointer] = where


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
