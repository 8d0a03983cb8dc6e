"""MovieLens -> MMCTR layout: the conversion rules, one function per rule, and `convert` that applies them.

Conversion rules (all vectorised with polars / numpy: sorts and group offsets, no per-rating Python loop):
1. Ratings: a repeated (user, movie) pair keeps its latest rating. Items = movies with at least one rating,
   re-indexed 1..N by ascending movie id (0 = padding); users re-indexed 1..U by ascending user id.
   Row i of item_info is item i; row 0 is the padding item (all-zero tags and vector).
2. Time order: each user's ratings sorted by (timestamp, item index): ratings in the same second are
   ordered by item index. This order decides the split (rule 4); it never puts an item into a history.
3. History of a row = the user's items with a timestamp strictly before the row's, most recent last (ties
   by item index), truncated to the last `max_len` and left-padded with 0 to `max_len`. A rating in the
   same second as the row is not "before" it and never enters its history. Which items: ``history``
   ``positives`` (default, as in MMCTR, where item_seq holds a user's earlier clicks, i.e. the earlier
   positives): the items that carry label 1 under the protocol (``sampled``: every rated item; ``rating``:
   the items rated >= 4); ``rated``: every rated item, whatever its rating. Either way whatever its split.
4. Split: ``per_user`` (default): a user's last `holdout` (k, default 1) ratings in rule 2's order -> test,
   the k before them -> valid, the rest -> train. A user with at most 2k ratings goes to train whole (no
   valid or test rows: every scored user has at least one training rating). ``global_time``: all
   interactions ordered by (timestamp, user, item); the first 80% -> train, next 10% -> valid, last 10% ->
   test.
5. Labels: protocol ``sampled`` (default): every rating is a positive row; each positive is followed by
   `negatives` (3) rows with items the user never rated (uniform over the N items, seeded; distinct within
   the group when the user has enough unrated items), sharing the positive's user, history and split
   (25% positives with 3 negatives). Protocol ``rating``: one row per rating, label = rating >= 4.
   Rows are in (user, time) order; the test split keeps its labels.
6. likes_level / views_level (per target item): deciles 1..10 of the item's TRAIN positive-rating count
   (ratings >= 4) and TRAIN rating count, ranked over the items that have train ratings (ties share a level:
   level = 1 + floor(10 * #items with a smaller count / #items with train ratings)); 0 for items without
   train ratings. Valid / test never influence them.
7. item_tags (5 per item, left-padded with 0): tokens are the lower-cased genres and the user tags
   (tags.csv / tags.dat, lower-cased, stripped) applied during the training period: per_user -> at or before
   the tagger's last train interaction; global_time -> at or before the last train timestamp. An item takes
   up to 3 genres (release order), then its most frequent training tags (count desc, then text), then its
   remaining genres, 5 at most. The vocabulary is built from the items that have train ratings only; a token
   outside it is dropped. Ids 1..V by descending number of items using the token, then text (0 = padding).
8. item_emb_d128: the text "<title>. Genres: <g1>, <g2>" of every item, encoded by all-MiniLM-L6-v2
   (``minilm``, optional extra `text`, offline) or the numpy hashing encoder (``hashing``; see
   `qin_lightning.data.text_embed`), then PCA to 128 dimensions fitted on the N items (numpy SVD; mean row
   norm scaled to 1). ``auto`` picks minilm when installed; meta.json records the encoder used. Raw
   encoder outputs are cached by a hash of (encoder, texts).
9. Output: train/valid/test/item_info.parquet + meta.json (source, layout, protocol, split, holdout, history,
   encoder, seed, counts with the scored users, tag vocabulary), written into a temporary folder beside the
   target and renamed into place: a failure leaves no partial folder. A non-empty target is refused unless
   overwrite=True.
The result is a function of (source, protocol, split, holdout, history, encoder, seed, max_len, negatives)
only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from qin_lightning.data import layout
from qin_lightning.data.movielens.release import RawMovieLens, load_movielens
from qin_lightning.data.text_embed import TextEncoder, default_cache_dir, embed_texts, pca_reduce, resolve_encoder
from qin_lightning.errors import ConfigError, DataValidationError
from qin_lightning.files import FileWriteError

PROTOCOLS = ("sampled", "rating")
SPLIT_MODES = ("per_user", "global_time")
HISTORIES = ("positives", "rated")
GLOBAL_FRACTIONS = (0.8, 0.1)  # train, valid (test = the rest)
TAGS_PER_ITEM = 5
MAX_GENRES_FIRST = 3
POSITIVE_RATING = 4.0
CHUNK_EVENTS = 32_768  # interactions per written chunk (bounds memory: rows x max_len ids)
FORMAT_VERSION = 2  # 2: histories strictly before the row's timestamp; holdout, history


@dataclass(frozen=True)
class Events:
    """The deduplicated ratings, re-indexed and in (user, time, item) order (rules 1 and 2)."""

    item_movies: np.ndarray  # (N,) movie id of item i+1, ascending
    user_raw: np.ndarray  # (U,) user id of user u+1, ascending
    item: np.ndarray  # (E,) item index 1..N
    user: np.ndarray  # (E,) user index 1..U
    ts: np.ndarray  # (E,) timestamp
    rating: np.ndarray  # (E,) rating
    count: np.ndarray  # (U+1,) events per user
    start: np.ndarray  # (E,) position of the event's user's first event

    @property
    def n_items(self) -> int:
        return int(self.item_movies.size)

    @property
    def n_users(self) -> int:
        return int(self.user_raw.size)


# ---- rules 1 and 2: dedupe, re-index, time order ---------------------------------------------------------
def reindexed_events(ratings: pl.DataFrame) -> Events:
    """Rule 1 (latest rating of a repeated pair, items and users re-indexed 1..) and rule 2 (time order)."""
    r = ratings.sort(["user", "movie", "ts", "rating"]).unique(["user", "movie"], keep="last", maintain_order=True)
    item_movies = np.unique(r["movie"].to_numpy())
    user_raw = np.unique(r["user"].to_numpy())
    it = np.searchsorted(item_movies, r["movie"].to_numpy()) + 1
    us = np.searchsorted(user_raw, r["user"].to_numpy()) + 1
    ts = r["ts"].to_numpy()
    rating = r["rating"].to_numpy()
    order = np.lexsort((it, ts, us))
    it, us, ts, rating = it[order], us[order], ts[order], rating[order]
    count = np.bincount(us, minlength=user_raw.size + 1)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])  # first event of each user
    return Events(item_movies, user_raw, it, us, ts, rating, count, first[us])


# ---- rule 3: histories -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class HistoryIndex:
    """Where every event's history lies: items[begin[e]:end[e]] are the history of event e (rule 3)."""

    items: np.ndarray  # (H+1,) history-eligible items in (user, time, item) order after a leading 0
    begin: np.ndarray  # (E,) first eligible item of the event's user
    end: np.ndarray  # (E,) one past the user's last eligible item with a timestamp before the event's


