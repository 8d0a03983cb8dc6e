"""Measure what the tiny test runs reach, so the tests' floors and tolerances rest on a recorded number.

    PYTHONPATH=src python tests/measure_margins.py --out tests/measured_margins.json

Runs the same configurations as the tests (seeded: the values are deterministic on one platform) and records:
- test_train.py::test_train_writes_results_and_learns: per-epoch validation AUC / logloss, the oracle AUC of the
  planted signal and the logloss of the constant predictor (the validation positive rate);
- test_onnx_int8.py: AUC / logloss of the eager, fp32 ONNX and int8 ONNX scores of the best checkpoint of that
  same learning run, and the largest probability difference of int8 single requests (batch 1) from PyTorch;
  the same for a deliberately coarser export (4-bit precision: q in -7..7, same file format), the regression the
  tolerances must catch;
- test_new_networks_pipeline.py: the same int8 / 4-bit comparison (AUC, logloss, largest |dp| over the predicted
  test rows) on the best checkpoint of each experiment's reference run (the winner, QNN-alpha);
- test_transformer_dcn.py::test_onnx_history_axis_is_fixed_and_int8_export_runs: the largest |dp| of its small
  winner exported with int8 and with 4-bit precision.
Not a test (pytest collects test_*.py only); rerun it when a model default or the tiny configs change.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import compose_train, tiny_overrides  # noqa: E402
from test_onnx_int8 import single_request_diff  # noqa: E402
from test_train import LEARNABLE, _positive_rate  # noqa: E402

from qin_lightning.files import atomic_write_json  # noqa: E402
from qin_lightning.train import train  # noqa: E402

torch.set_num_threads(1)


def constant_logloss(rate: float) -> float:
    """Logloss of predicting the positive rate for every row (the floor any learning must beat)."""
    return -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))


def learns(tmp: Path) -> dict:
    results = train(compose_train(tiny_overrides(tmp) + LEARNABLE, tmp / "run"))
    data_dir = Path(results["data_dir"])
    rate = _positive_rate(data_dir)
    synthetic = json.loads((data_dir / "synthetic.json").read_text())
    return {"val_history": results["val_history"], "best_val_auc": results["best_val_auc"],
            "best_val_logloss": results["best_val_logloss"], "oracle_auc": synthetic["oracle_auc"],
            "valid_positive_rate": rate, "constant_logloss": constant_logloss(rate)}


@contextlib.contextmanager
def four_bit_precision():
    """Exports made inside quantize to q in -7..7 (scales x 127/7) in the same int8 format: a coarser export."""
    from qin_lightning.serving import int8 as onnx_int8

    original = onnx_int8.quantize_blockwise

    def coarse(weight: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
        packed, scales = original(weight, block_size)
        q = np.rint((packed.astype(np.float32) - onnx_int8.ZERO_POINT) * 7 / 127)
        return (q + onnx_int8.ZERO_POINT).astype(np.uint8), (scales * 127 / 7).astype(np.float32)

    onnx_int8.quantize_blockwise = coarse
    try:
        yield
    finally:
        onnx_int8.quantize_blockwise = original


def int8(tmp: Path) -> dict:
    from omegaconf import OmegaConf

    from qin_lightning.eval import evaluate
    from qin_lightning.serving.onnx_export import export_checkpoint

    results = train(compose_train(tiny_overrides(tmp) + LEARNABLE, tmp / "run"))
    ckpt = Path(results["best_checkpoint"])
    record: dict = {}
    for variant, precision in (("int8", contextlib.nullcontext), ("int8_4bit_precision", four_bit_precision)):
        with precision():
            models = {"eager": None, "fp32": export_checkpoint(ckpt, tmp / "m.onnx", overwrite=True),
                      variant: export_checkpoint(ckpt, tmp / "m.int8.onnx", weights="int8", block_size=32,
                                                 overwrite=True)}
            default_block = export_checkpoint(ckpt, tmp / "d.int8.onnx", weights="int8", overwrite=True)
        scores = {}
        for name, model in models.items():
            cfg = {"ckpt_path": str(ckpt), "split": "valid", "output": str(tmp / f"{name}.json"),
                   "data": {"root": None, "eval_batch_size": None}, "device": "cpu", "threads": 1, "traceback": False,
                   "onnx": str(model) if model else None}
            r = evaluate(OmegaConf.create(cfg))
            scores[name] = {"auc": r["auc"], "logloss": r["logloss"]}
        record.update(scores)
        record[variant].update(minus_eager_auc=scores[variant]["auc"] - scores["eager"]["auc"],
                               minus_eager_logloss=scores[variant]["logloss"] - scores["eager"]["logloss"],
                               single_request_max_abs_prob_diff=single_request_diff(ckpt, default_block))
    return record


def new_networks_int8(tmp: Path) -> dict:
    from test_new_networks_pipeline import EXPERIMENTS, INT8_BLOCK_SIZE, _cfg, _eval_cfg, int8_errors, predicted

    from qin_lightning.eval import evaluate
    from qin_lightning.serving.onnx_export import export_checkpoint

    record: dict = {}
    for experiment in EXPERIMENTS:
        ckpt = train(_cfg(tmp, experiment, f"{experiment}_reference"))["best_checkpoint"]
        metrics = evaluate(_eval_cfg(ckpt))
        eager_probs = predicted(ckpt, None, tmp / f"{experiment}_eager.csv")
        record[experiment] = {"eager": {"auc": metrics["auc"], "logloss": metrics["logloss"]}}
        for variant, precision in (("int8", contextlib.nullcontext), ("int8_4bit_precision", four_bit_precision)):
            with precision():
                model = export_checkpoint(ckpt, tmp / f"{experiment}.{variant}.onnx", weights="int8",
                                          block_size=INT8_BLOCK_SIZE, overwrite=True)
            auc, logloss, prob = int8_errors(ckpt, model, metrics, eager_probs, tmp)
            record[experiment][variant] = {"minus_eager_auc": auc, "minus_eager_logloss": logloss,
                                           "max_abs_prob_diff": prob}
    return record


def winner_unit_int8() -> dict:
    from test_transformer_dcn import int8_unit_diff

    record = {"int8": {"max_abs_prob_diff": int8_unit_diff()}}
    with four_bit_precision():
        record["int8_4bit_precision"] = {"max_abs_prob_diff": int8_unit_diff()}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    record: dict = {"command": f"PYTHONPATH=src python tests/measure_margins.py --out {args.out}",
                    "torch": torch.__version__,
                    # ATen's kernels differ by ISA (here AVX512 vs AVX2 changed the trained QIN from epoch 0); set
                    # ATEN_CPU_CAPABILITY=avx2 to measure as an AVX2 machine does
                    "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    with tempfile.TemporaryDirectory() as tmp:
        record["test_train_learns"] = learns(Path(tmp) / "learns")
        print(json.dumps(record["test_train_learns"]), flush=True)
        record["onnx_int8"] = int8(Path(tmp) / "int8")
        print(json.dumps(record["onnx_int8"]), flush=True)
        record["new_networks_int8"] = new_networks_int8(Path(tmp) / "new_networks")
        print(json.dumps(record["new_networks_int8"]), flush=True)
    record["winner_unit_int8"] = winner_unit_int8()
    print(json.dumps(record["winner_unit_int8"]), flush=True)
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
