"""`--weights int8` export: blockwise int8 packing, MatMulNBits numerics, the exported model's closeness to
PyTorch, the CLI, and eval of an exported model (`onnx=`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_train, tiny_overrides
from omegaconf import OmegaConf
from test_train import LEARNABLE

from qin_lightning.errors import QinError
from qin_lightning.eval import evaluate
from qin_lightning.export import main
from qin_lightning.serving.onnx_export import export_checkpoint
from qin_lightning.serving.int8 import dequantize_blockwise, quantize_blockwise, quantize_weights_int8
from qin_lightning.serving.runtime import feed, open_session
from qin_lightning.train import train

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


# tests/measured_margins.json (tests/measure_margins.py, AVX512) for the run below: int8 - eager AUC -3.9e-4,
# logloss +5.8e-5, largest batch-1 probability difference 1.0e-3; the same export at 4-bit precision (q in -7..7):
# AUC +2.1e-3, logloss -4.3e-5, batch-1 1.5e-2. With AVX2 kernels the run trains other weights (the record of
# 469e8dd): int8 -2.7e-5, +1.1e-5, 1.2e-3; 4-bit -1.1e-3, +4.8e-4, 1.2e-2. Each tolerance sits between the
# int8 and the 4-bit errors on both (AUC 1.7x from each side's nearest, logloss 2.6x / 3.2x, batch-1 4.2x / 2.4x);
# on AVX512 the 4-bit export lowers the logloss, so AUC and batch-1 catch it there. Those runs trained with
# model.bce_input=logit (the default before 2026-12-08); with the default probability form (AVX2, 2026-12-08):
# int8 +2.4e-4, -4.6e-5, 1.4e-3; 4-bit -1.9e-3, +1.1e-3, 7.6e-3 (each tolerance still between).
INT8_AUC_TOLERANCE = 6.5e-4
INT8_LOGLOSS_TOLERANCE = 1.5e-4
INT8_PROB_TOLERANCE = 5e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The learning run of test_train.py: its QNN weights matter (a barely trained tiny QIN's QNN adds ~0, so
    any quantization of it would pass)."""
    tmp = tmp_path_factory.mktemp("int8")
    results = train(compose_train(tiny_overrides(tmp) + LEARNABLE, tmp / "run"))
    return tmp, results


@pytest.mark.parametrize("k,block", [(100, 32), (64, 128), (256, 64)])
def test_blockwise_roundtrip_is_within_half_a_step(k: int, block: int):
    rng = np.random.default_rng(k)
    weight = rng.standard_normal((k, 7)).astype(np.float32)
    weight[:, 3] = 0.0  # an all-zero column: scale 0, dequantizes to exact zeros
    packed, scales = quantize_blockwise(weight, block)
    blocks = -(-k // block)
    assert packed.shape == (7, blocks, block) and packed.dtype == np.uint8 and scales.shape == (7 * blocks,)
    assert packed.min() >= 1 and packed.max() <= 255  # symmetric: q in [-127, 127] stored as q + 128
    restored = dequantize_blockwise(packed, scales, k)
    assert restored.shape == weight.shape and not restored[:, 3].any()
    step = np.repeat(scales.reshape(7, blocks), block, axis=1)[:, :k].T  # (K, N) scale of each entry
    assert np.all(np.abs(restored - weight) <= step / 2 + 1e-7)
    assert np.abs(restored).max() == pytest.approx(np.abs(weight).max(), rel=1e-6)  # the max maps to +-127


def _single_op_model(op: str, weight: np.ndarray, bias: np.ndarray | None, trans_b: bool) -> onnx.ModelProto:
    k = weight.shape[1] if trans_b else weight.shape[0]
    n = weight.shape[0] if trans_b else weight.shape[1]
    inputs = ["x", "w"] + (["b"] if bias is not None else [])
    attrs = {"transB": 1} if op == "Gemm" and trans_b else {}
    nodes = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(weight))]
    if bias is not None:
        nodes.append(helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(bias)))
    nodes.append(helper.make_node(op, inputs, ["y"], name="op", **attrs))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("op,trans_b,with_bias", [("MatMul", False, False), ("Gemm", False, True),
                                                  ("Gemm", True, True)])
