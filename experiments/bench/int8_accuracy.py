"""Accuracy of the `--weights int8` export against the checkpoint, on the checkpoints' validation splits.

For each checkpoint: load the network and its validation split once (qin_lightning.serving.scorer), export fp32 and
int8 (qin_lightning.serving.onnx_export) into a temporary folder, then score the split three ways (PyTorch, fp32 ONNX,
int8 ONNX in onnxruntime) with eval's metrics and compare the probabilities row by row. Writes a JSON record
and prints a markdown table.

Run: .venv/bin/python experiments/bench/int8_accuracy.py --out experiments/bench/int8_accuracy.json CKPT [CKPT ...]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from qin_lightning.files import atomic_write_json
from qin_lightning.serving.onnx_export import export_checkpoint
from qin_lightning.serving.runtime import open_session
from qin_lightning.serving.scorer import load_for_inference, split_probabilities
from qin_lightning.training.metrics import split_metrics


def measure(ckpt: Path, tmp: Path, block_size: int) -> dict:
    net, _, dm = load_for_inference(ckpt, None, "validate")
    data = dm.dataset("valid")
    labels, users = data.label.numpy(), data.user_id.numpy()
    models = {
        "fp32": export_checkpoint(ckpt, tmp / "model.onnx", overwrite=True),
        "int8": export_checkpoint(ckpt, tmp / "model.int8.onnx", overwrite=True, weights="int8",
                                  block_size=block_size),
    }
    row: dict = {"checkpoint": str(ckpt), "block_size": block_size}
    probs: dict[str, np.ndarray] = {}
    for name, model in {"eager": None, **models}.items():
        exported = (model, open_session(model, threads=torch.get_num_threads())) if model else (None, None)
        probs[name] = split_probabilities(net, exported, dm, "valid", "cpu")
        row[name] = {k: v for k, v in split_metrics(probs[name], labels, users).items() if k != "gauc_users"}
        row[name]["rows"] = len(data)
        if model is not None:
            diff = np.abs(probs[name] - probs["eager"])
            row[name].update(file_mb=round(model.stat().st_size / 2**20, 1), max_abs_prob_diff=float(diff.max()),
                             mean_abs_prob_diff=float(diff.mean()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ckpt in args.checkpoints:
            rows.append(measure(ckpt, Path(tmp), args.block_size))
            print(json.dumps(rows[-1]), flush=True)
    atomic_write_json(args.out, {"command": "python experiments/bench/int8_accuracy.py " + " ".join(
        ["--block-size", str(args.block_size), "--out", str(args.out), *map(str, args.checkpoints)]), "rows": rows})
    print("| checkpoint | rows | AUC eager | AUC fp32 ONNX | AUC int8 ONNX | int8 - eager | logloss eager / int8 "
          "| mean / max abs prob diff int8 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['checkpoint']} | {r['eager']['rows']:,} | {r['eager']['auc']:.6f} | {r['fp32']['auc']:.6f} | "
              f"{r['int8']['auc']:.6f} | {r['int8']['auc'] - r['eager']['auc']:+.6f} | "
              f"{r['eager']['logloss']:.5f} / {r['int8']['logloss']:.5f} | "
              f"{r['int8']['mean_abs_prob_diff']:.1e} / {r['int8']['max_abs_prob_diff']:.1e} |")


if __name__ == "__main__":
    main()
