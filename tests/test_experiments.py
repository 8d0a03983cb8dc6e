"""Every paper experiment composes, swaps the intended part, and survives a fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_train, tiny_model_overrides, tiny_overrides

from qin_lightning.train import build_datamodule, build_module, train

EXPERIMENTS = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml"))


def test_all_paper_experiments_exist() -> None:
    assert set(EXPERIMENTS) >= {"qin", "din", "ablation_no_qnn", "ablation_no_asta", "ablation_softmax",
                                "ablation_relu", "ablation_dropout", "attention_silu", "attention_relu2"}
    for name in EXPERIMENTS:
        text = Path(CONFIG_DIR, "experiment", f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert "paper" in text.lower(), f"{name}: say which paper row it reproduces"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_fast_dev_run(tmp_path: Path, experiment: str) -> None:
    cfg = compose_train([f"+experiment={experiment}", *tiny_overrides(tmp_path), *tiny_model_overrides(experiment),
                         "trainer.fast_dev_run=true"], tmp_path / "run")
    results = train(cfg)
    assert results["experiment"] == experiment
    assert (tmp_path / "run" / "results.json").exists()


def _net(tmp_path: Path, experiment: str) -> torch.nn.Module:
    cfg = compose_train([f"+experiment={experiment}", *tiny_overrides(tmp_path), *tiny_model_overrides(experiment)],
                        tmp_path / "run")
    return build_module(cfg, build_datamodule(cfg)).net


def test_swaps_actually_happen(tmp_path: Path) -> None:
    from qin_lightning.models.attention import MeanPooling, TargetAttention
    from qin_lightning.models.din import DIN
    from qin_lightning.models.interaction import MLP, QuadraticNetwork

    qin = _net(tmp_path, "qin")
    assert isinstance(qin.attention, TargetAttention) and qin.attention.activation == "relu"
    assert isinstance(qin.interaction, QuadraticNetwork)
    assert isinstance(qin.interaction.layers[0].activation, torch.nn.PReLU)

    assert _net(tmp_path, "ablation_softmax").attention.activation == "softmax"
    assert _net(tmp_path, "attention_silu").attention.activation == "silu"
    assert _net(tmp_path, "attention_relu2").attention.activation == "relu2"
    assert _net(tmp_path, "ablation_dropout").attention.dropout.p == 0.1
    assert isinstance(_net(tmp_path, "ablation_no_asta").attention, MeanPooling)
    relu_qnn = _net(tmp_path, "ablation_relu").interaction
    assert isinstance(relu_qnn.layers[0].activation, torch.nn.ReLU)

    mlp = _net(tmp_path, "ablation_no_qnn").interaction
    assert isinstance(mlp, MLP)
    widths = [m.out_features for m in mlp.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [1024, 512, 256] and mlp.out_dim == 256

    din = _net(tmp_path, "din")
    assert isinstance(din, DIN)
    assert sum(p.numel() for p in din.parameters()) != sum(p.numel() for p in qin.parameters())


def test_din_protocol_defaults(tmp_path: Path) -> None:
    cfg = compose_train(["+experiment=din", f"paths.cache_dir={tmp_path}/cache"], tmp_path / "run")
    assert cfg.model.lr == 1e-3 and cfg.model.net_l2 == 1e-2 and cfg.model.embedding_l2 == 1e-7
    assert cfg.model.net.embedding_dim == 64 and cfg.data.batch_size == 4096


def test_unknown_experiment_is_a_clear_error(tmp_path: Path) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="experiment/no_such_thing"):
        compose_train(["+experiment=no_such_thing", *tiny_overrides(tmp_path)], tmp_path / "run")
