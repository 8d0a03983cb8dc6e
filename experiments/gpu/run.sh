#!/usr/bin/env bash
# GPU checks of issues 5 and 16 on one CUDA machine (H100/H200): steps 1-3 in well under 5 minutes, the sweep (4) a few more:
#   1. the GPU-only tests (tests/test_gpu.py: bf16 training step, Lightning bf16-mixed fit, torch.compile parity,
#      fast paths on the device, the bench in its GPU configuration);
#   2. the benchmark at MicroLens scale (3.6M synthetic training rows, 64-long histories, real vocab sizes),
#      batch 8192, bf16 mixed precision, plain vs fast paths, plus one whole training epoch (fast paths);
#   3. a 1-GPU DDP smoke test of the training entry point;
#   4. one ablation sweep as the mission runs it (every conf/experiment, `-m '+experiment=glob(*)'`, trainer=gpu),
#      at a small budget: the default synthetic data, SWEEP_EPOCHS epochs (default 2), one seed, then its report.
# Usage (repository root or anywhere):  bash experiments/gpu/run.sh
#   OUT=/some/dir   where the JSON / logs go (default experiments/gpu)
#   COMPILE=1       also torch.compile the training forward in the bench (adds compile time; default 0)
#   SWEEP_EPOCHS=N  epochs per run of the ablation sweep (default 2; 0 skips the sweep)
#   PYTHON=/path    interpreter to use (default: .venv/bin/python if it has torch, else python3; `make install`
#                   is run when neither can import torch). Without Hydra (the GPU machine's image) the wheels
#                   in .whl/ are installed into a temporary folder: build them with experiments/gpu/wheels.sh
#                   where pip works and carry .whl along.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
OUT_DIR="${OUT:-$ROOT/experiments/gpu}"
mkdir -p "$OUT_DIR"
COMPILE="${COMPILE:-0}"
SWEEP_EPOCHS="${SWEEP_EPOCHS:-2}"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export WANDB_MODE=disabled
export PYTHONDONTWRITEBYTECODE=1

has_torch() { "$1" -c "import torch, lightning" >/dev/null 2>&1; }
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]] && has_torch .venv/bin/python; then PY=.venv/bin/python
  elif command -v python3 >/dev/null && has_torch python3; then PY=python3
  else make install; PY=.venv/bin/python
  fi
fi
has_torch "$PY" || { echo "error: $PY cannot import torch/lightning" >&2; exit 2; }
# a machine without a package index (the GPU machine's image has no Hydra): install the wheels that
# experiments/gpu/wheels.sh built into .whl/ (carried along) into a temporary folder
if ! "$PY" -c "import hydra, omegaconf" >/dev/null 2>&1; then
  compgen -G ".whl/*.whl" >/dev/null || { echo "error: $PY cannot import hydra and there is no .whl/ (run bash experiments/gpu/wheels.sh where pip works, then carry .whl)" >&2; exit 2; }
  SITE="${TMPDIR:-/tmp}/qin_gpu_site"
  "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:$SITE"
fi

log() { printf '\n=== %s  %s\n' "$(date +%H:%M:%S)" "$*"; }
START=$(date +%s)

log "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/device.txt"
"$PY" - <<'PY' | tee -a "$OUT_DIR/device.txt"
import torch
assert torch.cuda.is_available(), "torch cannot see a CUDA device (CPU-only torch wheel?)"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {torch.cuda.get_device_name(0)}, "
      f"bf16 {torch.cuda.is_bf16_supported()}")
PY

log "GPU-only tests"
timeout 600 "$PY" -m pytest tests/test_gpu.py -q -m gpu -p no:cacheprovider -rs \
  --junitxml="$OUT_DIR/gpu_tests.xml" 2>&1 | tee "$OUT_DIR/gpu_tests.log"

