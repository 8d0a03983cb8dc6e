"""MovieLens -> MMCTR layout (REFERENCE.md section 1): real data for QIN.

Source: a MovieLens release as a zip or an extracted folder (files at the top or under one top-level folder).
Detected layouts:
- ``csv``  (ml-latest-small, ml-latest, ml-25m, ml-32m): ratings.csv, movies.csv, optional tags.csv (UTF-8).
- ``100k`` (ml-100k): u.data (tab separated: user item rating timestamp), u.item (pipe separated, latin-1,
  19 genre flags; genre names from u.genre when present).
- ``dat``  (ml-1m, ml-10m): ratings.dat, movies.dat, optional tags.dat ('::' separated; UTF-8, else latin-1).

Conversion rules (all vectorised with polars / numpy: sorts and group offsets, no per-rating Python loop):
1. Ratings: a repeated (user, movie) pair keeps its latest rating. Items = movies with at least one rating,
   re-indexed 1..N by ascending movie id (0 = padding); users re-indexed 1..U by ascending user id.
   Row i of item_info is item i; row 0 is the padding item (all-zero tags and vector).
2. Time order: each user's ratings sorted by (timestamp, item index); ties are broken by item index.
3. History of an interaction = the user's earlier interactions (all of them, whatever their split or
   rating), most recent last, truncated to the last `max_len` and left-padded with 0 to `max_len`.
4. Split: ``per_user`` (default): a user's last interaction -> test, second-to-last -> valid, the rest ->
   train (a user with 1 rating only has a test row, with 2 a valid and a test row). ``global_time``: all
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
9. Output: train/valid/test/item_info.parquet + meta.json (source, layout, protocol, split, encoder, seed,
   counts, tag vocabulary), written into a temporary folder beside the target and renamed into place:
   a failure leaves no partial folder. A non-empty target is refused unless overwrite=True.
The result is a function of (source, protocol, split, encoder, seed, max_len, negatives) only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import uuid
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from qin_lightning.data import layout
from qin_lightning.data.text_embed import (
    default_cache_dir,
    embed_texts,
    pca_reduce,
    encoder_id,
    resolve_encoder,
)
from qin_lightning.errors import ConfigError, DataValidationError
from qin_lightning.files import FileWriteError

PROTOCOLS = ("sampled", "rating")
SPLIT_MODES = ("per_user", "global_time")
GLOBAL_FRACTIONS = (0.8, 0.1)  # train, valid (test = the rest)
TAGS_PER_ITEM = 5
MAX_GENRES_FIRST = 3
POSITIVE_RATING = 4.0
CHUNK_EVENTS = 32_768  # interactions per written chunk (bounds memory: rows x max_len ids)
FORMAT_VERSION = 1

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


# ---- reading a release ---------------------------------------------------------------------------------
class _Release:
    """Files of a release, from a zip or a folder, at the top level or under one top-level folder."""

    def __init__(self, src: Path) -> None:
        self.src = src
        self._zip: zipfile.ZipFile | None = None
        self._files: dict[str, str] = {}  # basename -> member name / path
        if src.is_file():
            try:
                self._zip = zipfile.ZipFile(src)
            except zipfile.BadZipFile:
                raise DataValidationError(f"{src}: not a zip archive, expected a MovieLens zip or folder") from None
            names = [n for n in self._zip.namelist() if not n.endswith("/") and not _ignored(n)]
            self._files = _pick_level([(n.split("/"), n) for n in names], src)
        elif src.is_dir():
            entries = [
                (p.relative_to(src).parts, str(p)) for p in src.rglob("*") if p.is_file() and not _ignored(str(p.relative_to(src)))
            ]
            self._files = _pick_level([(list(parts), path) for parts, path in entries if len(parts) <= 2], src)
        else:
            raise DataValidationError(f"{src}: no such file or folder, expected a MovieLens zip or folder")

    def has(self, name: str) -> bool:
        return name in self._files

    def read(self, name: str) -> bytes:
        if name not in self._files:
            raise DataValidationError(f"{self.src}: missing {name}")
        if self._zip is not None:
            return self._zip.read(self._files[name])
        return Path(self._files[name]).read_bytes()

    def names(self) -> list[str]:
        return sorted(self._files)


def _ignored(name: str) -> bool:
    return any(part.startswith(("__MACOSX", ".")) for part in name.split("/"))


def _pick_level(entries: list[tuple[list[str], str]], src: Path) -> dict[str, str]:
    """Files at depth 1 if any known file is there, else those under the single top-level folder."""
    top = {parts[0]: path for parts, path in entries if len(parts) == 1}
    if any(n in top for n in ("ratings.csv", "u.data", "ratings.dat")):
        return top
    folders = sorted({parts[0] for parts, _ in entries if len(parts) == 2})
    if len(folders) > 1:
        candidates = [f for f in folders if any(p[0] == f and p[1] in ("ratings.csv", "u.data", "ratings.dat") for p, _ in entries if len(p) == 2)]
        if len(candidates) != 1:
            raise DataValidationError(f"{src}: {len(folders)} top-level folders ({', '.join(folders)}), expected one MovieLens release")
        folders = candidates
    return {parts[1]: path for parts, path in entries if len(parts) == 2 and folders and parts[0] == folders[0]} or top


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _csv(data: bytes | str, name: str, columns: dict[str, pl.DataType], **kwargs: object) -> pl.DataFrame:
    """Read a CSV with polars, wrapping parser errors; checks that `columns` are present."""
    buf = io.BytesIO(data.encode("utf-8") if isinstance(data, str) else data)
    try:
        df = pl.read_csv(buf, infer_schema=False, **kwargs)  # type: ignore[arg-type]
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise DataValidationError(f"{name}: cannot parse ({str(exc).splitlines()[0][:160]})") from None
    if kwargs.get("has_header") is False:  # name columns column_1.. ourselves (polars versions differ)
        df.columns = [f"column_{i}" for i in range(1, df.width + 1)]
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataValidationError(f"{name}: missing column '{missing[0]}', expected columns {', '.join(columns)}")
    try:
        return df.select([pl.col(c).str.strip_chars().cast(t, strict=True) if t != pl.String else pl.col(c) for c, t in columns.items()])
    except pl.exceptions.PolarsError as exc:
        raise DataValidationError(f"{name}: bad value ({str(exc).splitlines()[0][:160]})") from None


def _lines(data: bytes, name: str, pattern: str, columns: dict[str, pl.DataType]) -> pl.DataFrame:
    """Parse '::'-separated lines with a regex (one capture group per column)."""
    text = _decode(data)
    df = pl.DataFrame({"line": [ln for ln in text.splitlines()]}, schema={"line": pl.String}).filter(
        pl.col("line").str.strip_chars() != ""
    )
    parts = df.select(pl.col("line").str.extract_groups(pattern).alias("g")).unnest("g")
    parts.columns = list(columns)
    bad = parts.select(pl.any_horizontal(pl.all().is_null()).arg_true()).to_series()
    if len(bad):
        row = int(bad[0])
        raise DataValidationError(f"{name}: line {row + 1} {df['line'][row][:80]!r} does not match '{pattern}'")
    return parts.select([pl.col(c).cast(t) for c, t in columns.items()])


RATING_COLS = {"user": pl.Int64, "movie": pl.Int64, "rating": pl.Float64, "ts": pl.Int64}
TAG_COLS = {"user": pl.Int64, "movie": pl.Int64, "tag": pl.String, "ts": pl.Int64}


@dataclass
class RawMovieLens:
    """A release in canonical frames: ratings (user, movie, rating, ts), movies (movie, title, genres), tags."""

    layout: str
    ratings: pl.DataFrame
    movies: pl.DataFrame
    tags: pl.DataFrame | None = None


def detect_layout(rel: _Release) -> str:
    if rel.has("ratings.csv"):
        return "csv"
    if rel.has("u.data"):
        return "100k"
    if rel.has("ratings.dat"):
        return "dat"
    found = ", ".join(rel.names()[:8]) or "no files"
    raise DataValidationError(
        f"{rel.src}: unknown MovieLens layout (found {found}), expected ratings.csv+movies.csv, u.data+u.item "
        "or ratings.dat+movies.dat"
    )


def load_movielens(src: Path | str) -> RawMovieLens:
    """Read a MovieLens release (zip or folder) into canonical polars frames."""
    rel = _Release(Path(src))
    layout = detect_layout(rel)
    tags = None
    if layout == "csv":
        ratings = _csv(rel.read("ratings.csv"), "ratings.csv", {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64})
        ratings.columns = list(RATING_COLS)
        movies = _csv(rel.read("movies.csv"), "movies.csv", {"movieId": pl.Int64, "title": pl.String, "genres": pl.String})
        movies = movies.rename({"movieId": "movie"})
        if rel.has("tags.csv"):
            tags = _csv(rel.read("tags.csv"), "tags.csv", {"userId": pl.Int64, "movieId": pl.Int64, "tag": pl.String, "timestamp": pl.Int64})
            tags.columns = list(TAG_COLS)
    elif layout == "100k":
        ratings = _csv(rel.read("u.data"), "u.data", {f"column_{i}": t for i, t in enumerate(RATING_COLS.values(), 1)},
                       separator="\t", has_header=False, quote_char=None)  # fmt: skip
        ratings.columns = list(RATING_COLS)
        genre_names = list(ML100K_GENRES)
        if rel.has("u.genre"):
            g = _csv(_decode(rel.read("u.genre")), "u.genre", {"column_1": pl.String, "column_2": pl.Int64},
                     separator="|", has_header=False, quote_char=None).drop_nulls()  # fmt: skip
            genre_names = [name for name, _ in sorted(zip(g["column_1"], g["column_2"]), key=lambda x: x[1])]
        cols = {"column_1": pl.Int64, "column_2": pl.String} | {f"column_{6 + i}": pl.Int64 for i in range(len(genre_names))}
        item = _csv(_decode(rel.read("u.item")), "u.item", cols, separator="|", has_header=False, quote_char=None)
        flags = [pl.when(pl.col(f"column_{6 + i}") == 1).then(pl.lit(g)) for i, g in enumerate(genre_names)]
        movies = item.select(
            pl.col("column_1").alias("movie"), pl.col("column_2").alias("title"),
            pl.concat_list(flags).list.drop_nulls().list.join("|").alias("genres"),
        )  # fmt: skip
    else:
        data = rel.read("ratings.dat").replace(b"::", b"\t")
        ratings = _csv(data, "ratings.dat", {f"column_{i}": t for i, t in enumerate(RATING_COLS.values(), 1)},
                       separator="\t", has_header=False, quote_char=None)  # fmt: skip
        ratings.columns = list(RATING_COLS)
        if not rel.has("movies.dat"):
            raise DataValidationError(f"{rel.src}: missing movies.dat (layout ml-1m/ml-10m)")
        movies = _lines(rel.read("movies.dat"), "movies.dat", r"^(\d+)::(.*)::([^:]*)$",
                        {"movie": pl.Int64, "title": pl.String, "genres": pl.String})  # fmt: skip
        if rel.has("tags.dat"):
            tags = _lines(rel.read("tags.dat"), "tags.dat", r"^(\d+)::(\d+)::(.*)::(\d+)$", TAG_COLS)
    if layout == "csv" and not rel.has("movies.csv"):
        raise DataValidationError(f"{rel.src}: missing movies.csv (layout ml-latest/ml-25m/ml-32m)")
    if layout == "100k" and not rel.has("u.item"):
        raise DataValidationError(f"{rel.src}: missing u.item (layout ml-100k)")
    if ratings.height == 0:
        raise DataValidationError(f"{rel.src}: the ratings file has no rows")
    nulls = ratings.null_count().row(0)
    if any(nulls):
        col = ratings.columns[[bool(n) for n in nulls].index(True)]
        raise DataValidationError(f"{rel.src}: ratings column '{col}' has {max(nulls)} empty values, expected numbers")
    movies = movies.with_columns(
        pl.col("title").fill_null("").str.strip_chars(),
        pl.col("genres").fill_null("").str.split("|").list.eval(
            pl.element().filter((pl.element() != "") & (pl.element() != "(no genres listed)"))
        ),
    ).unique("movie", keep="first", maintain_order=True)
    if tags is not None:
        tags = tags.with_columns(pl.col("tag").str.strip_chars().str.to_lowercase()).filter(
            pl.col("tag").is_not_null() & (pl.col("tag") != "") & pl.col("user").is_not_null() & pl.col("movie").is_not_null()
        ).with_columns(pl.col("ts").fill_null(0))
    return RawMovieLens(layout=layout, ratings=ratings, movies=movies, tags=tags)


# ---- conversion ----------------------------------------------------------------------------------------
def decile_levels(counts: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """1..10 deciles of `counts` among the `seen` items (ties share a level); 0 for unseen items."""
    levels = np.zeros(counts.shape[0], dtype=np.int8)
    vals = np.sort(counts[seen])
    if vals.size:
        smaller = np.searchsorted(vals, counts[seen], side="left")  # items with a strictly smaller count
        levels[seen] = 1 + (10 * smaller) // vals.size
    return levels


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


def _histories(items: np.ndarray, start: np.ndarray, lo: int, hi: int, max_len: int) -> np.ndarray:
    """(hi-lo, max_len) left-padded histories of events lo..hi-1 (items sorted by user, time)."""
    idx = np.arange(lo, hi)[:, None] - max_len + np.arange(max_len)[None, :]  # (m, L) earlier positions
    valid = idx >= start[lo:hi, None]
    return np.where(valid, items[np.maximum(idx, 0)], 0)


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


def convert(raw: RawMovieLens, out: Path | str, protocol: str = "sampled", split: str = "per_user",
            encoder: str = "auto", seed: int = 20242025, max_len: int = 64, negatives: int = 3,
            cache_dir: Path | str | None = None, overwrite: bool = False, source: str = "") -> dict:  # fmt: skip
    """Convert canonical frames into the MMCTR layout at `out` (atomically); returns the meta.json dict."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol '{protocol}' is unknown, expected one of {', '.join(PROTOCOLS)}")
    if split not in SPLIT_MODES:
        raise ConfigError(f"split '{split}' is unknown, expected one of {', '.join(SPLIT_MODES)}")
    if max_len < 1 or negatives < 1:
        raise ConfigError(f"max_len={max_len}, negatives={negatives}: expected positive integers")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out}: already exists and is not empty; pass --overwrite (overwrite=True) to replace it")
    t0 = time.perf_counter()
    enc = resolve_encoder(encoder, seed=seed)

    # 1. dedupe, re-index, sort by (user, time, item)  -------------------------------------------------
    r = raw.ratings.sort(["user", "movie", "ts", "rating"]).unique(["user", "movie"], keep="last", maintain_order=True)
    item_movies = np.unique(r["movie"].to_numpy())
    user_raw = np.unique(r["user"].to_numpy())
    n_items, n_users = item_movies.size, user_raw.size
    it = np.searchsorted(item_movies, r["movie"].to_numpy()) + 1
    us = np.searchsorted(user_raw, r["user"].to_numpy()) + 1
    ts = r["ts"].to_numpy()
    rating = r["rating"].to_numpy()
    order = np.lexsort((it, ts, us))
    it, us, ts, rating = it[order], us[order], ts[order], rating[order]
    n_events = it.size
    count = np.bincount(us, minlength=n_users + 1)
    first = np.concatenate([[0], np.cumsum(count)[:-1]])  # first event of each user
    start = first[us]
    pos = np.arange(n_events) - start
    last = count[us] - 1

    # 2. split ------------------------------------------------------------------------------------------
    if split == "per_user":
        split_id = np.where(pos == last, 2, np.where(pos == last - 1, 1, 0)).astype(np.int8)
    else:
        rank = np.empty(n_events, dtype=np.int64)
        rank[np.lexsort((it, us, ts))] = np.arange(n_events)
        n_train = int(np.floor(GLOBAL_FRACTIONS[0] * n_events))
        n_valid = int(np.floor((GLOBAL_FRACTIONS[0] + GLOBAL_FRACTIONS[1]) * n_events))
        split_id = np.where(rank < n_train, 0, np.where(rank < n_valid, 1, 2)).astype(np.int8)
    train = split_id == 0

    # 3. levels from train only ---------------------------------------------------------------------------
    views = np.bincount(it[train], minlength=n_items + 1)
    likes = np.bincount(it[train & (rating >= POSITIVE_RATING)], minlength=n_items + 1)
    seen = views > 0
    seen[0] = False
    views_level, likes_level = decile_levels(views, seen), decile_levels(likes, seen)

    # 4. item texts, tags, embeddings ----------------------------------------------------------------------
    mv = pl.DataFrame({"movie": item_movies}).join(raw.movies, on="movie", how="left", maintain_order="left")
    titles = [""] + mv["title"].fill_null("").to_list()
    genres = [[]] + [g if g is not None else [] for g in mv["genres"].to_list()]
    train_end_user = np.full(n_users + 1, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(train_end_user, us[train], ts[train])
    train_end_global = int(ts[train].max()) if train.any() else None
    tags, vocab = _item_tags(raw, item_movies, genres, user_raw, train_end_user, train_end_global, seen, split)
    texts = [f"{titles[i]}. Genres: {', '.join(genres[i]) if genres[i] else 'none'}" for i in range(1, n_items + 1)]
    emb = np.zeros((n_items + 1, layout.EMB_DIM), dtype=np.float32)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    emb[1:] = pca_reduce(embed_texts(texts, enc, cache), layout.EMB_DIM)

    # 5. labels / negatives -------------------------------------------------------------------------------
    k = negatives if protocol == "sampled" else 0
    neg = None
    if k:
        rated_keys = np.unique(us * (n_items + 1) + it)
        n_unrated = n_items - count
        if (n_unrated[1:] == 0).any():
            u = int(np.flatnonzero(n_unrated[1:] == 0)[0]) + 1
            raise DataValidationError(f"user {user_raw[u - 1]} rated every item: cannot sample negatives for protocol 'sampled'")
        neg = _sample_negatives(us, n_items, rated_keys, n_unrated, k, np.random.default_rng(seed))

    # 6. write atomically -------------------------------------------------------------------------------
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    rows = {s: 0 for s in layout.SPLITS}
    positives = {s: 0 for s in layout.SPLITS}
    try:
        writers = {s: pq.ParquetWriter(tmp / layout.FILE_NAMES[s], SPLIT_SCHEMA) for s in layout.SPLITS}
        try:
            for lo in range(0, n_events, CHUNK_EVENTS):
                hi = min(lo + CHUNK_EVENTS, n_events)
                hist = _histories(it, start, lo, hi, max_len)  # (m, L)
                if k:
                    assert neg is not None
                    items = np.concatenate([it[lo:hi, None], neg[lo:hi]], axis=1).reshape(-1)  # event-major
                    label = np.tile(np.r_[1, np.zeros(k, dtype=np.int64)], hi - lo)
                    rep = k + 1
                else:
                    items = it[lo:hi]
                    label = (rating[lo:hi] >= POSITIVE_RATING).astype(np.int64)
                    rep = 1
                users, sid = np.repeat(us[lo:hi], rep), np.repeat(split_id[lo:hi], rep)
                hist = np.repeat(hist, rep, axis=0)
                for s_i, s in enumerate(layout.SPLITS):
                    m = sid == s_i
                    if m.any():
                        writers[s].write_table(_split_table(users[m], hist[m], likes_level[items[m]], views_level[items[m]], items[m], label[m]))
                        rows[s] += int(m.sum())
                        positives[s] += int(label[m].sum())
        finally:
            for w in writers.values():
                w.close()
        seq_tags = pa.ListArray.from_arrays(pa.array(np.arange(0, (n_items + 2) * TAGS_PER_ITEM, TAGS_PER_ITEM, dtype=np.int32)), pa.array(tags.reshape(-1)))
        seq_emb = pa.ListArray.from_arrays(pa.array(np.arange(0, (n_items + 2) * layout.EMB_DIM, layout.EMB_DIM, dtype=np.int32)), pa.array(emb.reshape(-1)))
        pq.write_table(pa.Table.from_arrays([pa.array(np.arange(n_items + 1, dtype=np.int64)), seq_tags, seq_emb], names=list(layout.ITEM_INFO_COLUMNS)),
                       tmp / layout.ITEM_INFO_FILE)  # fmt: skip
        meta = {
            "format": "MicroLens_1M_MMCTR", "version": FORMAT_VERSION, "source": source, "layout": raw.layout,
            "protocol": protocol, "split": split, "encoder_requested": encoder, "encoder": enc.name, "seed": seed,
            "max_len": max_len, "negatives": k,
            "counts": {
                "users": int(n_users), "items": int(n_items), "ratings": int(n_events), "tag_vocab": len(vocab),
                "rows": rows, "positive_rate": {s: (positives[s] / rows[s] if rows[s] else 0.0) for s in layout.SPLITS},
                "items_in_train": int(seen.sum()),
            },
            "seconds": round(time.perf_counter() - t0, 2),
            "tag_vocab": vocab,
        }  # fmt: skip
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        _replace_dir(tmp, out)
    except OSError as err:  # e.g. ENOSPC: the previous folder (if any) is only replaced after a complete write
        shutil.rmtree(tmp, ignore_errors=True)
        kept = "the previous folder is unchanged" if out.exists() else "nothing was written"
        raise FileWriteError(f"{out}: cannot write the converted data ({err.strerror or err}); {kept}") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


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


def convert_movielens(src: Path | str, out: Path | str, protocol: str = "sampled", split: str = "per_user",
                      encoder: str = "auto", seed: int = 20242025, max_len: int = 64, negatives: int = 3,
                      cache_dir: Path | str | None = None, overwrite: bool = False) -> dict:  # fmt: skip
    """Read the release at `src` and write the MMCTR layout to `out`; returns meta.json's content."""
    raw = load_movielens(src)
    return convert(raw, out, protocol=protocol, split=split, encoder=encoder, seed=seed, max_len=max_len,
                   negatives=negatives, cache_dir=cache_dir, overwrite=overwrite, source=str(src))  # fmt: skip


# ---- datamodule hook -----------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class MovieLensSource:
    """A MovieLens release to prepare on first use (the datamodule calls `prepare(out_dir)`).

    `src` relative paths resolve against the working directory, then against the repository root.
    """

    src: str
    protocol: str = "sampled"
    split: str = "per_user"
    encoder: str = "auto"
    seed: int = 20242025
    negatives: int = 3
    max_len: int = 64
    cache_dir: str | None = field(default=None)

    def resolved_src(self) -> Path:
        p = Path(self.src).expanduser()
        if not p.exists() and not p.is_absolute() and (REPO_ROOT / p).exists():
            return REPO_ROOT / p
        return p

    def _encoder_name(self) -> str:
        return encoder_id(self.encoder, seed=self.seed)

    def fingerprint(self) -> str:
        """Folder name identifying the converted data (source name + size, options, resolved encoder)."""
        src = self.resolved_src()
        size = src.stat().st_size if src.is_file() else -1
        key = {k: v for k, v in asdict(self).items() if k not in ("src", "cache_dir", "encoder")}
        key |= {"name": src.name, "size": size, "encoder": self._encoder_name(), "version": FORMAT_VERSION}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
        stem = src.name.removesuffix(".zip")
        return f"movielens-{stem}-{self.protocol}-{self.split}-{digest}"

    def prepare(self, out_dir: Path) -> Path:
        """Convert into `out_dir` unless it already holds this conversion; returns `out_dir`."""
        out_dir = Path(out_dir)
        meta = out_dir / "meta.json"
        if meta.is_file() and all((out_dir / f).is_file() for f in layout.FILE_NAMES.values()):
            return out_dir
        src = self.resolved_src()
        if not src.exists():
            where = "" if Path(self.src).expanduser().is_absolute() else f" (looked in {Path.cwd()} and {REPO_ROOT})"
            raise ConfigError(
                f"data.source.src={self.src}: no such file or folder{where}, "
                "expected a MovieLens release zip or folder from https://grouplens.org/datasets/movielens/ "
                "(set data.source.src=PATH or QIN_MOVIELENS_SRC, or use a prepared folder: "
                "data.root=FOLDER data.source=null)"
            )
        convert_movielens(src, out_dir, protocol=self.protocol, split=self.split, encoder=self.encoder,
                          seed=self.seed, max_len=self.max_len, negatives=self.negatives,
                          cache_dir=self.cache_dir, overwrite=False)  # fmt: skip
        return out_dir
