"""ONNX export of a training checkpoint: parity with PyTorch in onnxruntime, dynamic batch, clear errors."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.data.synthetic import SyntheticConfig
from qin_lightning.errors import QinError
from qin_lightning.export import main
from qin_lightning.models.inference import set_fast_paths
from qin_lightning.serving.onnx_export import INPUT_NAMES, export_checkpoint
from qin_lightning.serving.load import load_network
from qin_lightning.training.build import build_module

from conftest import compose_train, tiny_model_overrides, tiny_overrides

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by a real Lightning fit (2 steps) of the tiny QIN, with qin_config."""
    tmp = tmp_path_factory.mktemp("export")
    cfg = compose_train(tiny_overrides(tmp) + tiny_model_overrides(), tmp / "run")
    dm = MMCTRDataModule(str(tmp / "data"), max_len=8, batch_size=64, eval_batch_size=128,
                         synthetic=SyntheticConfig.tiny())
    dm.prepare_data()
    dm.setup("fit")
    module = build_module(cfg, dm)
    module.run_config = OmegaConf.to_container(cfg, resolve=True)
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)
    trainer.fit(module, datamodule=dm)
    path = tmp / "tiny.ckpt"
    trainer.save_checkpoint(path)
    return path


def requests(batch: int, seq: int = 8, num_items: int = 60, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    item_seq = torch.randint(1, num_items, (batch, seq), generator=g)
    for i in range(batch):  # left padded, some empty histories
        item_seq[i, : (i * 3) % (seq + 1)] = 0
    levels = torch.randint(0, 11, (2, batch), generator=g)
    return item_seq, torch.randint(1, num_items, (batch,), generator=g), levels[0], levels[1]


def test_load_network_rebuilds_the_trained_net(checkpoint: Path):
    net, cfg = load_network(checkpoint)
    assert not net.training and cfg["model"]["net"]["embedding_dim"] == 8
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for name, value in net.state_dict().items():
        torch.testing.assert_close(value, state[f"net.{name}"], rtol=0, atol=0)


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_matches_pytorch(checkpoint: Path, tmp_path: Path, batch: int):
    out = export_checkpoint(checkpoint, tmp_path / "model.onnx")
    net, _ = load_network(checkpoint)
    set_fast_paths(net, False)  # reference: the literal paper form
    inputs = requests(batch)
    with torch.no_grad():
        expected = torch.sigmoid(net(*inputs)).numpy()
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)})[0]
    assert got.shape == (batch,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_exported_graph_is_the_fast_form(checkpoint: Path, tmp_path: Path):
    import onnx

    model = onnx.load(str(export_checkpoint(checkpoint, tmp_path / "model.onnx")))
    ops = {node.op_type for node in model.graph.node}
    assert "ReduceSum" not in ops  # no per-row QNN sum, no tag pooling: cached table + folded layers
    sizes = [int(np.prod(t.dims)) for t in model.graph.initializer]
    sizes += [int(np.prod(a.t.dims)) for node in model.graph.node for a in node.attribute if a.name == "value"]
    assert 60 * 24 in sizes  # the (N, 3E) item table is inside the graph


def test_refuses_to_overwrite_and_cli(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "m.onnx"
    assert main([str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    first = out.stat().st_mtime_ns
    with pytest.raises(SystemExit) as exc:
        main([str(checkpoint), "--out", str(out)])
    assert exc.value.code == 2 and "--overwrite" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == first
    assert main([str(checkpoint), "--out", str(out), "--overwrite"]) == 0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp file


def test_clear_errors(tmp_path: Path, checkpoint: Path):
    with pytest.raises(QinError, match="checkpoint not found"):
        load_network(tmp_path / "missing.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(QinError, match="not a PyTorch checkpoint"):
        load_network(corrupt)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(QinError, match="corrupt.ckpt|truncated.ckpt"):
        load_network(truncated)
    no_config = tmp_path / "no_config.ckpt"
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    ckpt.pop("qin_config")
    torch.save(ckpt, no_config)
    with pytest.raises(QinError, match="qin_config"):
        export_checkpoint(no_config, tmp_path / "x.onnx")
    with pytest.raises(QinError, match="--format"):
        export_checkpoint(checkpoint, tmp_path / "x.onnx", fmt="tflite")
