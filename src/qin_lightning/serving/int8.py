"""Weight-only int8 quantization of an exported ONNX graph, for single-request serving on CPU.

At batch 1 the exported QIN is a chain of matrix-vector products whose cost is reading the weights: the four
folded QNN layers alone are 4 x 1024 x 1024 fp32 = 16 MiB per request. Storing every constant weight matrix as
int8 (symmetric, one fp32 scale per `block_size` inputs of each output column) cuts that to a quarter. Each
such `MatMul` / `Gemm` becomes ONNX Runtime's `com.microsoft.MatMulNBits` (bits=8, accuracy_level=4: the
activations are quantized to int8 per block too and the dot products run in int8), plus an `Add` for a Gemm's
bias. Everything else (item table, embeddings, elementwise ops) stays fp32.

This is an approximation (`--weights int8` of `qin_lightning.export`), not the exact model: the bench reports
its probability difference and AUC beside the exact fp32 export. The result runs on onnxruntime only
(contrib op); the fp32 export stays the default and the portable format.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qin_lightning.errors import QinError

CONTRIB_DOMAIN = "com.microsoft"
BITS = 8
ZERO_POINT = 2 ** (BITS - 1)  # MatMulNBits' default zero point when none is given: stored = q + 128
ACCURACY_LEVEL = 4  # int8 activations and int8 dot products (the fast CPU kernel)


def quantize_blockwise(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) fp32 -> (packed (N, K/bs, bs) uint8, scales (N * K/bs,) fp32), symmetric per (column, K block).

    K is zero-padded up to a multiple of `block_size`. Dequantized: W[k, n] ~ (packed[n, k // bs, k % bs] - 128)
    * scales[n * K/bs + k // bs].
    """
    k, n = weight.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), dtype=np.float32)
    padded[:k] = weight
    per_block = padded.T.reshape(n, blocks, block_size)  # (N, K/bs, bs)
    scales = np.abs(per_block).max(axis=2) / 127.0  # (N, K/bs)
    safe = np.where(scales > 0, scales, 1.0)
    q = np.clip(np.rint(per_block / safe[:, :, None]), -127, 127)
    packed = (q + ZERO_POINT).astype(np.uint8)
    return packed, scales.astype(np.float32).reshape(-1)


def dequantize_blockwise(packed: np.ndarray, scales: np.ndarray, k: int) -> np.ndarray:
    """Inverse of `quantize_blockwise`: the (K, N) fp32 matrix the int8 weights stand for."""
    n, blocks, block_size = packed.shape
    w = (packed.astype(np.float32) - ZERO_POINT) * scales.reshape(n, blocks, 1)
    return w.reshape(n, blocks * block_size).T[:k]


def _weight_candidates(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Values of the constants (initializers, single-tensor Constant nodes) that are a MatMul / Gemm's right
    operand, by name; other constants (the item table) are not decoded."""
    wanted = {node.input[1] for node in model.graph.node if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1}
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer if init.name in wanted}
    for node in model.graph.node:
        if (node.op_type == "Constant" and node.output[0] in wanted and len(node.attribute) == 1
                and node.attribute[0].name == "value"):
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _gemm_is_plain(node: onnx.NodeProto) -> tuple[bool, bool]:
    """(plain, transB): plain when alpha = beta = 1 and A is not transposed."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
    return plain, bool(attrs.get("transB", 0))


def check_block_size(block_size: int) -> None:
    """QinError unless `block_size` is a power of two >= 16 (what MatMulNBits accepts)."""
    if block_size < 16 or block_size & (block_size - 1):
        raise QinError(f"int8 block size (--block-size): expected a power of two >= 16, got {block_size}")


def quantize_weights_int8(model: onnx.ModelProto, block_size: int = 128, min_elements: int = 4096) -> onnx.ModelProto:
    """A copy of `model` with every MatMul / Gemm whose right operand is a constant 2-D matrix of at least
    `min_elements` entries replaced by MatMulNBits (int8 weights). Raises QinError if nothing qualifies."""
    check_block_size(block_size)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = _weight_candidates(out)
    nodes: list[onnx.NodeProto] = []
    replaced = 0
    for node in out.graph.node:
        weight = values.get(node.input[1]) if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 else None
        plain, trans_b = _gemm_is_plain(node) if node.op_type == "Gemm" else (True, False)
        if weight is None or weight.ndim != 2 or weight.size < min_elements or not plain:
            nodes.append(node)
            continue
        weight = (weight.T if trans_b else weight).astype(np.float32)  # (K, N)
        k, n = weight.shape
        packed, scales = quantize_blockwise(weight, block_size)
        stem = f"{node.name or node.output[0]}_int8"
        out.graph.initializer.extend([
            numpy_helper.from_array(packed, f"{stem}/weight"),
            numpy_helper.from_array(scales, f"{stem}/scales"),
        ])
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        product = f"{stem}/product" if has_bias else node.output[0]
        nodes.append(helper.make_node(
            "MatMulNBits", [node.input[0], f"{stem}/weight", f"{stem}/scales"], [product], name=f"{stem}/MatMulNBits",
            domain=CONTRIB_DOMAIN, K=k, N=n, bits=BITS, block_size=block_size, accuracy_level=ACCURACY_LEVEL,
        ))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{stem}/bias"))
        replaced += 1
    if not replaced:
        raise QinError("int8 export: the graph has no constant weight matrix to quantize")
    used = {name for node in nodes for name in node.input} | {o.name for o in out.graph.output}
    kept = [node for node in nodes if node.op_type != "Constant" or node.output[0] in used]  # drop fp32 copies
    del out.graph.node[:]
    out.graph.node.extend(kept)
    unused = [init for init in out.graph.initializer if init.name not in used]
    for init in unused:
        out.graph.initializer.remove(init)
    if not any(op.domain == CONTRIB_DOMAIN for op in out.opset_import):
        out.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return out
