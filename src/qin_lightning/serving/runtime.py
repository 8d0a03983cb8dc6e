"""Run an exported model (qin_lightning.export) in onnxruntime: one session factory with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from qin_lightning.errors import QinError

INPUT_NAMES = ("item_seq", "item_id", "likes_level", "views_level")


def open_session(model: str | Path | bytes, threads: int = 1, name: str = "onnx") -> Any:
    """An onnxruntime CPU session for an exported model (a file or its bytes), `threads` intra-op threads,
    sequential execution. QinError (naming `name`, the config key or option) when onnxruntime is missing, the
    file does not exist or is not a model with our inputs."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise QinError(f"{name}: onnxruntime is not installed (pip install -e '.[serve]')") from None
    if not isinstance(model, bytes):
        path = Path(model)
        if not path.is_file():
            raise QinError(f"{name}={path}: no such file (write one with python -m qin_lightning.export CKPT)")
    where = f"{name}={model}" if not isinstance(model, bytes) else name
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only
    try:
        session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                       providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own untyped errors for unreadable / unsupported models
        raise QinError(f"{where}: onnxruntime cannot load it ({str(err).splitlines()[0][:200]})") from None
    inputs = tuple(i.name for i in session.get_inputs())
    if inputs != INPUT_NAMES:
        raise QinError(f"{where}: model inputs are {list(inputs)}, expected {list(INPUT_NAMES)} "
                       "(a model written by python -m qin_lightning.export)")
    return session


def feed(item_seq: Tensor, item_id: Tensor, likes_level: Tensor, views_level: Tensor) -> dict[str, np.ndarray]:
    """The session's input dict from the four int64 tensors of a batch."""
    return {name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, (item_seq, item_id, likes_level, views_level))}
