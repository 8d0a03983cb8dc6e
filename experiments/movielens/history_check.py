"""The history-length check's seed-level test: softmax attention against QIN (ASTA) at 20 and at 64 history items.

    python experiments/movielens/history_check.py

For each plan (converged_history20, converged_history64), the test AUC of each seed's two runs, their
difference, and a paired t-test over the seeds (scipy.stats.ttest_rel). It complements the tables' paired
bootstrap over users and seeds, whose seed part rests on only 3 seeds.
"""

import json
from pathlib import Path

from scipy import stats

HERE = Path(__file__).resolve().parent
for plan in ("converged_history20", "converged_history64"):
    runs = HERE / plan / "runs"
    seeds = sorted(int(p.stem.rsplit("seed", 1)[1]) for p in runs.glob("qin_seed*.json"))
    qin = [json.loads((runs / f"qin_seed{s}.json").read_text())["test_auc"] for s in seeds]
    softmax = [json.loads((runs / f"ablation_softmax_seed{s}.json").read_text())["test_auc"] for s in seeds]
    diffs = [b - a for a, b in zip(qin, softmax)]
    test = stats.ttest_rel(softmax, qin)
    print(f"{plan}: seeds {seeds}, softmax - qin on test {[round(d, 4) for d in diffs]}, "
          f"mean {sum(diffs) / len(diffs):+.4f}, paired t-test over seeds p = {test.pvalue:.3f} (df {len(seeds) - 1})")
