"""Facts the results READMEs quote about a recorded sweep, from its committed per-run records (runs/*.json).

    python experiments/run_facts.py experiments/movielens experiments/movielens/sweep_bs2048 \
        > experiments/movielens/run_facts.json
    python experiments/run_facts.py experiments/synthetic > experiments/synthetic/run_facts.json

Per sweep folder: the runs, the epochs each trained, the stop reasons (when recorded), the runs whose best epoch
was not the last one, the runs whose learning rate was reduced (the plateau schedule), and the sum of the runs'
`train_seconds` (training time only; a sweep's wall-clock time is not in its records).
"""

import json
import sys
from collections import Counter
from pathlib import Path


def facts(sweep: Path) -> dict:
    runs = sorted(sweep.glob("runs/*.json"), key=lambda p: int(p.name.split("_")[0]))
    out = {"runs": len(runs), "epochs_trained": {}, "best_epoch_not_last": {}, "lr_reduced": {},
           "train_seconds_sum": 0.0}
    for path in runs:
        record = json.loads(path.read_text())
        history = record["val_history"]
        out["epochs_trained"][path.stem] = record["epochs_trained"]
        if record["best_epoch"] != history[-1]["epoch"]:
            last = history[-1]["epoch"]
            out["best_epoch_not_last"][path.stem] = {"best_epoch": record["best_epoch"], "last_epoch": last}
        lrs = [h["lr"] for h in history]
        if len(set(lrs)) > 1:
            out["lr_reduced"][path.stem] = lrs
        out["train_seconds_sum"] += record["train_seconds"]
        if record.get("stop_reason"):
            out.setdefault("stop_reason", Counter())[record["stop_reason"]] += 1
    out["train_seconds_sum"] = round(out["train_seconds_sum"], 1)
    out["epochs_trained"] = {str(n): sum(v == n for v in out["epochs_trained"].values())
                             for n in sorted(set(out["epochs_trained"].values()))}
    return out


if __name__ == "__main__":
    print(json.dumps({folder: facts(Path(folder)) for folder in sys.argv[1:]}, indent=2))
