"""Export a trained network for serving: `python -m qin_lightning.export CKPT [--out model.onnx] [--weights int8]`.

The command only parses its arguments; what is exported and how (exact fp32, or `--weights int8`) is
described in `qin_lightning.serving.onnx_export`. Check an int8 export's accuracy with
`python -m qin_lightning.eval ckpt_path=CKPT onnx=model.int8.onnx`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qin_lightning.errors import run_reporting_errors
from qin_lightning.serving.onnx_export import (
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
