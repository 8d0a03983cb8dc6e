"""The configs against two references: the published values (stated here with their public source, independent of
any record the code wrote), and a refactor guard (tests/resolved_configs.json, see tests/resolved_configs.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from resolved_configs import RECORD, choices, resolved

RECORDED = json.loads(RECORD.read_text())

# The published values, read by hand from public sources, never from the code or its record:
#   QIN paper (Li et al., "Quadratic Interest Network for Multimodal Click-Through Rate Prediction"): section 3.1
#     Implementation Details: lr 2e-3, embedding weight decay 2e-4, batch 8192, embedding dimension 128, QNN
#     L = M = 4, dropout 0.1; section 2.1: ASTA is ReLU attention without dropout; section 3.3 / Table 3: the
#     ablations (MLP [1024, 512, 256] for the QNN, mean pooling, SoftMax, ReLU for PReLU, attention dropout 0.1).
#   The authors' code and training logs (github.com/salmon1802/QIN, QIN_variety_v9 on FuxiCTR 2.3.7): history
#     length 64, lr x 0.5 on a plateau (floor 1e-6), early stopping on valid AUC (min_delta 1e-6) with patience 8,
#     gradient-norm clipping 10, up to 100 epochs, seed 20242025; FuxiCTR's loss "binary_crossentropy" is
#     F.binary_cross_entropy on the sigmoid output (fuxictr/pytorch/torch_utils.py, models/rank_model.py), for
#     every model here (QIN, DIN, the winner and QNN-alpha all train on FuxiCTR).
#   The official DIN baseline (github.com/reczoo/WWW2025_MMCTR_Challenge, DIN_default + the MicroLens tuner
#     config): emb 64, attention MLP [512, 256], DNN [1024, 512, 256], lr 1e-3, batch 8192, net dropout 0.1,
#     embedding L2 1e-7 (one of the tuner's two), no net L2, lr x 0.1 on a plateau (FuxiCTR's lr_decay default),
#     patience 3; attention dropout 0.1, BatchNorm in the DNN.
#   The 1st-place Transformer_DCN (github.com/pinskyrobin/WWW2025_MMCTR, tech report arXiv 2505.03543): emb 64,
#     2 encoder layers, 1 head, feed-forward 256, dropout 0.2, first_k_cols 16, 3 full-rank cross layers, MLP
#     [1024, 512, 256] with dropout 0.2, head MLP [64, 32], lr 5e-4, batch 128, no regularisation, patience 5.
#   QNN-alpha (arXiv 2505.17999): the self-ensemble loss; here with QIN's layer count, rows and dropout 0.1.
PROTOCOL = {"model.lr_factor": 0.5, "model.min_lr": 1e-6, "model.min_delta": 1e-6,
            "callbacks.early_stopping.patience": 8, "callbacks.early_stopping.monitor": "val/auc",
            "callbacks.early_stopping.mode": "max", "callbacks.early_stopping.min_delta": 1e-6,
            "trainer.gradient_clip_val": 10.0,
            "trainer.max_epochs": 100, "trainer.check_val_every_n_epoch": 1, "seed": 20242025,
            "model.bce_input": "probability"}
QIN = {**PROTOCOL, "model.lr": 2e-3, "model.embedding_l2": 2e-4, "model.net_l2": 0.0, "model.self_ensemble": False,
       "model.net._target_": "qin_lightning.models.qin.QIN", "model.net.embedding_dim": 128,
       "model.net.mm_projection_dim": 128, "model.net.attention.activation": "relu",
       "model.net.attention.dropout": 0.0, "model.net.interaction.num_layers": 4,
       "model.net.interaction.num_row": 4, "model.net.interaction.dropout": 0.1,
       "model.net.interaction.activation": "prelu", "model.net.interaction.batch_norm": True,
       "data.max_len": 64}
PUBLISHED: dict[str, dict[str, Any]] = {
    "data=mmctr data.root=ROOT": {**QIN, "data.batch_size": 8192},
    "+experiment=qin": QIN,
    "+experiment=ablation_no_qnn": {**QIN, "model.net.interaction._target_": "qin_lightning.models.interaction.MLP",
                                    "model.net.interaction.hidden_units": [1024, 512, 256],
                                    "model.net.interaction.num_layers": None, "model.net.interaction.num_row": None,
                                    "model.net.interaction.activation": "relu"},
    "+experiment=ablation_no_asta": {**QIN, "model.net.attention.activation": None, "model.net.attention.dropout": None,
                                     "model.net.attention._target_": "qin_lightning.models.attention.MeanPooling"},
    "+experiment=ablation_softmax": {**QIN, "model.net.attention.activation": "softmax"},
    "+experiment=ablation_relu": {**QIN, "model.net.interaction.activation": "relu"},
    "+experiment=ablation_dropout": {**QIN, "model.net.attention.dropout": 0.1},
    "+experiment=attention_relu2": {**QIN, "model.net.attention.activation": "relu2"},
    "+experiment=attention_silu": {**QIN, "model.net.attention.activation": "silu"},
    "+experiment=qnn_alpha": {
        **QIN, "model.self_ensemble": True, "model.net.interaction.activation": None,
        "model.net.interaction._target_": "qin_lightning.models.interaction.QuadraticAlphaNetwork"},
    "+experiment=din": {**PROTOCOL, "model.lr": 1e-3, "data.batch_size": 8192, "model.embedding_l2": 1e-7,
                        "model.net_l2": 0.0, "model.lr_factor": 0.1, "callbacks.early_stopping.patience": 3,
                        "model.net._target_": "qin_lightning.models.din.DIN", "model.net.embedding_dim": 64,
                        "model.net.mm_projection_dim": 128, "model.net.attention_units": [512, 256],
                        "model.net.attention_dropout": 0.1, "model.net.batch_norm": True,
                        "model.net.dnn_units": [1024, 512, 256], "model.net.dnn_dropout": 0.1, "data.max_len": 64},
    "+experiment=transformer_dcn": {
        **PROTOCOL, "model.lr": 5e-4, "data.batch_size": 128, "model.embedding_l2": 0.0, "model.net_l2": 0.0,
        "callbacks.early_stopping.patience": 5, "model.lr_factor": 0.1,  # FuxiCTR's lr_decay default
        "model.net._target_": "qin_lightning.models.transformer_dcn.TransformerDCN",
        "model.net.embedding_dim": 64, "model.net.mm_projection_dim": 128, "model.net.transformer_layers": 2,
        "model.net.num_heads": 1, "model.net.feedforward_dim": 256, "model.net.transformer_dropout": 0.2,
        "model.net.first_k_cols": 16, "model.net.cross_layers": 3, "model.net.cross_rank": None,
        "model.net.dnn_units": [1024, 512, 256], "model.net.dnn_dropout": 0.2, "model.net.head_units": [64, 32],
        "data.max_len": 64},
}


def lookup(cfg: dict[str, Any], dotted: str) -> Any:
    """cfg["a"]["b"]["c"] for "a.b.c"; None where a key is absent (a part that has no such setting)."""
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


@pytest.mark.parametrize("overrides", sorted(PUBLISHED))
def test_published_values_are_the_composed_ones(overrides: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each experiment composes to the values its public source states (PUBLISHED), key by key."""
    monkeypatch.delenv("QIN_MOVIELENS_SRC", raising=False)
    cfg = resolved(overrides.split())
    published = PUBLISHED[overrides]
    composed = {key: lookup(cfg, key) for key in published}
    wrong = {key: (value, published[key]) for key, value in composed.items()
             if value != published[key] or isinstance(value, bool) != isinstance(published[key], bool)}  # True == 1
    assert not wrong, f"{overrides}: key -> (composed, published): {wrong}"


@pytest.mark.parametrize("overrides", choices(), ids=lambda o: " ".join(o) or "(defaults)")
def test_refactor_guard_resolves_as_recorded(overrides: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Refactor guard, not a check of correctness: the record is the code's own output. A config that is only
    restructured (a shared group, an interpolation) resolves to exactly the recorded values; a value meant to
    change is rewritten with `python tests/resolved_configs.py --write` (and checked against PUBLISHED above)."""
    monkeypatch.delenv("QIN_MOVIELENS_SRC", raising=False)
    assert resolved(overrides) == RECORDED[" ".join(overrides) or "(defaults)"]


def test_refactor_guard_records_every_composed_choice() -> None:
    assert sorted(" ".join(o) or "(defaults)" for o in choices()) == sorted(RECORDED)
