"""Extra table: test AUC / logloss, best epoch and train seconds per experiment (mean +- std over seeds), from a
sweep folder's run folders (`*/results.json`) or its committed records (`runs/*.json`)."""
import json, statistics, sys
from pathlib import Path
runs = {}
folder = Path(sys.argv[1])
for p in sorted(folder.glob("*/results.json")) or sorted(folder.glob("runs/*.json")):
    d = json.loads(p.read_text())
    if d.get("status") == "completed":
        runs.setdefault(d["experiment"], []).append(d)
order = ["din", "qin", "ablation_no_qnn", "ablation_no_asta", "ablation_softmax", "ablation_relu",
         "ablation_dropout", "attention_silu", "attention_relu2"]
def ms(xs): return f"{statistics.fmean(xs):.4f} ± {statistics.stdev(xs) if len(xs) > 1 else 0:.4f}"
print("| experiment | seeds | val AUC | test AUC | test logloss | best epoch (0-based) | params | train s / run |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for name in order + sorted(set(runs) - set(order)):
    rs = runs.get(name)
    if not rs: continue
    print(f"| {name} | {len(rs)} | {ms([r['best_val_auc'] for r in rs])} | {ms([r['test_auc'] for r in rs])} | "
          f"{ms([r['test_logloss'] for r in rs])} | {', '.join(str(r['best_epoch']) for r in rs)} | "
          f"{rs[0]['n_params']:,} | {statistics.fmean(r['train_seconds'] for r in rs):.0f} |")