def history_index(events: Events, eligible: np.ndarray) -> HistoryIndex:
    """The `eligible` events (bool, (E,)) that precede each event in time, as slices (rule 3)."""
    _, ts_rank = np.unique(events.ts, return_inverse=True)
    stride = int(ts_rank.max()) + 2 if ts_rank.size else 1
    key = events.user.astype(np.int64) * stride + ts_rank  # ascending: events are in (user, time) order
    eligible_key = key[eligible]
    begin = np.searchsorted(eligible_key, events.user.astype(np.int64) * stride, side="left")
    end = np.searchsorted(eligible_key, key, side="left")  # strictly smaller (user, timestamp)
    return HistoryIndex(np.concatenate([[0], events.item[eligible]]), begin + 1, end + 1)


def _histories(index: HistoryIndex, lo: int, hi: int, max_len: int) -> np.ndarray:
    """(hi-lo, max_len) left-padded histories of events lo..hi-1, most recent last."""
    idx = index.end[lo:hi, None] - max_len + np.arange(max_len)[None, :]  # (m, L) positions in index.items
    return np.where(idx >= index.begin[lo:hi, None], index.items[np.maximum(idx, 0)], 0)


def history_eligible(events: Events, protocol: str, history: str) -> np.ndarray:
    """(E,) bool: the events whose item may enter a later history (rule 3's `history`)."""
    if history == "rated" or protocol == "sampled":
        return np.ones(events.item.size, dtype=bool)
    return events.rating >= POSITIVE_RATING


