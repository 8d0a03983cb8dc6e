#!/usr/bin/env bash
# The refactor check of speed: `python -m qin_lightning.bench --no-onnx` (make bench's measurement, without the ONNX
# part) of the tree before a refactor and of this tree, one after the other in the same venv, on an idle machine.
#   bash experiments/bench/refactor_check/run.sh REV     # REV's src (git archive, a temporary folder) vs this tree:
#                                                        # before_REV_1.json / after_REV_1.json
# Without REV: the 2026-11-29 layout change (commit 85853bb checked out beside this repository, git worktree add
# ../old 85853bb), recorded as before_85853bb_1.json / after_main_1.json.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=experiments/bench/refactor_check
if [ -z "${1:-}" ]; then
  (cd ../old && PYTHONPATH=src "$OLDPWD/.venv/bin/python" -m qin_lightning.bench --no-onnx --out "$OLDPWD/$OUT/before_85853bb_1.json")
  .venv/bin/python -m qin_lightning.bench --no-onnx --out "$OUT/after_main_1.json"
  exit 0
fi
OLD=$(mktemp -d)
trap 'rm -rf "$OLD"' EXIT
git archive "$1" src | tar -x -C "$OLD"
PYTHONPATH="$OLD/src" .venv/bin/python -m qin_lightning.bench --no-onnx --data-root "$OLD/data" \
    --out "$OUT/before_$1_1.json" > /dev/null
PYTHONPATH=src .venv/bin/python -m qin_lightning.bench --no-onnx --data-root "$OLD/data" --out "$OUT/after_$1_1.json" > /dev/null
.venv/bin/python - "$OUT/before_$1_1.json" "$OUT/after_$1_1.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
    r = json.load(open(path))
    print(f"{path}: train speed-up {r['train_speedup']:.2f}x, inference speed-up {r['infer_speedup']:.2f}x, "
          f"loadavg at start {r['loadavg_start']}")
PY
