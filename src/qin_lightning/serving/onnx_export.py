"""ONNX export of a trained network (the logic behind `python -m qin_lightning.export`).

The exported model takes (item_seq (B, S) int64, item_id (B,), likes_level (B,), views_level (B,)) and returns
click probabilities (B,) float32. It is self-contained and is the fast inference form of the same function:
the (N, 3E) item table is stored in the graph (no tag pooling / projection per request), attention uses the
pre-multiplied d x d matrices and every QNN layer is one folded D x D matrix (models.inference). The batch
and history axes are dynamic, except for networks with `dynamic_history = False` (the Transformer+DCN winner:
the traced nn.MultiheadAttention fixes the sequence length), whose history axis is the checkpoint's max_len.
Written atomically; an existing file is replaced only with `overwrite`. `weights="int8"`: qin_lightning.serving.int8.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from qin_lightning.errors import QinError
from qin_lightning.files import atomic_write_bytes
from qin_lightning.models.inference import inference_form, set_fast_paths
from qin_lightning.serving.load import load_network
from qin_lightning.serving.runtime import INPUT_NAMES as ONNX_INPUTS

INPUT_NAMES = list(ONNX_INPUTS)
OUTPUT_NAME = "probability"
FORMATS = ("onnx",)
WEIGHTS = ("fp32", "int8")
OPSET = 17
DEFAULT_BLOCK_SIZE = 128  # int8 weights: one scale per 128 inputs of each output column
MAX_EXPORT_HISTORY = 65_536  # history positions a checkpoint may ask the trace for (ours: 8..100)


class ProbabilityModel(nn.Module):
    """Wraps a CTR network (logits) into the serving signature returning probabilities."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, item_seq: Tensor, item_id: Tensor, likes_level: Tensor, views_level: Tensor) -> Tensor:
        return torch.sigmoid(self.net(item_seq, item_id, likes_level, views_level).float())  # (B,)


def example_inputs(seq_len: int, batch: int = 2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A small valid request (some padding) used to trace."""
    item_seq = torch.zeros(batch, seq_len, dtype=torch.long)
    item_seq[:, -1] = 1
    ones = torch.ones(batch, dtype=torch.long)
    return item_seq, ones, ones, ones


def onnx_bytes(net: nn.Module, seq_len: int = 64, opset: int = OPSET) -> bytes:
    """The ONNX model (bytes) of `net` in its fast eval form; `net` is left in eval mode with fast paths on."""
    net.eval()
    set_fast_paths(net, True)
    model = ProbabilityModel(net).eval()
    inputs = example_inputs(seq_len)
    history_axis = {1: "history"} if getattr(net, "dynamic_history", True) else {}
    buffer = io.BytesIO()
    with torch.no_grad(), inference_form(net):  # the trace records the prepared tensors as constants
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about constants are what we want here
            torch.onnx.export(
                model,
                inputs,
                buffer,
                input_names=INPUT_NAMES,
                output_names=[OUTPUT_NAME],
                dynamic_axes={
                    "item_seq": {0: "batch", **history_axis},
                    "item_id": {0: "batch"},
                    "likes_level": {0: "batch"},
                    "views_level": {0: "batch"},
                    OUTPUT_NAME: {0: "batch"},
                },
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # TorchScript-based exporter: no onnxscript dependency
            )
    return buffer.getvalue()


def check_weights(weights: str, block_size: int) -> None:
    """QinError for an unknown `--weights`, a bad `--block-size` or (int8) a missing onnx package."""
    if weights not in WEIGHTS:
        raise QinError(f"--weights: unknown value {weights!r}, expected one of {list(WEIGHTS)}")
    if weights == "int8":
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise QinError("--weights int8: needs the onnx package (pip install -e '.[serve]')") from None
        from qin_lightning.serving.int8 import check_block_size

        check_block_size(block_size)


def int8_onnx_bytes(fp32_model: bytes, block_size: int = DEFAULT_BLOCK_SIZE) -> bytes:
    """The `--weights int8` form of an fp32 export (qin_lightning.serving.int8)."""
    import onnx

    from qin_lightning.serving.int8 import quantize_weights_int8

    return quantize_weights_int8(onnx.load_from_string(fp32_model), block_size).SerializeToString()


def export_onnx(net: nn.Module, out: str | Path, seq_len: int = 64, overwrite: bool = False,
                weights: str = "fp32", block_size: int = DEFAULT_BLOCK_SIZE) -> Path:
    """Write `net` as ONNX to `out` atomically; QinError if `out` exists and `overwrite` is False."""
    check_weights(weights, block_size)
    out = Path(out)
    if out.exists() and not overwrite:
        raise QinError(f"{out}: file exists; pass --overwrite to replace it")
    model = onnx_bytes(net, seq_len)
    if weights == "int8":
        model = int8_onnx_bytes(model, block_size)
    return atomic_write_bytes(out, model)


def export_history_length(cfg: dict, checkpoint: str | Path) -> int:
    """The history length to trace with: the stored ``data.max_len`` (64 when absent), an integer in
    1..MAX_EXPORT_HISTORY (a hostile checkpoint's 10**9 would allocate the trace's inputs before anything else)."""
    value = (cfg.get("data") or {}).get("max_len") if isinstance(cfg.get("data"), dict) else None
    value = 64 if value is None else value
    if type(value) is not int or not 1 <= value <= MAX_EXPORT_HISTORY:
        raise QinError(f"{checkpoint}: qin_config data.max_len: expected an integer in 1..{MAX_EXPORT_HISTORY:,}, "
                       f"got {value!r}")
    return value


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, fmt: str = "onnx",
                      overwrite: bool = False, weights: str = "fp32",
                      block_size: int = DEFAULT_BLOCK_SIZE, trust_checkpoint: bool = False) -> Path:
    """Load a training checkpoint (qin_lightning.serving.load; strict unless `trust_checkpoint`) and export it;
    returns the written path."""
    if fmt not in FORMATS:
        raise QinError(f"--format: unknown value {fmt!r}, expected one of {list(FORMATS)}")
    check_weights(weights, block_size)
    net, cfg = load_network(checkpoint, trust=trust_checkpoint, trust_hint="--trust-checkpoint")
    for name, tensor in net.state_dict().items():  # load_network refuses them too: an exported NaN is never silent
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise QinError(f"{checkpoint}: net.{name}: holds non-finite values, expected finite weights to export")
    seq_len = export_history_length(cfg, checkpoint)
    suffix = ".onnx" if weights == "fp32" else f".{weights}.onnx"
    target = Path(out) if out is not None else Path(checkpoint).with_suffix(suffix)
    return export_onnx(net, target, seq_len=seq_len, overwrite=overwrite, weights=weights, block_size=block_size)
