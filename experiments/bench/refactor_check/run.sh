#!/usr/bin/env bash
# old (85853bb) and new (main) bench, twice each, alternating, no ONNX
for i in 1 2; do
  (cd /work/old && PYTHONPATH=/work/old/src /work/main/.venv/bin/python -m qin_lightning.bench --no-onnx --out experiments/bench/refactor_check/sbs_old_$i.json > /tmp/sbs_old_$i.log 2>&1)
  (cd /work/main && /work/main/.venv/bin/python -m qin_lightning.bench --no-onnx --out experiments/bench/refactor_check/sbs_new_$i.json > /tmp/sbs_new_$i.log 2>&1)
done
echo done > /tmp/sbs.done
