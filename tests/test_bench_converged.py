"""The bench's converged-shape options: per-experiment overrides and the converged MovieLens data shapes."""

from __future__ import annotations

import pytest

from qin_lightning.bench import BenchArgs
from qin_lightning.bench.args import overrides_for
from qin_lightning.bench.data import synthetic_config
from qin_lightning.errors import ConfigError


def test_overrides_apply_to_every_experiment_or_to_the_named_one() -> None:
    args = BenchArgs(overrides=["model.net.embedding_dim=32", "transformer_dcn:model.net.cross_rank=64",
                                "paths.data_dir=${oc.env:HOME}"])
    assert overrides_for(args, ["qin", "transformer_dcn"]) == {
        "qin": ["model.net.embedding_dim=32", "paths.data_dir=${oc.env:HOME}"],
        "transformer_dcn": ["model.net.embedding_dim=32", "paths.data_dir=${oc.env:HOME}", "model.net.cross_rank=64"],
    }
    with pytest.raises(ConfigError, match="'din' is not one of the measured experiments"):
        overrides_for(BenchArgs(overrides=["din:model.net.embedding_dim=8"]), ["qin"])


def test_converged_scale_has_the_movielens_shapes() -> None:
    config = synthetic_config(BenchArgs(data_scale="converged", train_rows=4096))
    assert (config.num_items, config.num_tags, config.max_len, config.train_rows) == (9_725, 1_019, 20, 4096)
    keep = 1.0 - 1.0 / (config.mean_history_len + 1.0)  # geometric: P(length >= k) = keep ** k before the cap
    mean_length = sum(keep**k for k in range(1, config.max_len + 1))
    assert mean_length == pytest.approx(18.71, abs=0.15) and keep**config.max_len == pytest.approx(0.878, abs=0.01)


def test_several_experiments_get_their_own_overrides_and_cpu_time_ratios(tmp_path) -> None:
    """A multi-experiment record: each experiment composed with its own overrides, and the step-time ratios to the
    first experiment from wall and from CPU time."""
    from qin_lightning.bench import run_all

    args = BenchArgs(experiment="qin,transformer_dcn", data_scale="tiny", train_rows=256, eval_rows=128, batch_size=64,
                     rounds=1, train_steps=1, infer_batches=1, requests=4, threads=1, onnx=False,
                     data_root=str(tmp_path / "data"),
                     overrides=["model.net.embedding_dim=8", "model.net.mm_projection_dim=8",
                                "transformer_dcn:model.net.cross_rank=4", "transformer_dcn:model.net.first_k_cols=2"])
    record = run_all(args)
    winner = record["experiments"]["transformer_dcn"]
    assert winner["model"]["net"]["cross_rank"] == 4 and record["experiments"]["qin"]["model"]["net"]["embedding_dim"] == 8
    for key in ("train_step_time_vs_first", "train_step_cpu_time_vs_first"):
        assert record[key]["qin"] == 1.0 and record[key]["transformer_dcn"] > 0
    assert winner["train_cpu_s_per_step"] > 0 and winner["plain_train_cpu_s_per_step"] > 0
