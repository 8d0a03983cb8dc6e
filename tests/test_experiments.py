"""Every paper experiment composes, swaps the intended part, and survives a fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONFIG_DIR, compose_train, tiny_model_overrides, tiny_overrides

from qin_lightning.train import train
from qin_lightning.training.build import build_datamodule, build_module

EXPERIMENTS = sorted(p.stem for p in Path(CONFIG_DIR, "experiment").glob("*.yaml"))


def test_all_paper_experiments_exist() -> None:
    assert set(EXPERIMENTS) >= {"qin", "din", "ablation_no_qnn", "ablation_no_asta", "ablation_softmax",
                                "ablation_relu", "ablation_dropout", "attention_silu", "attention_relu2",
                                "transformer_dcn", "qnn_alpha"}
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
    from qin_lightning.models.transformer_dcn import TransformerDCN

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
    assert isinstance(_net(tmp_path, "transformer_dcn"), TransformerDCN)
    assert sum(p.numel() for p in din.parameters()) != sum(p.numel() for p in qin.parameters())


def test_din_protocol_defaults(tmp_path: Path) -> None:
    # the challenge's MicroLens tuner on the DIN_default template
    cfg = compose_train(["+experiment=din", f"paths.cache_dir={tmp_path}/cache"], tmp_path / "run")
    assert cfg.model.lr == 1e-3 and cfg.model.net_l2 == 0.0 and cfg.model.embedding_l2 == 1e-7
    assert cfg.model.lr_factor == 0.1 and cfg.callbacks.early_stopping.patience == 3
    assert cfg.model.net.embedding_dim == 64 and cfg.model.net.mm_projection_dim == 128
    assert list(cfg.model.net.dnn_units) == [1024, 512, 256] and cfg.model.net.dnn_dropout == 0.1
    assert cfg.data.batch_size == 8192


def test_transformer_dcn_protocol_defaults(tmp_path: Path) -> None:
    # the winner's config: lr 5e-4, batch 128, no regularisation, clipping 10, patience 5; the faithful network
    cfg = compose_train(["+experiment=transformer_dcn", f"paths.cache_dir={tmp_path}/cache"], tmp_path / "run")
    assert cfg.model.lr == 5e-4 and cfg.model.embedding_l2 == 0.0 and cfg.model.net_l2 == 0.0
    assert cfg.data.batch_size == 128 and cfg.callbacks.early_stopping.patience == 5
    assert cfg.trainer.gradient_clip_val == 10.0 and not cfg.model.self_ensemble
    net = cfg.model.net
    assert (net.embedding_dim, net.mm_projection_dim, net.transformer_layers, net.num_heads) == (64, 128, 2, 1)
    assert (net.feedforward_dim, net.transformer_dropout, net.first_k_cols, net.cross_layers) == (256, 0.2, 16, 3)
    assert net.cross_rank is None and list(net.dnn_units) == [1024, 512, 256] and net.dnn_dropout == 0.2
    assert list(net.head_units) == [64, 32]


def test_qnn_alpha_experiment(tmp_path: Path) -> None:
    from qin_lightning.models.interaction import QuadraticAlphaNetwork
    from qin_lightning.models.qin import QIN

    cfg = compose_train(["+experiment=qnn_alpha", f"paths.cache_dir={tmp_path}/cache"], tmp_path / "run")
    assert cfg.model.self_ensemble and cfg.model.lr == 2e-3 and cfg.model.embedding_l2 == 2e-4
    alpha = cfg.model.net.interaction
    assert (alpha.num_layers, alpha.num_row, alpha.num_heads, alpha.dropout) == (4, 4, 1, 0.1)
    assert alpha.batch_norm and not alpha.align_heads and alpha.field_dim == 128
    net = _net(tmp_path, "qnn_alpha")
    assert isinstance(net, QIN) and isinstance(net.interaction, QuadraticAlphaNetwork)
    # the self-ensemble loss is off everywhere else (faithful defaults)
    for name in EXPERIMENTS:
        if name != "qnn_alpha":
            other = compose_train([f"+experiment={name}", f"paths.cache_dir={tmp_path}/cache"], tmp_path / "run")
            assert not other.model.self_ensemble, name


def test_unknown_experiment_is_a_clear_error(tmp_path: Path) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="experiment/no_such_thing"):
        compose_train(["+experiment=no_such_thing", *tiny_overrides(tmp_path)], tmp_path / "run")
