#!/usr/bin/env bash
# The refactor check: `python -m qin_lightning.bench --no-onnx` of the tree before the 2026-11-29 layout change
# (commit 85853bb, checked out beside this repository: git worktree add ../old 85853bb) and of this tree, one
# after the other in the same venv. Round 1 is recorded here as before_85853bb_1.json / after_main_1.json.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=experiments/bench/refactor_check
(cd ../old && PYTHONPATH=src "$OLDPWD/.venv/bin/python" -m qin_lightning.bench --no-onnx --out "$OLDPWD/$OUT/before_85853bb_1.json")
.venv/bin/python -m qin_lightning.bench --no-onnx --out "$OUT/after_main_1.json"
