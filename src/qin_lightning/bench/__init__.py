"""Benchmark the plain (paper-literal) and fast (exact) paths side by side: `python -m qin_lightning.bench`
(`qin-bench`, `make bench`). Nothing in the runtime package imports it.

One process, one network, one set of weights: every round measures the plain configuration and then the fast
one (models.inference.set_fast_paths) on the same batches (ABAB...), and the median over rounds is reported.
- training: CTRModule.training_step (BCE + the L2 terms) + backward + gradient-norm clipping (trainer value)
  + the CTRModule optimizer step, samples/s;
- inference: eval mode, `torch.inference_mode`, batches of `--batch-size`, samples/s;
- single-request latency (batch 1, p50/p99 over `--requests`) of the eager model (plain and fast) and of the
  exported ONNX model in onnxruntime (if installed), exact fp32 and `--weights int8` in alternating rounds
  (`--onnx-requests`, one live session at a time); inputs are prepared beforehand (not timed);
- AUC parity: the trained weights evaluated on the validation split by both paths (AUCs and max |dp|);
- peak RSS (getrusage) and the RSS after each phase.
Data: a synthetic dataset in the MMCTR layout (qin_lightning.data) with the real MicroLens vocabulary sizes
(91,718 items, 11,740 tags, 128-d vectors), histories of mean length 8 left-padded to 64. `--data-scale
microlens` uses the full MicroLens-scale dataset (3.6M train rows) and also records its load time and
memory against the bytes of its columns; `--data-scale converged` the shapes of the converged MovieLens sweep
(ml-latest-small's vocabulary, 20-long histories, 88% full). Training is also timed in CPU seconds of the
process per step (`train_cpu_s_per_step`). Writes `--out` (JSON, atomically) and prints a small table.
`--precision 32,bf16` adds the fast paths under bf16 autocast as a third configuration of every round (keys
`bf16_*`, AUC parity against the fp32 fast paths); `--experiment A,B` measures any `+experiment=` config.

Layout: `args` (BenchArgs: every flag stated once, the measured configurations), `data` (the bench dataset and
its batches), `eager` (training, inference, parity and latency of the eager network), `onnx` (the exported
model in onnxruntime), `system` (memory, percentiles, timing), `table` (the printed summary), `run` (one run
wired from these, `main`).
"""

from qin_lightning.bench.args import BenchArgs, configurations, parse_args
from qin_lightning.bench.data import MICROLENS_ITEMS, MICROLENS_TAGS, DeviceBatches
from qin_lightning.bench.onnx import onnx_latency_ms
from qin_lightning.bench.run import compose_config, main, run, run_all
from qin_lightning.bench.system import percentile
from qin_lightning.bench.table import table

__all__ = ["MICROLENS_ITEMS", "MICROLENS_TAGS", "BenchArgs", "DeviceBatches", "compose_config", "configurations",
           "main", "onnx_latency_ms", "parse_args", "percentile", "run", "run_all", "table"]
