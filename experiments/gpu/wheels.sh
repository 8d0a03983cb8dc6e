#!/usr/bin/env bash
# Build, on a machine with a package index (the dev machine), the wheels of the pure-Python packages that the
# GPU machine's image lacks (it has torch, lightning, torchmetrics, pyarrow, pytest, hypothesis, onnx, but no
# Hydra), at the versions installed in .venv, into .whl/ (git-ignored). run.sh installs them on the GPU
# machine with --no-index into a temporary folder when its python cannot import hydra.
# Usage: bash experiments/gpu/wheels.sh     then carry `.whl` with the run (device tool: carry=[".whl"])
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || make install
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime)
pins=()
for name in "${PACKAGES[@]}"; do
  version="$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')"
  [[ -n "$version" ]] || { echo "error: $name is not installed in $PY (run make install)" >&2; exit 2; }
  pins+=("$name==$version")
done
rm -rf .whl
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w .whl "${pins[@]}"
ls -l .whl
