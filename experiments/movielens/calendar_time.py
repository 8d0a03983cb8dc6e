"""How much of the training split of the rating protocol lies after a test row's date (per-user holdout).

    python experiments/movielens/calendar_time.py ../shared/data/ml-latest-small.zip ../shared/data/ml-100k.zip

For each release, the conversion's own rules (`reindexed_events`, `split_ids` with the rating plans' per-user
holdout of 9) give the test rows (one per rating); a row counts when the training split holds at least one rating
with a later timestamp. The per-user split keeps no row of valid or test in training, but it does not cut at one
date across users, so these are the rows whose model has seen later behaviour of other users.
"""

import sys

import numpy as np

from qin_lightning.data.movielens.convert import reindexed_events, split_ids
from qin_lightning.data.movielens.release import load_movielens

HOLDOUT = 9  # the rating plans' data.source.holdout
for src in sys.argv[1:]:
    events = reindexed_events(load_movielens(src).ratings)
    split = split_ids(events, "per_user", HOLDOUT)
    last_train = events.ts[split == 0].max()
    test_ts = events.ts[split == 2]
    later = test_ts < last_train
    share = float(np.mean(later))
    print(f"{src}: {test_ts.size:,} test rows, {int(later.sum()):,} ({100 * share:.1f}%) have training ratings from "
          f"a later time")
