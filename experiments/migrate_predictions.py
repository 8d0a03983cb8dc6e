"""One-off migration of kept predictions to the self-contained format (qin_lightning.predictions): every
committed ``*.preds.parquet`` that holds only ``prob`` gets its rows' ``user_id`` and ``label`` and the split's
key, read from a conversion of the same data, after checking that the kept probabilities give the record's test
AUC (to 1e-7) on those labels. Each file is rewritten atomically; a file already migrated is checked and left.

    # the conversions the committed records were scored on (the encoder does not change rows, users or labels)
    python -m qin_lightning.prepare movielens --src ../shared/data/ml-latest-small.zip --out /tmp/mig/small_rating \\
        --protocol rating --holdout 9 --max-len 20 --encoder hashing
    python -m qin_lightning.prepare movielens --src ../shared/data/ml-100k.zip --out /tmp/mig/100k_rating \\
        --protocol rating --holdout 9 --max-len 20 --encoder hashing
    python -m qin_lightning.prepare movielens --src ../shared/data/ml-latest-small.zip --out /tmp/mig/small_sampled20 \\
        --max-len 20 --encoder hashing
    python -m qin_lightning.prepare movielens --src ../shared/data/ml-latest-small.zip --out /tmp/mig/small_sampled64 \\
        --max-len 64 --encoder hashing
    python -m qin_lightning.prepare synthetic --out /tmp/mig/synthetic          # fingerprint 82890082dd304fb0
    python experiments/migrate_predictions.py \\
        movielens-ml-latest-small-rating-per_user-f4210ac7c5=/tmp/mig/small_rating \\
        movielens-ml-100k-rating-per_user-1515f9646d=/tmp/mig/100k_rating \\
        movielens-ml-latest-small-sampled-per_user-50eb87bcd7=/tmp/mig/small_sampled20 \\
        movielens-ml-latest-small-sampled-per_user-e0e8b1f33b=/tmp/mig/small_sampled64 \\
        82890082dd304fb0=/tmp/mig/synthetic

Each ``NAME=FOLDER`` says where the data folder a record names (its ``data_dir``'s last component, which carries
the conversion's fingerprint) was converted again here; the key written is the recorded name.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from qin_lightning.data import layout
from qin_lightning.predictions import PROB, read_predictions, split_key, write_predictions
from qin_lightning.training.metrics import split_metrics

EXPERIMENTS = Path(__file__).resolve().parent
TOLERANCE = 1e-7


def recorded_test(record: dict) -> tuple[float, str]:
    """The record's test AUC and the data folder it was scored on (qin-eval's where the sweep ran it)."""
    test_eval = record.get("test_eval") or {}
    auc = test_eval.get("auc", record.get("test_auc"))
    return float(auc), str(test_eval.get("data_dir") or record["data_dir"])


def migrate(preds: Path, folders: dict[str, Path]) -> str:
    """Migrate one file; returns what was done."""
    record = json.loads(preds.with_name(preds.name.removesuffix(".preds.parquet") + ".json").read_text())
    auc, data_dir = recorded_test(record)
    name = Path(data_dir).name
    if pq.read_schema(preds).names != [PROB]:
        kept = read_predictions(preds)
        got = split_metrics(kept.probs, kept.labels.astype(np.int64), kept.users)["auc"]
        assert abs(got - auc) <= TOLERANCE and kept.split == split_key(data_dir, layout.TEST), (preds, got, auc)
        return "already migrated, checked"
    test = pq.read_table(folders[name] / layout.TEST_FILE, columns=[layout.USER_ID, layout.LABEL])
    users, labels = test.column(layout.USER_ID).to_numpy(), test.column(layout.LABEL).to_numpy()
    probs = pq.read_table(preds).column(PROB).to_numpy()
    if len(probs) != len(labels):
        raise SystemExit(f"{preds}: {len(probs)} rows, the test split of {folders[name]} {len(labels)}")
    got = split_metrics(probs, labels.astype(np.int64), users)["auc"]
    if abs(got - auc) > TOLERANCE:
        raise SystemExit(f"{preds}: AUC {got!r} on {folders[name]}, the record's {auc!r}: not written")
    write_predictions(preds, probs, users, labels, split_key(data_dir, layout.TEST))
    return f"migrated (AUC {got:.7f} = record)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="NAME=FOLDER: where the data folder NAME was converted again")
    args = parser.parse_args(argv)
    folders = {name: Path(folder) for name, _, folder in (f.partition("=") for f in args.folders)}
    for preds in sorted(EXPERIMENTS.rglob("*.preds.parquet")):
        print(f"{preds.relative_to(EXPERIMENTS)}: {migrate(preds, folders)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