log "benchmark at MicroLens scale (bf16, and the fast paths in fp32 side by side: 32_* keys; batch 8192)"
BENCH_ARGS=(--data-scale microlens --device cuda --precision bf16,32 --batch-size 8192 --threads 8
            --rounds 3 --train-steps 20 --infer-batches 10 --requests 1000 --epoch --no-onnx
            --override model.nonfinite_check_every_n_steps=0)
if [[ "$COMPILE" == "1" ]]; then BENCH_ARGS+=(--compile); fi
timeout 900 "$PY" -m qin_lightning.bench "${BENCH_ARGS[@]}" --out "$OUT_DIR/bench_microlens_bf16.json" \
  2>&1 | tee "$OUT_DIR/bench.log"

log "1-GPU DDP smoke test"
timeout 600 "$PY" -m qin_lightning.train trainer=ddp trainer.devices=1 trainer.accelerator=gpu \
  trainer.fast_dev_run=true paths.log_dir="${TMPDIR:-/tmp}/qin_gpu_logs" 2>&1 | tail -n 20 | tee "$OUT_DIR/ddp_smoke.log"

if [[ "$SWEEP_EPOCHS" != "0" ]]; then
  log "ablation sweep: every experiment, $SWEEP_EPOCHS epochs, bf16 on the GPU"
  SWEEP_DIR="${TMPDIR:-/tmp}/qin_gpu_sweep"
  rm -rf "$SWEEP_DIR"
  timeout 900 "$PY" -m qin_lightning.train -m '+experiment=glob(*)' trainer=gpu trainer.max_epochs="$SWEEP_EPOCHS" \
    model.nonfinite_check_every_n_steps=0 callbacks.progress_bar=null callbacks.model_summary=null \
    paths.log_dir="${TMPDIR:-/tmp}/qin_gpu_logs" hydra.sweep.dir="$SWEEP_DIR" 2>&1 | tail -n 40 \
    | tee "$OUT_DIR/sweep.log" || true
  "$PY" -m qin_lightning.report "$SWEEP_DIR" 2>&1 | tail -n 5 | tee -a "$OUT_DIR/sweep.log" || true
  cp "$SWEEP_DIR/report.md" "$OUT_DIR/sweep_report.md" 2>/dev/null || true
  "$PY" - "$SWEEP_DIR" <<'PY' | tee "$OUT_DIR/sweep_runs.txt"
import json, pathlib, sys
runs = sorted(pathlib.Path(sys.argv[1]).glob("*/results.json"))
for path in runs:
    r = json.loads(path.read_text())
    t = r.get("timing") or {}
    print(f"{path.parent.name:40s} {r.get('status'):10s} auc={r.get('best_val_auc')} "
          f"epoch_s={t.get('epoch_s')} train_s={t.get('train_s')} val_s={t.get('val_s')}")
print(f"{len(runs)} runs, {sum(json.loads(p.read_text()).get('status') == 'completed' for p in runs)} completed")
PY
fi

log "summary"
"$PY" - "$OUT_DIR/bench_microlens_bf16.json" <<'PY' | tee "$OUT_DIR/summary.txt"
import json, sys
r = json.load(open(sys.argv[1]))
keys = ["device_name", "train_samples_per_s", "plain_train_samples_per_s", "train_speedup", "epoch_seconds",
        "epoch_samples_per_s", "infer_samples_per_s", "plain_infer_samples_per_s", "infer_speedup",
        "latency_p50_ms", "latency_p99_ms", "auc_plain", "auc_fast", "max_abs_prob_diff", "peak_rss_mb",
        "32_train_samples_per_s", "32_infer_samples_per_s", "32_auc", "32_max_abs_prob_diff"]
for k in keys:
    print(f"{k:28s} {r.get(k)}")
print(f"{'data load_s / generate_s':28s} {r['data']['load_s']} / {r['data']['generate_s']}")
print(f"{'target >= 1e6 train/s':28s} {'met' if r['train_samples_per_s'] >= 1e6 else 'NOT met'}")
PY
log "done in $(( $(date +%s) - START )) s; results in $OUT_DIR"