# ---- rule 4: split ---------------------------------------------------------------------------------------
def split_ids(events: Events, split: str, holdout: int = 1) -> np.ndarray:
    """(E,) int8 split of every event: 0 train, 1 valid, 2 test (rule 4)."""
    n_events = events.item.size
    if split == "per_user":
        n_user = events.count[events.user]
        from_end = n_user - (np.arange(n_events) - events.start)  # 1 for the user's last rating
        scored = n_user > 2 * holdout
        return np.where(scored & (from_end <= holdout), 2,
                        np.where(scored & (from_end <= 2 * holdout), 1, 0)).astype(np.int8)  # fmt: skip
    rank = np.empty(n_events, dtype=np.int64)
    rank[np.lexsort((events.item, events.user, events.ts))] = np.arange(n_events)
    n_train = int(np.floor(GLOBAL_FRACTIONS[0] * n_events))
    n_valid = int(np.floor((GLOBAL_FRACTIONS[0] + GLOBAL_FRACTIONS[1]) * n_events))
    return np.where(rank < n_train, 0, np.where(rank < n_valid, 1, 2)).astype(np.int8)


# ---- rule 5: labels ----------------------------------------------------------------------------------------
def sampled_negatives(events: Events, negatives: int, seed: int) -> np.ndarray:
    """(E, negatives) unrated items per event for protocol ``sampled`` (rule 5)."""
    rated_keys = np.unique(events.user * (events.n_items + 1) + events.item)
    n_unrated = events.n_items - events.count
    if (n_unrated[1:] == 0).any():
        u = int(np.flatnonzero(n_unrated[1:] == 0)[0]) + 1
        raise DataValidationError(
            f"user {events.user_raw[u - 1]} rated every item: cannot sample negatives for protocol 'sampled'"
        )
    return _sample_negatives(events.user, events.n_items, rated_keys, n_unrated, negatives,
                             np.random.default_rng(seed))  # fmt: skip


