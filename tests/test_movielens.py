"""MovieLens -> MMCTR conversion: layouts, protocols, splits, histories, levels, determinism, atomicity.

Every fixture release is written by the tests themselves (tiny, in tmp_path); no data is committed.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from qin_lightning.data.movielens import convert as rules
from qin_lightning.data.movielens.convert import convert_movielens, decile_levels
from qin_lightning.data.movielens.release import ML100K_GENRES, load_movielens
from qin_lightning.data.movielens.source import MovieLensSource
from qin_lightning.data.reader import read_split, validate_dataset
from qin_lightning.data.text_embed import HashingEncoder, embed_texts, pca_reduce
from qin_lightning.errors import ConfigError, DataValidationError
from qin_lightning.prepare import main as prepare_main

REPO = Path(__file__).resolve().parents[1]
ML_SMALL = (REPO / ".." / "shared" / "data" / "ml-latest-small.zip").resolve()
ML_100K = (REPO / ".." / "shared" / "data" / "ml-100k.zip").resolve()

# ---- a tiny release, written in every layout ------------------------------------------------------------
MOVIES = [  # (raw id, title, genres)
    (10, "Toy Story (1995)", ["Animation", "Comedy"]),
    (20, "Heat (1995)", ["Action", "Crime", "Thriller"]),
    (30, "Good, the Bad and the Ugly, The (1966)", ["Western"]),
    (40, "Café au lait (1993)", ["Comedy", "Drama", "Romance"]),
    (50, "Alien (1979)", ["Horror", "Sci-Fi"]),
    (60, "Aliens (1986)", ["Action", "Horror", "Sci-Fi"]),
    (70, "Fargo (1996)", ["Comedy", "Crime", "Drama", "Thriller"]),
    (80, "Babe (1995)", ["Children", "Drama"]),
    (90, "Casino (1995)", ["Crime", "Drama"]),
    (100, "Sabrina (1995)", ["Comedy", "Romance"]),
    (110, "Unrated Film (2000)", ["Drama"]),  # never rated: not an item
]
# (user, movie, rating, timestamp); user 2 has a timestamp tie (broken by item index)
RATINGS = [
    (1, 10, 5, 100), (1, 20, 3, 101), (1, 30, 4, 102), (1, 40, 2, 103), (1, 50, 5, 104), (1, 60, 4, 105),
    (2, 70, 4, 200), (2, 20, 5, 200), (2, 80, 1, 201), (2, 10, 4, 202), (2, 90, 3, 203),
    (3, 30, 4, 150), (3, 60, 5, 151), (3, 100, 2, 152), (3, 10, 5, 153), (3, 50, 4, 154), (3, 70, 3, 155),
    (5, 90, 4, 50), (5, 40, 5, 51), (5, 80, 3, 52), (5, 20, 4, 53),
]  # fmt: skip
TAGS = [(1, 10, "Pixar", 100), (3, 10, "pixar ", 153), (1, 50, "scary", 104), (3, 60, "late tag", 999)]
ML100K_ORDER = list(ML100K_GENRES)


def _genres_100k(genres: list[str]) -> list[str]:
    return [g if g != "Children" else "Children's" for g in genres]


def write_release(root: Path, layout: str, ratings: list = RATINGS, tags: list = TAGS) -> None:
    """Write the tiny release into folder `root` in one of the layouts csv, 100k, 1m, 10m."""
    root.mkdir(parents=True, exist_ok=True)
    if layout == "csv":
        (root / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r}.0,{t}\n" for u, m, r, t in ratings))
        body = "".join(f'{m},"{t}",{"|".join(g)}\n' if "," in t else f"{m},{t},{'|'.join(g)}\n" for m, t, g in MOVIES)
        (root / "movies.csv").write_text("movieId,title,genres\n" + body, encoding="utf-8")
        (root / "tags.csv").write_text("userId,movieId,tag,timestamp\n" + "".join(f"{u},{m},{g},{t}\n" for u, m, g, t in tags))
    elif layout == "100k":
        (root / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in ratings))
        lines = []
        for m, t, g in MOVIES:
            flags = ["1" if name in _genres_100k(g) else "0" for name in ML100K_ORDER]
            lines.append("|".join([str(m), t, "01-Jan-1995", "", "http://x"] + flags))
        (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
        (root / "u.genre").write_text("".join(f"{name}|{i}\n" for i, name in enumerate(ML100K_ORDER)) + "\n")
    else:  # 1m / 10m: '::' separated, 1m latin-1
        (root / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in ratings))
        enc = "latin-1" if layout == "1m" else "utf-8"
        (root / "movies.dat").write_bytes("".join(f"{m}::{t}::{'|'.join(g)}\n" for m, t, g in MOVIES).encode(enc))
        if layout == "10m":
            (root / "tags.dat").write_text("".join(f"{u}::{m}::{g}::{t}\n" for u, m, g, t in tags))


def make_source(tmp: Path, layout: str, packed: str = "zip", top: bool = True, **kw: list) -> Path:
    folder = tmp / f"src-{layout}-{packed}" / ("ml-tiny" if top else "")
    write_release(folder, layout, **kw)
    if packed == "folder":
        return folder if not top else folder.parent
    archive = tmp / f"ml-tiny-{layout}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(folder.iterdir()):
            z.write(f, f"ml-tiny/{f.name}" if top else f.name)
    return archive


def convert(src: Path, out: Path, **kw: object) -> dict:
    kw.setdefault("encoder", "hashing")
    kw.setdefault("cache_dir", out.parent / "cache")
    return convert_movielens(src, out, **kw)  # type: ignore[arg-type]


def read(out: Path, split: str) -> pl.DataFrame:
    return pl.read_parquet(out / f"{split}.parquet")


# ---- layouts -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny release converted from the csv layout (protocol rating): what every layout must give."""
    tmp = tmp_path_factory.mktemp("reference")
    convert(make_source(tmp, "csv"), tmp / "out", protocol="rating")
    return tmp / "out"