def test_matmulnbits_computes_x_times_the_dequantized_weights(op: str, trans_b: bool, with_bias: bool):
    rng = np.random.default_rng(1)
    k, n = 192, 80
    weight = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32) if with_bias else None
    model = quantize_weights_int8(_single_op_model(op, weight, bias, trans_b), block_size=64)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 1 and op not in ops
    assert not any(node.op_type == "Constant" and node.output[0] == "w" for node in model.graph.node)  # fp32 dropped
    x = rng.standard_normal((5, k)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    w = dequantize_blockwise(inits["op_int8/weight"], inits["op_int8/scales"], k)
    expected = x @ w + (bias if bias is not None else 0.0)
    exact = x @ (weight.T if trans_b else weight) + (bias if bias is not None else 0.0)
    # accuracy_level 4 also rounds x to int8 per block: well under 1% of the output scale
    scale = np.abs(exact).max()
    assert np.abs(got - expected).max() < 1e-2 * scale and np.abs(got - exact).max() < 2e-2 * scale


def test_nothing_to_quantize_is_a_clear_error():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    with pytest.raises(QinError, match="no constant weight matrix"):
        quantize_weights_int8(helper.make_model(graph))
    with pytest.raises(QinError, match="power of two"):
        quantize_weights_int8(helper.make_model(graph), block_size=48)


def test_int8_export_is_close_to_pytorch_and_eval_scores_it(trained: tuple[Path, dict], tmp_path: Path):
    tmp, results = trained
    ckpt = Path(results["best_checkpoint"])
    exact = export_checkpoint(ckpt, tmp_path / "m.onnx")
    int8 = export_checkpoint(ckpt, tmp_path / "m.int8.onnx", weights="int8", block_size=32)
    model = onnx.load(str(int8))
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("MatMulNBits") == 4 and "Gemm" in ops  # the 4 QNN layers; the (1, D) head stays fp32
    assert int8.stat().st_size < exact.stat().st_size

    def scores(path: Path) -> dict:
        cfg = {"ckpt_path": str(ckpt), "split": "valid", "output": str(tmp_path / f"{path.name}.json"),
               "data": {"root": None, "eval_batch_size": None}, "device": "cpu", "threads": 1, "traceback": False,
               "onnx": str(path) if path != ckpt else None}
        return evaluate(OmegaConf.create(cfg))

    eager, fp32, q8 = scores(ckpt), scores(exact), scores(int8)
    assert fp32["auc"] == pytest.approx(eager["auc"], abs=1e-6) and fp32["onnx"] == str(exact)
    assert q8["auc"] == pytest.approx(eager["auc"], abs=INT8_AUC_TOLERANCE)
    assert q8["logloss"] == pytest.approx(eager["logloss"], abs=INT8_LOGLOSS_TOLERANCE)
    assert q8["logloss"] != eager["logloss"], "the int8 model must really be the one scored"
    with pytest.raises(QinError, match="onnx=.*no such file"):
        scores(tmp_path / "missing.onnx")
    with pytest.raises(QinError, match="onnxruntime cannot load it"):
        scores(_not_onnx(tmp_path))
    with pytest.raises(QinError, match=r"onnx=.*onnxruntime failed on rows 0-.*exported from this checkpoint"):
        scores(_other_model(tmp_path))  # a model of 10 items scoring data with 60


def _other_model(tmp_path: Path) -> Path:
    from qin_lightning.serving.onnx_export import export_onnx
    from qin_lightning.models.qin import QIN

    tags, vectors = torch.randint(1, 7, (10, 5)), torch.randn(10, 16)
    return export_onnx(QIN(tags, vectors, 7, embedding_dim=8), tmp_path / "other.onnx", seq_len=8)


def _not_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a model")
    return path


def single_request_diff(ckpt: Path, int8_model: Path) -> float:
    """Largest |p_int8 - p_torch| over 32 batch-1 requests (left padded, incl. empty histories)."""
    from qin_lightning.serving.load import load_network

    session = open_session(int8_model, threads=1)
    net, _ = load_network(ckpt)
    g = torch.Generator().manual_seed(0)
    item_seq = torch.randint(1, 60, (32, 8), generator=g)
    for i in range(32):
        item_seq[i, : i % 9] = 0  # left padding, incl. empty histories
    item_id, likes, views = torch.randint(1, 60, (32,), generator=g), *torch.randint(0, 11, (2, 32), generator=g)
    with torch.no_grad():
        expected = torch.sigmoid(net(item_seq, item_id, likes, views)).numpy()
    got = np.concatenate([session.run(None, feed(item_seq[i:i + 1], item_id[i:i + 1], likes[i:i + 1],
                                                 views[i:i + 1]))[0] for i in range(32)])
    assert got.shape == (32,)
    return float(np.abs(got - expected).max())


def test_int8_single_requests_track_pytorch(trained: tuple[Path, dict], tmp_path: Path):
    ckpt = Path(trained[1]["best_checkpoint"])
    int8 = export_checkpoint(ckpt, tmp_path / "m.int8.onnx", weights="int8")
    assert single_request_diff(ckpt, int8) < INT8_PROB_TOLERANCE


def test_cli_int8_default_name_and_early_errors(trained: tuple[Path, dict], capsys: pytest.CaptureFixture):
    ckpt = Path(trained[1]["best_checkpoint"])
    assert main([str(ckpt), "--weights", "int8"]) == 0
    written = ckpt.with_suffix(".int8.onnx")
    out = capsys.readouterr().out
    assert written.exists() and f"onnx={written}" in out and "python -m qin_lightning.eval" in out
    with pytest.raises(SystemExit) as exc:
        main([str(ckpt), "--weights", "int8", "--block-size", "100", "--out", str(ckpt.with_name("bad.onnx"))])
    assert exc.value.code == 2 and "--block-size" in capsys.readouterr().err
    assert not ckpt.with_name("bad.onnx").exists()


def test_predict_with_the_exported_model(trained: tuple[Path, dict], tmp_path: Path):
    from qin_lightning.predict import predict

    ckpt = Path(trained[1]["best_checkpoint"])
    exact = export_checkpoint(ckpt, tmp_path / "m.onnx")

    def submission(name: str, onnx_model: Path | None) -> np.ndarray:
        cfg = {"ckpt_path": str(ckpt), "output": str(tmp_path / f"{name}.csv"), "zip": False, "overwrite": False,
               "data": {"root": None, "eval_batch_size": None}, "device": "cpu", "threads": 1, "traceback": False,
               "onnx": str(onnx_model) if onnx_model else None}
        result = predict(OmegaConf.create(cfg))
        return np.loadtxt(result["output"], delimiter=",", skiprows=1)

    eager, served = submission("eager", None), submission("served", exact)
    assert served.shape == eager.shape and np.array_equal(served[:, 0], eager[:, 0])
    np.testing.assert_allclose(served[:, 1], eager[:, 1], atol=1e-6)
    with pytest.raises(QinError, match="onnx=.*no such file"):
        submission("missing", tmp_path / "missing.onnx")
    assert not (tmp_path / "missing.csv").exists()