def _sample_negatives(user: np.ndarray, n_items: int, rated_keys: np.ndarray, n_unrated: np.ndarray,
                      k: int, rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """(E, k) items in 1..n_items that the event's user never rated; distinct per row when possible."""
    neg = rng.integers(1, n_items + 1, size=(user.shape[0], k), dtype=np.int64)
    base = user[:, None] * (n_items + 1)
    want_distinct = n_unrated[user] >= k
    todo = np.ones(neg.shape, dtype=bool)
    for _ in range(100_000):
        keys = base + neg
        pos = np.searchsorted(rated_keys, keys)
        bad = rated_keys[np.minimum(pos, rated_keys.size - 1)] == keys
        for j in range(1, k):
            dup = (neg[:, j : j + 1] == neg[:, :j]).any(axis=1) & want_distinct
            bad[:, j] |= dup
        todo = bad
        if not todo.any():
            return neg
        neg[todo] = rng.integers(1, n_items + 1, size=int(todo.sum()), dtype=np.int64)
    raise DataValidationError("could not sample negatives (users rated almost every item)")


def labelled_rows(events: Events, neg: np.ndarray | None, lo: int,
                  hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(event of each row, target item, label) for events lo..hi-1: a positive + its negatives, or the rating."""
    if neg is not None:
        k = neg.shape[1]
        items = np.concatenate([events.item[lo:hi, None], neg[lo:hi]], axis=1).reshape(-1)  # event-major
        label = np.tile(np.r_[1, np.zeros(k, dtype=np.int64)], hi - lo)
        return np.repeat(np.arange(hi - lo), k + 1), items, label
    label = (events.rating[lo:hi] >= POSITIVE_RATING).astype(np.int64)
    return np.arange(hi - lo), events.item[lo:hi], label


# ---- rule 6: likes_level / views_level ---------------------------------------------------------------------
def decile_levels(counts: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """1..10 deciles of `counts` among the `seen` items (ties share a level); 0 for unseen items."""
    levels = np.zeros(counts.shape[0], dtype=np.int8)
    vals = np.sort(counts[seen])
    if vals.size:
        smaller = np.searchsorted(vals, counts[seen], side="left")  # items with a strictly smaller count
        levels[seen] = 1 + (10 * smaller) // vals.size
    return levels


def item_levels(events: Events, train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(likes_level, views_level, items with train ratings) per item index 0..N, from TRAIN only (rule 6)."""
    views = np.bincount(events.item[train], minlength=events.n_items + 1)
    likes = np.bincount(events.item[train & (events.rating >= POSITIVE_RATING)], minlength=events.n_items + 1)
    seen = views > 0
    seen[0] = False
    return decile_levels(likes, seen), decile_levels(views, seen), seen


# ---- rule 7: item_tags -------------------------------------------------------------------------------------
def _item_tags(raw: RawMovieLens, item_movies: np.ndarray, genres: list[list[str]], user_raw_sorted: np.ndarray,
               train_end_user: np.ndarray, train_end_global: int | None, in_train: np.ndarray,
               split: str) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """(N+1, 5) tag ids and the vocabulary (token of id i at position i-1); see rule 7."""
    n = item_movies.shape[0]
    top: dict[int, list[str]] = {}
    if raw.tags is not None and raw.tags.height:
        t = raw.tags
        midx = np.searchsorted(item_movies, t["movie"].to_numpy())
        known = (midx < n) & (item_movies[np.minimum(midx, n - 1)] == t["movie"].to_numpy())
        ts = t["ts"].to_numpy()
        if split == "per_user":
            uidx = np.searchsorted(user_raw_sorted, t["user"].to_numpy())
            uknown = (uidx < user_raw_sorted.size) & (user_raw_sorted[np.minimum(uidx, user_raw_sorted.size - 1)] == t["user"].to_numpy())
            limit = np.where(uknown, train_end_user[np.minimum(uidx, user_raw_sorted.size - 1) + 1], np.iinfo(np.int64).min)
            keep = known & uknown & (ts <= limit)
        else:
            keep = known & (ts <= (train_end_global if train_end_global is not None else np.iinfo(np.int64).min))
        kept = pl.DataFrame({"item": midx[keep] + 1, "tag": t["tag"].to_numpy()[keep]}, schema={"item": pl.Int64, "tag": pl.String})
        counts = kept.group_by("item", "tag").len().sort(["item", "len", "tag"], descending=[False, True, False])
        top_df = counts.group_by("item", maintain_order=True).agg(pl.col("tag").head(TAGS_PER_ITEM))
        top = dict(zip(top_df["item"].to_list(), top_df["tag"].to_list()))
    tokens: list[list[str]] = [[]]
    for i in range(1, n + 1):  # per item (not per rating)
        g = [x.lower() for x in genres[i]]
        chosen = list(dict.fromkeys(g[:MAX_GENRES_FIRST] + top.get(i, []) + g[MAX_GENRES_FIRST:]))
        tokens.append(chosen[:TAGS_PER_ITEM])
    use: dict[str, int] = {}
    for i in np.flatnonzero(in_train):
        for tok in tokens[i]:
            use[tok] = use.get(tok, 0) + 1
    vocab = sorted(use, key=lambda tok: (-use[tok], tok))
    ids = {tok: j + 1 for j, tok in enumerate(vocab)}
    out = np.zeros((n + 1, TAGS_PER_ITEM), dtype=np.int64)
    for i in range(1, n + 1):
        row = [ids[tok] for tok in tokens[i] if tok in ids]
        if row:
            out[i, TAGS_PER_ITEM - len(row) :] = row
    return out, vocab


# ---- rule 8: item_emb_d128 --------------------------------------------------------------------------------
def item_texts(raw: RawMovieLens, item_movies: np.ndarray) -> tuple[list[str], list[list[str]]]:
    """Titles and genre lists per item index 0..N (index 0 = padding: empty)."""
    mv = pl.DataFrame({"movie": item_movies}).join(raw.movies, on="movie", how="left", maintain_order="left")
    titles = [""] + mv["title"].fill_null("").to_list()
    genres = [[]] + [g if g is not None else [] for g in mv["genres"].to_list()]
    return titles, genres


def item_vectors(titles: list[str], genres: list[list[str]], enc: TextEncoder, cache: Path) -> np.ndarray:
    """(N+1, EMB_DIM) float32: encoded "<title>. Genres: ..." texts, PCA to EMB_DIM; row 0 zeros (rule 8)."""
    n_items = len(titles) - 1
    texts = [f"{titles[i]}. Genres: {', '.join(genres[i]) if genres[i] else 'none'}" for i in range(1, n_items + 1)]
    emb = np.zeros((n_items + 1, layout.EMB_DIM), dtype=np.float32)
    emb[1:] = pca_reduce(embed_texts(texts, enc, cache), layout.EMB_DIM)
    return emb


# ---- rule 9: output ----------------------------------------------------------------------------------------
def _split_table(user: np.ndarray, hist: np.ndarray, likes: np.ndarray, views: np.ndarray,
                 item: np.ndarray, label: np.ndarray) -> pa.Table:  # fmt: skip
    m, L = hist.shape
    seq = pa.ListArray.from_arrays(pa.array(np.arange(0, (m + 1) * L, L, dtype=np.int32)), pa.array(hist.reshape(-1).astype(np.int64)))
    return pa.Table.from_arrays(
        [pa.array(user.astype(np.int64)), seq, pa.array(likes.astype(np.int8)), pa.array(views.astype(np.int8)),
         pa.array(item.astype(np.int64)), pa.array(label.astype(np.int8))],
        names=list(layout.SPLIT_COLUMNS),
    )  # fmt: skip


SPLIT_SCHEMA = pa.schema(
    [(layout.USER_ID, pa.int64()), (layout.ITEM_SEQ, pa.list_(pa.int64())), (layout.LIKES_LEVEL, pa.int8()),
     (layout.VIEWS_LEVEL, pa.int8()), (layout.ITEM_ID, pa.int64()), (layout.LABEL, pa.int8())]
)  # fmt: skip


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder to `out` (replacing an old one only after success)."""
    if out.exists() and not out.is_dir():
        out.unlink()
    if out.is_dir():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def write_dataset(out: Path, events: Events, split_id: np.ndarray, neg: np.ndarray | None, history: HistoryIndex,
                  likes_level: np.ndarray, views_level: np.ndarray, tags: np.ndarray, emb: np.ndarray, max_len: int,
                  meta: dict, started: float) -> None:  # fmt: skip
    """Write the four parquet files + meta.json into a temporary folder beside `out`, then rename it into place.

    meta.json is `meta` completed with the rows and positive rate per split and the seconds since `started`.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    rows = {s: 0 for s in layout.SPLITS}
    positives = {s: 0 for s in layout.SPLITS}
    try:
        writers = {s: pq.ParquetWriter(tmp / layout.FILE_NAMES[s], SPLIT_SCHEMA) for s in layout.SPLITS}
        try:
            for lo in range(0, events.item.size, CHUNK_EVENTS):
                hi = min(lo + CHUNK_EVENTS, events.item.size)
                event, items, label = labelled_rows(events, neg, lo, hi)
                hist = _histories(history, lo, hi, max_len)[event]  # (m, L)
                users, sid = events.user[lo:hi][event], split_id[lo:hi][event]
                for s_i, s in enumerate(layout.SPLITS):
                    m = sid == s_i
                    if m.any():
                        writers[s].write_table(_split_table(users[m], hist[m], likes_level[items[m]], views_level[items[m]], items[m], label[m]))
                        rows[s] += int(m.sum())
                        positives[s] += int(label[m].sum())
        finally:
            for w in writers.values():
                w.close()
        pq.write_table(layout.item_info_table(tags, emb), tmp / layout.ITEM_INFO_FILE)
        meta["counts"]["rows"] = rows
        meta["counts"]["positive_rate"] = {s: (positives[s] / rows[s] if rows[s] else 0.0) for s in layout.SPLITS}
        meta["seconds"] = round(time.perf_counter() - started, 2)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        _replace_dir(tmp, out)
    except OSError as err:  # e.g. ENOSPC: the previous folder (if any) is only replaced after a complete write
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "the previous folder is unchanged" if out.exists() else "nothing was written"
        raise FileWriteError(f"{out}: cannot write the converted data ({err.strerror or err}); {kept}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---- all rules -------------------------------------------------------------------------------------------
def convert(raw: RawMovieLens, out: Path | str, protocol: str = "sampled", split: str = "per_user",
            holdout: int = 1, history: str = "positives", encoder: str = "auto", seed: int = 20242025,
            max_len: int = 64, negatives: int = 3,
            cache_dir: Path | str | None = None, overwrite: bool = False, source: str = "") -> dict:  # fmt: skip
    """Convert canonical frames into the MMCTR layout at `out` (atomically); returns the meta.json dict."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol '{protocol}' is unknown, expected one of {', '.join(PROTOCOLS)}")
    if split not in SPLIT_MODES:
        raise ConfigError(f"split '{split}' is unknown, expected one of {', '.join(SPLIT_MODES)}")
    if history not in HISTORIES:
        raise ConfigError(f"history '{history}' is unknown, expected one of {', '.join(HISTORIES)}")
    if max_len < 1 or negatives < 1 or holdout < 1:
        raise ConfigError(f"max_len={max_len}, negatives={negatives}, holdout={holdout}: expected positive integers")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out}: already exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    t0 = time.perf_counter()
    enc = resolve_encoder(encoder, seed=seed)

    events = reindexed_events(raw.ratings)  # rules 1, 2
    split_id = split_ids(events, split, holdout)  # rule 4
    train = split_id == 0
    likes_level, views_level, seen = item_levels(events, train)  # rule 6
    titles, genres = item_texts(raw, events.item_movies)
    train_end_user = np.full(events.n_users + 1, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(train_end_user, events.user[train], events.ts[train])
    train_end_global = int(events.ts[train].max()) if train.any() else None
    tags, vocab = _item_tags(raw, events.item_movies, genres, events.user_raw, train_end_user, train_end_global,
                             seen, split)  # rule 7  # fmt: skip
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    emb = item_vectors(titles, genres, enc, cache)  # rule 8
    k = negatives if protocol == "sampled" else 0
    neg = sampled_negatives(events, k, seed) if k else None  # rule 5
    hist_index = history_index(events, history_eligible(events, protocol, history))  # rule 3

    meta = {
        "format": "MicroLens_1M_MMCTR", "version": FORMAT_VERSION, "source": source, "layout": raw.layout,
        "protocol": protocol, "split": split, "holdout": holdout if split == "per_user" else None,
        "history": history, "encoder_requested": encoder, "encoder": enc.name, "seed": seed, "max_len": max_len,
        "negatives": k,
        "counts": {
            "users": events.n_users, "items": events.n_items, "ratings": int(events.item.size), "tag_vocab": len(vocab),
            "rows": {}, "positive_rate": {}, "items_in_train": int(seen.sum()),
            "users_scored": int(np.unique(events.user[split_id > 0]).size),
        },
        "seconds": 0.0,
        "tag_vocab": vocab,
    }  # fmt: skip
    write_dataset(out, events, split_id, neg, hist_index, likes_level, views_level, tags, emb, max_len, meta,
                  t0)  # rule 9  # fmt: skip
    return meta


def convert_movielens(src: Path | str, out: Path | str, protocol: str = "sampled", split: str = "per_user",
                      holdout: int = 1, history: str = "positives", encoder: str = "auto", seed: int = 20242025,
                      max_len: int = 64, negatives: int = 3,
                      cache_dir: Path | str | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Read the release at `src` and write the MMCTR layout to `out`; returns meta.json's content."""
    raw = load_movielens(src)
    return convert(raw, out, protocol=protocol, split=split, holdout=holdout, history=history, encoder=encoder,
                   seed=seed, max_len=max_len, negatives=negatives, cache_dir=cache_dir, overwrite=overwrite,
                   source=str(src))  # fmt: skip
