"""The benchmark entry point on a tiny dataset: JSON keys, plain/fast parity, data-only mode (no timings)."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from probes import path_taken
from torch import nn

from qin_lightning.bench import BenchArgs, configurations, eager, main, parse_args, percentile, run, run_all, table
from qin_lightning.data.datamodule import Batch
from qin_lightning.errors import ConfigError
from qin_lightning.models.inference import fast_path_state

from conftest import tiny_model_overrides

REQUIRED = [
    "train_samples_per_s", "infer_samples_per_s", "plain_train_samples_per_s", "plain_infer_samples_per_s",
    "latency_p50_ms", "latency_p99_ms", "plain_latency_p50_ms", "plain_latency_p99_ms", "peak_rss_mb",
    "device", "threads", "torch_version", "config", "command", "auc_plain", "auc_fast", "max_abs_prob_diff",
    "train_speedup", "infer_speedup", "data", "model", "machine",
]


def tiny_args(tmp: Path, model: str = "qin", **changes) -> BenchArgs:
    args = BenchArgs(model=model, data_scale="tiny", train_rows=256, eval_rows=192, batch_size=64, rounds=2,
                     train_steps=1, infer_batches=1, requests=30, threads=1, data_root=str(tmp / "data"),
                     overrides=tiny_model_overrides(model if model == "din" else None))
    for key, value in changes.items():
        setattr(args, key, value)
    return args


LITERAL = {"fast_attention": False, "folded_qnn": False, "packed": False, "item_table": False}
FAST = {"fast_attention": True, "folded_qnn": True, "packed": True, "item_table": True}
MEASUREMENTS = ("measure_training", "measure_epoch", "measure_inference", "measure_parity", "measure_latency")


def call_site() -> str:
    """The bench measurement (eager.measure_*) on the call stack: which loop a step or a prediction belongs to."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in MEASUREMENTS and frame.f_globals.get("__name__") == eager.__name__:
            return frame.f_code.co_name
        frame = frame.f_back
    return "elsewhere"


def test_cli_writes_json_with_parity(tmp_path: Path, capsys: pytest.CaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch):
    # what really ran, per loop (call site): the switches of every training step, the path of every eager
    # prediction (probes); a loop whose "plain" side silently ran the fast paths would show more fast calls
    step_switches: dict[str, Counter[tuple[bool, ...]]] = defaultdict(Counter)
    predicted_paths: dict[str, list[dict[str, bool | None]]] = defaultdict(list)
    step, predict = eager.TrainingSteps.step, eager.predict

    def recorded_step(self: eager.TrainingSteps, batch: Batch) -> None:
        step_switches[call_site()][tuple(fast_path_state(self.module.net).values())] += 1
        step(self, batch)

    def recorded_predict(net: nn.Module, batch: Batch, precision: str, device: torch.device) -> torch.Tensor:
        with path_taken(net) as taken:
            probs = predict(net, batch, precision, device)
        predicted_paths[call_site()].append(taken)
        return probs

    monkeypatch.setattr(eager.TrainingSteps, "step", recorded_step)
    monkeypatch.setattr(eager, "predict", recorded_predict)
    out = tmp_path / "bench" / "bench.json"
    argv = ["--data-scale", "tiny", "--train-rows", "256", "--eval-rows", "192", "--batch-size", "64",
            "--rounds", "2", "--train-steps", "1", "--infer-batches", "1", "--requests", "30", "--threads", "1",
            "--onnx-requests", "40", "--data-root", str(tmp_path / "data"), "--out", str(out)]
    argv += [x for o in tiny_model_overrides() for x in ("--override", o)]
    assert main(argv) == 0
    assert "train samples/s" in capsys.readouterr().out
    record = json.loads(out.read_text())
    for key in REQUIRED:
        assert key in record, key
    assert record["command"].startswith("python -m qin_lightning.bench") and "--batch-size 64" in record["command"]
    assert record["config"]["batch_size"] == 64 and record["data"]["num_items"] == 60
    assert len(record["train_rounds_samples_per_s"]["plain"]) == 2
    assert record["max_abs_prob_diff"] < 1e-5 and record["auc_abs_diff"] < 1e-6
    assert record["model"]["fast_paths"]["attention.fast"] is True
    # in every loop (warm-up included), "plain" trained and predicted with every switch off as often as "fast"
    # with every one on, and nothing in between; --epoch is off, so only measure_training steps:
    # warm-up 1 + rounds 2 x train-steps 1 each
    assert dict(step_switches) == {"measure_training": {(False,) * 4: 3, (True,) * 4: 3}}, dict(step_switches)
    assert set(predicted_paths) == {"measure_inference", "measure_parity", "measure_latency"}, set(predicted_paths)
    for site, paths in predicted_paths.items():
        assert all(path in (LITERAL, FAST) for path in paths), (site, paths)
        literal, fast = paths.count(LITERAL), paths.count(FAST)
        assert literal == fast > 0, (site, literal, fast)
    # the serve extra (installed by `make test`) present: the ONNX keys must be there, not skipped
    if importlib.util.find_spec("onnxruntime") is None:
        assert "onnxruntime not installed" in record["onnx_skipped"]
        return
    assert "onnx_skipped" not in record
    assert record["onnx_latency_p99_ms"] > 0 and record["onnx_max_abs_prob_diff"] < 1e-5
    assert record["onnx_auc"] == pytest.approx(record["auc_fast"], abs=1e-6)
    assert record["onnx_int8_latency_p99_ms"] > 0 and record["onnx_int8_mean_abs_prob_diff"] < 1e-2
    assert "ONNX int8 latency" in table(record)
    assert not list(out.parent.glob(".*.tmp"))


