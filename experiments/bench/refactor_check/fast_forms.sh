#!/usr/bin/env bash
# The refactor check of DIN's and the winner's faster fast forms (commit b7c0622) and the bench changes after it:
# the same short `qin-bench` (tiny synthetic data, QIN, DIN and the winner at the converged width, a few training
# steps of the plain and fast paths, then the validation AUC of the trained weights) on the tree before them
# (git archive b7c0622~1 src, unpacked in a temporary folder) and on this tree, one after the other in the same venv.
# Every AUC must agree to float rounding (the fast forms draw the same dropout masks as before).
# Another base: `bash experiments/bench/refactor_check/fast_forms.sh REV` (records fast_forms_{before,after}_REV.json;
# 0cc1690 = before DIN's distinct-item first layer and the fp32 logit, 2026-12-05).
# EXPERIMENTS=qin,din (default qin,din,transformer_dcn) and AFTER="--override KEY=VALUE ..." (overrides for this
# tree only, e.g. an option whose new default the older tree did not have) narrow a check; SUFFIX names its records.
set -euo pipefail
REV=${1:-b7c0622~1}
SUFFIX=${SUFFIX:-${1:+_$1}}
EXPERIMENTS=${EXPERIMENTS:-qin,din,transformer_dcn}
read -r -a AFTER_ARGS <<< "${AFTER:-}"
cd "$(dirname "$0")/../../.."
OUT=experiments/bench/refactor_check
OLD=$(mktemp -d)
trap 'rm -rf "$OLD"' EXIT
git archive "$REV" src | tar -x -C "$OLD"
ARGS=(--data-scale tiny --train-rows 2000 --eval-rows 500 --batch-size 256 --rounds 2 --threads 1 --no-onnx
      --requests 20 --experiment "$EXPERIMENTS" --override model.net.embedding_dim=32
      --override model.net.mm_projection_dim=32)
PYTHONPATH="$OLD/src" .venv/bin/python -m qin_lightning.bench "${ARGS[@]}" --data-root "$OLD/data" \
    --out "$OUT/fast_forms_before$SUFFIX.json" > /dev/null
PYTHONPATH=src .venv/bin/python -m qin_lightning.bench "${ARGS[@]}" ${AFTER_ARGS[@]+"${AFTER_ARGS[@]}"} --data-root "$OLD/data" \
    --out "$OUT/fast_forms_after$SUFFIX.json" > /dev/null
.venv/bin/python - "$OUT/fast_forms_before$SUFFIX.json" "$OUT/fast_forms_after$SUFFIX.json" <<'PY'
import json, sys
before, after = ((r.get("experiments") or {r["experiment"]: r}) for r in (json.load(open(p)) for p in sys.argv[1:]))
for name in before:
    b, a = before[name], after[name]
    print(f"{name:16s} AUC fast before {b['auc_fast']:.7f} after {a['auc_fast']:.7f} (diff {abs(b['auc_fast'] - a['auc_fast']):.1e}); "
          f"plain before {b['auc_plain']:.7f} after {a['auc_plain']:.7f}")
PY
