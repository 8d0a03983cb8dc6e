"""Export a trained network for serving: `python -m qin_lightning.export CKPT [--out model.onnx] [--weights int8]`.

The exported model takes (item_seq (B, S) int64, item_id (B,), likes_level (B,), views_level (B,)) and returns
click probabilities (B,) float32. It is self-contained and is the fast inference form of the same function:
the (N, 3E) item table is stored in the graph (no tag pooling / projection per request), attention uses the
pre-multiplied d x d matrices and every QNN layer is one folded D x D matrix (models.inference). The batch
and history axes are dynamic, except for networks with `dynamic_history = False` (the Transformer+DCN winner:
the traced nn.MultiheadAttention fixes the sequence length), whose history axis is the checkpoint's max_len.
Written atomically; an existing file is replaced only with `--overwrite`.

`--weights fp32` (default) is exact (same function up to rounding) and runs on any ONNX runtime.
`--weights int8` stores the weight matrices as blockwise int8 (qin_lightning.serving.int8): about 4x fewer bytes
read per single request, an approximation of the model, onnxruntime only. Check its accuracy with
`python -m qin_lightning.eval ckpt_path=CKPT onnx=model.int8.onnx`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qin_lightning.cli import run_reporting_errors
from qin_lightning.serving.export import (
    DEFAULT_BLOCK_SIZE, FORMATS, INPUT_NAMES, OUTPUT_NAME, WEIGHTS, export_checkpoint,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qin_lightning.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a .ckpt written by qin_lightning.train")
    parser.add_argument("--format", default="onnx", choices=FORMATS, dest="fmt")
    parser.add_argument("--out", type=Path, default=None, help="output file (default: CHECKPOINT with .onnx)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    parser.add_argument("--weights", default="fp32", choices=WEIGHTS,
                        help="fp32: exact (default); int8: blockwise int8 weight matrices, faster, approximate, "
                             "onnxruntime only (default output CHECKPOINT.int8.onnx)")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                        help="int8: inputs per scale (a power of two >= 16)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="load CHECKPOINT unrestricted (pickle); only for a file you trust completely, a "
                             "malicious one runs code (default: plain tensors and values only)")
    args = parser.parse_args(argv)
    path = run_reporting_errors(lambda: export_checkpoint(args.checkpoint, args.out, args.fmt, args.overwrite,
                                                          args.weights, args.block_size, args.trust_checkpoint))
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; inputs {', '.join(INPUT_NAMES)} -> {OUTPUT_NAME})")
    if args.weights == "int8":
        print(f"int8 weights approximate the checkpoint; measure the difference with: python -m qin_lightning.eval "
              f"ckpt_path={args.checkpoint} onnx={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