def test_din_and_data_only(tmp_path: Path):
    record = run(tiny_args(tmp_path, "din", onnx=False))
    assert record["max_abs_prob_diff"] < 1e-5 and record["infer_samples_per_s"] > 0
    data = run(tiny_args(tmp_path, data_only=True))
    assert "train_samples_per_s" not in data
    assert data["data"]["rows"]["train"] == 256 and data["data"]["total_bytes"] > 0
    assert data["data"]["generated_now"] is False  # reused from the first run (same fingerprint)


def test_errors_and_helpers(tmp_path: Path):
    with pytest.raises(ConfigError, match="--model"):
        run(tiny_args(tmp_path, "dcn"))
    args, out = parse_args(["--model", "din", "--threads", "3", "--compile", "--precision", "bf16"])
    assert (args.model, args.threads, args.compile, args.precision, out) == ("din", 3, True, "bf16", None)
    for bad in ("16", "32,32", "bf16,fp8", ""):
        with pytest.raises(ConfigError, match="--precision"):
            run(tiny_args(tmp_path, precision=bad))
    with pytest.raises(ConfigError, match=r"\+experiment=no_such_experiment"):
        run(tiny_args(tmp_path, experiment="no_such_experiment", onnx=False))
    assert [(c.name, c.precision, c.prefix) for c in configurations(("32", "bf16"))] == [
        ("plain", "32", "plain_"), ("fast", "32", ""), ("bf16", "bf16", "bf16_")]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5 and percentile([5.0], 99) == 5.0


def test_precisions_side_by_side_for_several_experiments(tmp_path: Path, capsys: pytest.CaptureFixture):
    """`--precision 32,bf16 --experiment qin,din`: one JSON, per experiment the fp32 keys plus `bf16_*`."""
    out = tmp_path / "bench.json"
    argv = ["--data-scale", "tiny", "--train-rows", "256", "--eval-rows", "192", "--batch-size", "64",
            "--rounds", "2", "--train-steps", "1", "--infer-batches", "1", "--requests", "10", "--threads", "1",
            "--no-onnx", "--data-root", str(tmp_path / "data"), "--precision", "32,bf16",
            "--experiment", "qin,din", "--override", "model.net.embedding_dim=8", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "experiment qin:" in printed and "experiment din:" in printed and "bf16 fast" in printed
    combined = json.loads(out.read_text())
    assert set(combined["experiments"]) == {"qin", "din"} and "--precision 32,bf16" in combined["command"]
    for name, record in combined["experiments"].items():
        assert record["experiment"] == name and record["model"]["name"] == name
        assert record["precisions"] == ["32", "bf16"]
        for key in REQUIRED + ["bf16_train_samples_per_s", "bf16_infer_samples_per_s", "bf16_auc",
                               "bf16_max_abs_prob_diff", "bf16_train_speedup"]:
            assert key in record, (name, key)
        assert set(record["train_rounds_samples_per_s"]) == {"plain", "fast", "bf16"}
        assert record["max_abs_prob_diff"] < 1e-5 and record["bf16_max_abs_prob_diff"] < 5e-2
    single = run_all(tiny_args(tmp_path, experiment="ablation_no_qnn", onnx=False, precision="bf16"))
    assert single["experiment"] == "ablation_no_qnn" and "bf16_train_samples_per_s" not in single
    assert single["model"]["net"]["interaction"]["_target_"].endswith("MLP")


def test_every_field_is_one_flag_with_help():
    """The command line is built from BenchArgs: each field once, with help; parsing nothing gives the defaults."""
    import dataclasses

    from qin_lightning.bench.args import parser

    fields = {f.name for f in dataclasses.fields(BenchArgs)}
    actions = {a.dest: a for a in parser()._actions if a.dest != "help"}
    assert set(actions) == fields | {"out"}
    assert all(actions[name].help for name in fields)
    args, out = parse_args([])
    assert args == BenchArgs() and out is None
    args, _ = parse_args(["--no-onnx", "--epoch", "--override", "a=1", "--override", "b=2", "--experiment", "din"])
    assert (args.onnx, args.epoch, args.overrides, args.experiment) == (False, True, ["a=1", "b=2"], "din")


def test_the_runtime_never_imports_the_benchmark():
    """The benchmark is its own package: nothing outside src/qin_lightning/bench imports it."""
    src = Path(__file__).resolve().parents[1] / "src" / "qin_lightning"
    importers = [p for p in src.rglob("*.py") if "bench" not in p.relative_to(src).parts
                 and "qin_lightning.bench" in p.read_text()]
    assert importers == []