@pytest.mark.parametrize("layout", ["csv", "100k", "1m", "10m"])
@pytest.mark.parametrize("packed,top", [("zip", True), ("zip", False), ("folder", True), ("folder", False)])
def test_layouts_convert_to_same_rows(tmp_path: Path, reference: Path, layout: str, packed: str, top: bool) -> None:
    src = make_source(tmp_path, layout, packed, top)
    meta = convert(src, tmp_path / "out", protocol="rating")
    assert meta["layout"] == {"csv": "csv", "100k": "100k", "1m": "dat", "10m": "dat"}[layout]
    summary = validate_dataset(tmp_path / "out", max_len=64)
    assert summary.num_items == 11  # 10 rated movies + padding
    assert summary.rows == {"train": 21 - 8, "valid": 4, "test": 4}
    # the same ratings give the same rows whatever the layout
    for split in ("train", "valid", "test"):
        assert read(tmp_path / "out", split).equals(read(reference, split))
    titles = load_movielens(src).movies.filter(pl.col("movie") == 40)["title"].to_list()
    assert titles == ["Café au lait (1993)"]  # latin-1 decoded in 100k / 1m
    genres = load_movielens(src).movies.filter(pl.col("movie") == 70)["genres"].to_list()[0]
    assert sorted(genres) == ["Comedy", "Crime", "Drama", "Thriller"]


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="no such file"):
        load_movielens(tmp_path / "missing.zip")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    with pytest.raises(DataValidationError, match="unknown MovieLens layout"):
        load_movielens(tmp_path / "empty")
    (tmp_path / "nomovies").mkdir()
    (tmp_path / "nomovies" / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,3,4\n")
    with pytest.raises(DataValidationError, match="missing movies.csv"):
        load_movielens(tmp_path / "nomovies")
    (tmp_path / "badcol").mkdir()
    (tmp_path / "badcol" / "ratings.csv").write_text("user,movieId,rating,timestamp\n1,2,3,4\n")
    (tmp_path / "badcol" / "movies.csv").write_text("movieId,title,genres\n2,x,Drama\n")
    with pytest.raises(DataValidationError, match="ratings.csv: missing column 'userId'"):
        load_movielens(tmp_path / "badcol")
    (tmp_path / "notzip.zip").write_text("nope")
    with pytest.raises(DataValidationError, match="not a zip"):
        load_movielens(tmp_path / "notzip.zip")


def test_cli_error_and_success(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert prepare_main(["movielens", "--src", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    src = make_source(tmp_path, "csv")
    args = ["movielens", "--src", str(src), "--out", str(tmp_path / "o"), "--encoder", "hashing",
            "--cache-dir", str(tmp_path / "c"), "--max-len", "8"]  # fmt: skip
    assert prepare_main(args) == 0
    assert "wrote" in capsys.readouterr().out
    assert prepare_main(args) == 2  # refuses a non-empty --out
    assert "already exists" in capsys.readouterr().err
    assert prepare_main(args + ["--overwrite", "--protocol", "rating"]) == 0
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["protocol"] == "rating"


# ---- label protocols -----------------------------------------------------------------------------------
def test_sampled_protocol(tmp_path: Path) -> None:
    many = [(10 * i, f"Movie {i} (2000)", ["Drama"]) for i in range(1, 41)]
    folder = tmp_path / "big"
    ratings = [(u, 10 * ((u * 7 + j * 3) % 40 + 1), 1 + (u + j) % 5, 1000 * u + j) for u in range(1, 9) for j in range(6)]
    ratings = list({(u, m): (u, m, r, t) for u, m, r, t in ratings}.values())
    folder.mkdir()
    (folder / "ratings.csv").write_text("userId,movieId,rating,timestamp\n" + "".join(f"{u},{m},{r},{t}\n" for u, m, r, t in ratings))
    (folder / "movies.csv").write_text("movieId,title,genres\n" + "".join(f"{m},{t},{g[0]}\n" for m, t, g in many))
    meta = convert(folder, tmp_path / "out", negatives=3, seed=7)
    rated = {(u, m) for u, m, _, _ in ratings}
    raw_items = np.unique([m for _, m, _, _ in ratings])
    for split in ("train", "valid", "test"):
        df = read(tmp_path / "out", split)
        assert df["label"].mean() == pytest.approx(0.25)
        assert meta["counts"]["positive_rate"][split] == pytest.approx(0.25)
        labels = df["label"].to_numpy().reshape(-1, 4)
        assert (labels == np.array([1, 0, 0, 0])).all()  # each positive followed by its 3 negatives
        items = df["item_id"].to_numpy().reshape(-1, 4)
        users = df["user_id"].to_numpy().reshape(-1, 4)
        seqs = np.stack(df["item_seq"].to_numpy()).reshape(-1, 4, 64)
        assert (users == users[:, :1]).all() and (seqs == seqs[:, :1]).all()  # shared context
        assert all(len(set(row)) == 4 for row in items)  # distinct negatives
        user_raw = np.unique([u for u, _, _, _ in ratings])
        for u, row in zip(users[:, 0], items):
            assert (user_raw[u - 1], raw_items[row[0] - 1]) in rated
            assert all((user_raw[u - 1], raw_items[i - 1]) not in rated for i in row[1:])
    # a different seed gives other negatives, the same positives
    convert(folder, tmp_path / "out2", negatives=3, seed=8)
    a, b = read(tmp_path / "out", "train"), read(tmp_path / "out2", "train")
    assert a.filter(pl.col("label") == 1).equals(b.filter(pl.col("label") == 1))
    assert not a.equals(b)


def test_rating_protocol(tmp_path: Path) -> None:
    src = make_source(tmp_path, "csv")
    meta = convert(src, tmp_path / "out", protocol="rating")
    total = sum(meta["counts"]["rows"].values())
    assert total == len(RATINGS) and meta["negatives"] == 0
    test = read(tmp_path / "out", "test")
    # user 1's last rating: movie 60 (item 6) rated 4 -> 1; user 2's last: movie 90 (item 9) rated 3 -> 0
    got = dict(zip(test["user_id"].to_list(), zip(test["item_id"].to_list(), test["label"].to_list())))
    assert got[1] == (6, 1) and got[2] == (9, 0)
    labels = np.concatenate([read(tmp_path / "out", s)["label"].to_numpy() for s in ("train", "valid", "test")])
    assert labels.sum() == sum(r >= 4 for _, _, r, _ in RATINGS)


# ---- histories and splits ------------------------------------------------------------------------------
def test_history_order_padding_and_truncation(tmp_path: Path) -> None:
    src = make_source(tmp_path, "csv")
    convert(src, tmp_path / "out", protocol="rating", history="rated", max_len=4)
    rows = pl.concat([read(tmp_path / "out", s) for s in ("train", "valid", "test")])
    u1 = rows.filter(pl.col("user_id") == 1)
    # user 1 in time order: items 1..6 (movies 10..60)
    seq = {i: s for i, s in zip(u1["item_id"].to_list(), u1["item_seq"].to_list())}
    assert seq[1] == [0, 0, 0, 0]
    assert seq[2] == [0, 0, 0, 1]
    assert seq[4] == [0, 1, 2, 3]
    assert seq[6] == [2, 3, 4, 5]  # truncated to the last 4, most recent last
    # user 2: movies 20 and 70 share timestamp 200: neither is in the other's history; later rows hold both,
    # in item-index order (item 2 before item 7)
    u2 = rows.filter(pl.col("user_id") == 2)
    seq2 = {i: s for i, s in zip(u2["item_id"].to_list(), u2["item_seq"].to_list())}
    assert seq2[2] == [0, 0, 0, 0] and seq2[7] == [0, 0, 0, 0]
    assert seq2[8] == [0, 0, 2, 7] and seq2[9] == [2, 7, 8, 1]
    # history=positives (the default): only the items rated >= 4 under protocol rating; user 1 rated
    # movies 10..60 with 5, 3, 4, 2, 5, 4
    convert(src, tmp_path / "liked", protocol="rating", max_len=4)
    rows = pl.concat([read(tmp_path / "liked", s) for s in ("train", "valid", "test")])
    u1 = rows.filter(pl.col("user_id") == 1)
    seq = {i: s for i, s in zip(u1["item_id"].to_list(), u1["item_seq"].to_list())}
    assert seq[4] == [0, 0, 1, 3] and seq[6] == [0, 1, 3, 5]


def random_ratings(seed: int, users: int = 12) -> list[tuple[int, int, int, int]]:
    """(user, movie, rating, timestamp) of `users` users over MOVIES' rated ids, with many same-second ties."""
    rng = np.random.default_rng(seed)
    movies = [m for m, _, _ in MOVIES[:10]]
    out = []
    for u in range(1, users + 1):
        for m in rng.choice(movies, size=int(rng.integers(1, 10)), replace=False):  # 1..9: sampling needs unrated items
            out.append((u, int(m), int(rng.integers(1, 6)), int(1000 + rng.integers(0, 5))))
    return out


def expected_history(mine: list[tuple[int, int, int]], ts: int, eligible: str, max_len: int) -> list[int]:
    """The history rule written plainly: `mine` = (timestamp, item, rating) of one user's ratings."""
    earlier = sorted((t, i) for t, i, r in mine if t < ts and (eligible == "rated" or r >= 4))
    items = [i for _, i in earlier][-max_len:]
    return [0] * (max_len - len(items)) + items


@pytest.mark.parametrize("protocol,history", [("rating", "positives"), ("rating", "rated"), ("sampled", "positives")])
def test_history_holds_only_items_from_before_the_row(tmp_path: Path, protocol: str, history: str) -> None:
    """No history ever holds an item rated at or after its row's timestamp (same-second ties included), nor a
    liked-only history a disliked item: every row's history equals the rule computed plainly."""
    ratings = random_ratings(seed=3)
    src = make_source(tmp_path, "csv", ratings=ratings, tags=[])
    convert(src, tmp_path / "out", protocol=protocol, history=history, holdout=2, max_len=5)
    movies = sorted({m for _, m, _, _ in ratings})
    users = sorted({u for u, _, _, _ in ratings})
    per_user: dict[int, list[tuple[int, int, int]]] = {}
    for u, m, r, t in ratings:
        per_user.setdefault(users.index(u) + 1, []).append((t, movies.index(m) + 1, r))
    eligible = "rated" if protocol == "sampled" else history
    checked = ties = 0
    for split in ("train", "valid", "test"):
        df = read(tmp_path / "out", split).filter(pl.col("label") == 1) if protocol == "sampled" else read(tmp_path / "out", split)
        for u, i, seq in zip(df["user_id"].to_list(), df["item_id"].to_list(), df["item_seq"].to_list()):
            ts = next(t for t, item, _ in per_user[u] if item == i)
            assert seq == expected_history(per_user[u], ts, eligible, 5), (split, u, i)
            ties += sum(t == ts for t, item, _ in per_user[u] if item != i)
            checked += 1
    assert checked == len(ratings) and ties > 20  # every rating checked; the file has many same-second ties


def test_per_user_holdout_split(tmp_path: Path) -> None:
    """holdout k: a user's last k ratings (timestamp, then item index) -> test, the k before -> valid, the rest
    -> train; a user with at most 2k ratings -> train whole."""
    ratings = random_ratings(seed=5, users=30)
    src = make_source(tmp_path, "csv", ratings=ratings, tags=[])
    meta = convert(src, tmp_path / "out", protocol="rating", holdout=2)
    movies = sorted({m for _, m, _, _ in ratings})
    users = sorted({u for u, _, _, _ in ratings})
    order: dict[int, list[tuple[int, int]]] = {}
    for u, m, _, t in ratings:
        order.setdefault(users.index(u) + 1, []).append((t, movies.index(m) + 1))
    got = {s: {} for s in ("train", "valid", "test")}
    for s in got:
        df = read(tmp_path / "out", s)
        for u, i in zip(df["user_id"].to_list(), df["item_id"].to_list()):
            got[s].setdefault(u, set()).add(i)
    scored = 0
    for u, mine in order.items():
        items = [i for _, i in sorted(mine)]
        if len(items) <= 4:
            assert u not in got["valid"] and u not in got["test"] and got["train"][u] == set(items)
            continue
        scored += 1
        assert got["test"][u] == set(items[-2:]) and got["valid"][u] == set(items[-4:-2])
        assert got["train"][u] == set(items[:-4])
    assert 0 < scored < len(order)  # both kinds of user occur
    assert meta["holdout"] == 2 and meta["counts"]["users_scored"] == scored
    assert meta["counts"]["rows"]["test"] == meta["counts"]["rows"]["valid"] == 2 * scored
    with pytest.raises(ConfigError, match=r"holdout=0: expected positive integers"):
        convert(src, tmp_path / "k0", protocol="rating", holdout=0)
    with pytest.raises(ConfigError, match=r"history 'liked' is unknown, expected one of positives, rated"):
        convert(src, tmp_path / "bad", protocol="rating", history="liked")


def test_per_user_split(tmp_path: Path) -> None:
    src = make_source(tmp_path, "csv")
    convert(src, tmp_path / "out", protocol="rating")
    valid, test = read(tmp_path / "out", "valid"), read(tmp_path / "out", "test")
    last = {1: 6, 2: 9, 3: 7, 4: 2}  # user index -> item index of the last rating
    second = {1: 5, 2: 1, 3: 5, 4: 8}
    assert dict(zip(test["user_id"].to_list(), test["item_id"].to_list())) == last
    assert dict(zip(valid["user_id"].to_list(), valid["item_id"].to_list())) == second
    # the test history holds the valid interaction (all earlier interactions)
    assert test.filter(pl.col("user_id") == 1)["item_seq"].to_list()[0][-1] == 5


def test_global_time_split(tmp_path: Path) -> None:
    src = make_source(tmp_path, "csv")
    meta = convert(src, tmp_path / "out", protocol="rating", split="global_time")
    rows = meta["counts"]["rows"]
    n = len(RATINGS)
    assert rows == {"train": int(0.8 * n), "valid": int(0.9 * n) - int(0.8 * n), "test": n - int(0.9 * n)}
    ts = {(u, m): t for u, m, _, t in RATINGS}
    items = sorted({m for _, m, _, _ in RATINGS})
    users = sorted({u for u, _, _, _ in RATINGS})

    def times(split: str) -> list[int]:
        df = read(tmp_path / "out", split)
        return [ts[(users[u - 1], items[i - 1])] for u, i in zip(df["user_id"], df["item_id"])]

    assert max(times("train")) <= min(times("valid")) and max(times("valid")) <= min(times("test"))


# ---- item features: levels, tags, embeddings -----------------------------------------------------------
def test_decile_levels() -> None:
    counts = np.array([0, 5, 1, 1, 3, 0, 9, 0])
    seen = np.array([False, True, True, True, True, True, True, False])
    lv = decile_levels(counts, seen)
    assert lv[0] == 0 and lv[7] == 0  # unseen
    assert lv[5] == 1 and lv[2] == lv[3]  # smallest count -> 1, ties share a level
    assert lv[2] < lv[4] < lv[1] < lv[6] <= 10


def test_levels_and_tags_use_train_only(tmp_path: Path) -> None:
    src = make_source(tmp_path, "csv")
    convert(src, tmp_path / "a", protocol="rating")
    # change every valid / test rating (last two interactions of each user): levels and tags must not move
    last_two = set()
    for u in {r[0] for r in RATINGS}:
        mine = sorted((t, m) for uu, m, _, t in RATINGS if uu == u)
        last_two |= {(u, m) for _, m in mine[-2:]}
    changed = [(u, m, (1 if r >= 4 else 5), t) for u, m, r, t in RATINGS if (u, m) in last_two]
    changed += [r for r in RATINGS if (r[0], r[1]) not in last_two]
    src2 = make_source(tmp_path / "b", "csv", ratings=changed, tags=TAGS + [(2, 90, "test-era tag", 203)])
    convert(src2, tmp_path / "b" / "out", protocol="rating")
    for split in ("train", "valid", "test"):
        a, b = read(tmp_path / "a", split), read(tmp_path / "b" / "out", split)
        assert a.select("likes_level", "views_level", "item_id").equals(b.select("likes_level", "views_level", "item_id"))
    ia, ib = read(tmp_path / "a", "item_info"), read(tmp_path / "b" / "out", "item_info")
    assert ia["item_tags"].equals(ib["item_tags"])
    # levels are monotone in the train rating count
    train = read(tmp_path / "a", "train")
    views = train.group_by("item_id").len()
    seen = dict(zip(views["item_id"], views["len"]))
    lv = dict(zip(train["item_id"], train["views_level"]))
    for i, n in seen.items():
        for j, m in seen.items():
            if n < m:
                assert lv[i] < lv[j]
    # an item rated only in valid/test has level 0 everywhere
    test = read(tmp_path / "a", "test")
    only_eval = set(test["item_id"].to_list()) - set(seen)
    for i in only_eval:
        assert test.filter(pl.col("item_id") == i)["views_level"].to_list() == [0]


def test_item_info_tags_and_padding(tmp_path: Path) -> None:
    src = make_source(tmp_path, "csv")
    meta = convert(src, tmp_path / "out", protocol="rating")
    info = read(tmp_path / "out", "item_info")
    assert info["item_id"].to_list() == list(range(11))
    tags = np.stack(info["item_tags"].to_numpy())
    emb = np.stack(info["item_emb_d128"].to_numpy())
    assert tags.shape == (11, 5) and emb.shape == (11, 128)
    assert not tags[0].any() and not emb[0].any()
    vocab = meta["tag_vocab"]
    assert len(vocab) == tags.max() and meta["counts"]["tag_vocab"] == len(vocab)
    names = {i + 1: t for i, t in enumerate(vocab)}
    toy = [names[t] for t in tags[1] if t]
    assert toy == ["animation", "comedy", "pixar"]  # genres then the train tag ("Pixar", "pixar " merged)
    assert "late tag" not in vocab  # applied after the tagger's training period
    assert (tags[1:] > 0).sum(axis=1).min() >= 1
    # left padding: zeros only before the first non-zero tag
    for row in tags[1:]:
        nz = np.flatnonzero(row)
        assert (nz == np.arange(5 - nz.size, 5)).all()


def test_hashing_encoder_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enc = HashingEncoder(seed=3)
    texts = ["Alien (1979). Genres: Horror, Sci-Fi", "Aliens (1986). Genres: Action, Horror, Sci-Fi", "Babe (1995). Genres: Children"]
    x = enc.encode(texts)
    assert x.shape == (3, 256) and x.dtype == np.float32
    assert np.array_equal(x, HashingEncoder(seed=3).encode(texts))
    cos = (x @ x.T) / np.outer(np.linalg.norm(x, axis=1), np.linalg.norm(x, axis=1))
    assert cos[0, 1] > cos[0, 2]  # similar titles are closer
    a = embed_texts(texts, enc, tmp_path)
    monkeypatch.setattr(enc, "encode", lambda t: (_ for _ in ()).throw(AssertionError("cache missed")))
    assert np.array_equal(embed_texts(texts, enc, tmp_path), a)
    p = pca_reduce(np.random.default_rng(0).normal(size=(50, 256)), 128)
    assert p.shape == (50, 128) and np.all(p[:, 49:] == 0)  # rank 49 after centring
    assert np.linalg.norm(p, axis=1).mean() == pytest.approx(1.0, rel=1e-5)


# ---- determinism and atomic writes ---------------------------------------------------------------------
def test_deterministic(tmp_path: Path) -> None:
    src = make_source(tmp_path, "10m")
    convert(src, tmp_path / "a", seed=5)
    convert(src, tmp_path / "b", seed=5)
    for f in ("train", "valid", "test", "item_info"):
        assert (tmp_path / "a" / f"{f}.parquet").read_bytes() == (tmp_path / "b" / f"{f}.parquet").read_bytes()
    ma, mb = (json.loads((tmp_path / d / "meta.json").read_text()) for d in ("a", "b"))
    ma.pop("seconds"), mb.pop("seconds")
    assert ma == mb and ma["encoder"].startswith("hashing")


def test_atomic_write_and_overwrite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source(tmp_path, "csv")
    out = tmp_path / "data" / "out"
    monkeypatch.setenv("QIN_CACHE_DIR", str(tmp_path / "cache"))
    real = rules._split_table
    calls = {"n": 0}

    def failing(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(rules, "_split_table", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        convert(src, out, cache_dir=None)
    assert list((tmp_path / "data").iterdir()) == []  # no half folder, no temp left behind
    monkeypatch.setattr(rules, "_split_table", real)
    convert(src, out, protocol="rating")
    with pytest.raises(ConfigError, match="already exists"):
        convert(src, out)
    convert(src, out, overwrite=True)
    assert json.loads((out / "meta.json").read_text())["protocol"] == "sampled"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cache", "out"]  # no temp / old folder
    with pytest.raises(ConfigError, match=r"protocol 'bogus' is unknown, expected one of .*sampled"):
        convert(src, tmp_path / "x", protocol="bogus")
    assert not (tmp_path / "x").exists()


def test_source_prepare_and_fingerprint(tmp_path: Path) -> None:
    src = make_source(tmp_path, "1m")
    s = MovieLensSource(src=str(src), encoder="hashing", cache_dir=str(tmp_path / "cache"))
    fp = s.fingerprint()
    assert fp == MovieLensSource(src=str(src), encoder="hashing").fingerprint() and fp.startswith("movielens-ml-tiny-1m")
    assert fp != MovieLensSource(src=str(src), encoder="hashing", seed=1).fingerprint()
    out = s.prepare(tmp_path / "root" / fp)
    assert out == tmp_path / "root" / fp and (out / "meta.json").is_file()
    mtime = (out / "train.parquet").stat().st_mtime_ns
    s.prepare(out)  # already prepared: no work
    assert (out / "train.parquet").stat().st_mtime_ns == mtime


def test_minilm_data_is_found_without_the_text_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder converted with MiniLM keeps its name (fingerprint) where sentence-transformers is missing, so
    eval / predict of such a checkpoint work; only a new conversion asks for the extra."""
    import qin_lightning.data.text_embed as te

    src = make_source(tmp_path, "1m")
    monkeypatch.setattr(te, "minilm_available", lambda: True)
    with_extra = MovieLensSource(src=str(src), encoder="minilm").fingerprint()
    auto_with_extra = MovieLensSource(src=str(src), encoder="auto").fingerprint()
    monkeypatch.setattr(te, "minilm_available", lambda: False)
    s = MovieLensSource(src=str(src), encoder="minilm")
    assert s.fingerprint() == with_extra == auto_with_extra
    assert MovieLensSource(src=str(src), encoder="auto").fingerprint() == \
        MovieLensSource(src=str(src), encoder="hashing").fingerprint() != with_extra
    with pytest.raises(ConfigError, match="needs the optional extra `text`.*data.source.encoder"):
        s.prepare(tmp_path / "root" / s.fingerprint())


# ---- the real ml-latest-small --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One text-embedding cache for the real-release tests of this module (the hashing encoder's ~10 s once)."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.mark.skipif(not ML_SMALL.is_file(), reason=f"{ML_SMALL} not present (MovieLens ml-latest-small zip)")
def test_ml_latest_small(tmp_path: Path, real_cache: Path) -> None:
    t0 = time.perf_counter()
    meta = convert(ML_SMALL, tmp_path / "ml", encoder="hashing", cache_dir=real_cache)
    assert time.perf_counter() - t0 < 60
    summary = validate_dataset(tmp_path / "ml", max_len=64)
    c = meta["counts"]
    assert c["users"] == 610 and c["items"] == 9724 and c["ratings"] == 100_836
    assert summary.num_items == 9725 and summary.rows["valid"] == summary.rows["test"] == 4 * 610
    assert sum(summary.rows.values()) == 4 * 100_836
    assert 500 < c["tag_vocab"] == summary.num_tags - 1


def test_converting_at_a_shorter_max_len_loads_the_same_histories(tmp_path: Path) -> None:
    """data.source.max_len follows data.max_len: converting at 3 reads exactly as converting at 64, truncated to 3."""
    src = make_source(tmp_path, "csv")
    convert_movielens(src, tmp_path / "wide", encoder="hashing", cache_dir=None)
    convert_movielens(src, tmp_path / "short", encoder="hashing", cache_dir=None, max_len=3)
    for split in ("train", "valid", "test"):
        wide = read_split(tmp_path / "wide", split, num_items=11, max_len=3)
        short = read_split(tmp_path / "short", split, num_items=11, max_len=3)
        assert wide.history_len == 64 and short.history_len == 3
        for name in ("user_id", "item_seq", "item_id", "likes_level", "views_level", "label"):
            assert np.array_equal(getattr(wide, name), getattr(short, name)), (split, name)


# (release, users, test rows, ratings in the same second as the user's previous one) under the rating plans'
# settings: every user of both releases has at least 20 ratings, so holdout 9 (2 x 9 + 1 <= 20) scores every
# user on 9 test and 9 validation ratings
RATING_PLAN = {"ml-latest-small": (ML_SMALL, 610, 5_490, 15_790), "ml-100k": (ML_100K, 943, 8_487, 50_561)}
POSITIVE_RATES = {"ml-latest-small": (0.473, 0.547, 0.558), "ml-100k": (0.557, 0.534, 0.540)}  # experiments/movielens


@pytest.mark.parametrize("release", sorted(RATING_PLAN))
def test_rating_protocol_on_the_real_releases(tmp_path: Path, real_cache: Path, release: str) -> None:
    """The plans' protocol (rating labels, holdout 9, liked-only histories) on the real zips, read in place:
    enough test rows from enough users, none dominating; every history strictly before its row."""
    src, n_users, n_test, n_same_second = RATING_PLAN[release]
    if not src.is_file():
        pytest.skip(f"{src} not present (MovieLens {release} zip)")
    meta = convert(src, tmp_path / "ml", protocol="rating", holdout=9, max_len=20, cache_dir=real_cache)
    rows = {s: read(tmp_path / "ml", s) for s in ("train", "valid", "test")}
    test_users = rows["test"]["user_id"].value_counts()["count"].to_numpy()
    assert meta["counts"]["users"] == meta["counts"]["users_scored"] == test_users.size == n_users
    assert rows["test"].height == rows["valid"].height == n_test and n_test >= 5_000 and n_users >= 500
    assert test_users.max() / n_test <= 0.02  # 9 rows each: 0.16% (ml-latest-small), 0.11% (ml-100k)
    assert sum(r.height for r in rows.values()) == meta["counts"]["ratings"]
    assert tuple(round(rows[s]["label"].mean(), 3) for s in ("train", "valid", "test")) == POSITIVE_RATES[release]
    # each rating's (user, item) -> timestamp, rating from the release itself (latest rating of a repeated pair)
    raw = load_movielens(src).ratings.sort("ts").unique(["user", "movie"], keep="last")
    movies, users = np.unique(raw["movie"].to_numpy()), np.unique(raw["user"].to_numpy())
    keys = (np.searchsorted(users, raw["user"].to_numpy()) + 1) * (movies.size + 1) + np.searchsorted(movies, raw["movie"].to_numpy()) + 1
    by_time = raw.sort(["user", "ts"])
    same_second = (by_time["user"].diff() == 0) & (by_time["ts"].diff() == 0)
    assert same_second.sum() == n_same_second  # why a history must stop before the row's second, not its rank
    order = np.argsort(keys)
    keys, ts, rating = keys[order], raw["ts"].to_numpy()[order], raw["rating"].to_numpy()[order]

    def lookup(user: np.ndarray, item: np.ndarray, values: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(keys, user * (movies.size + 1) + item)
        assert (keys[pos] == user * (movies.size + 1) + item).all()
        return values[pos]

    latest = {}
    for split, df in rows.items():
        user, item = df["user_id"].to_numpy(), df["item_id"].to_numpy()
        seq = np.stack(df["item_seq"].to_numpy())  # (rows, 20)
        row_ts = lookup(user, item, ts)
        has = seq > 0
        hist_user = np.broadcast_to(user[:, None], seq.shape)[has]
        assert (lookup(hist_user, seq[has], ts) < np.broadcast_to(row_ts[:, None], seq.shape)[has]).all(), split
        assert (lookup(hist_user, seq[has], rating) >= 4).all()  # history=positives: the liked items only
        assert (seq[:, 1:] >= (seq[:, :-1] > 0)).all()  # left padding: no hole after the first item
        latest[split] = pl.DataFrame({"user": user, "ts": row_ts}).group_by("user").agg(
            pl.col("ts").min().alias("first"), pl.col("ts").max().alias("last"))
    # per-user time order: train before valid before test (same-second ties may straddle a boundary)
    joined = latest["train"].join(latest["valid"], on="user", suffix="_valid").join(latest["test"], on="user", suffix="_test")
    assert joined.height == n_users
    assert (joined["last"] <= joined["first_valid"]).all() and (joined["last_valid"] <= joined["first_test"]).all()
