"""Read any MovieLens release, a zip or an extracted folder, into canonical polars frames.

The files may sit at the top level or under one top-level folder. Detected layouts:
- ``csv``  (ml-latest-small, ml-latest, ml-25m, ml-32m): ratings.csv, movies.csv, optional tags.csv (UTF-8).
- ``100k`` (ml-100k): u.data (tab separated: user item rating timestamp), u.item (pipe separated, latin-1,
  19 genre flags; genre names from u.genre when present).
- ``dat``  (ml-1m, ml-10m): ratings.dat, movies.dat, optional tags.dat ('::' separated; UTF-8, else latin-1).
Every problem is a DataValidationError naming the file (and the column or line).
"""

from __future__ import annotations

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from qin_lightning.errors import DataValidationError
from qin_lightning.machine import cpu_available

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
# inflated / compressed size of a zip member: the releases measure <= 4.96 (ml-100k u.item; ml-latest-small
# ratings.csv 3.63); a 2 MB zip inflating to 1 GB (ratio 500) is refused before it is read
MAX_COMPRESSION_RATIO = 20
MAX_FOLDER_ENTRIES = 1_000  # entries listed per folder level of a release folder (a release has about 6)
MAX_TEXT_CHARS = 1_000  # a title, genre list or tag (the releases' longest title: 180 characters)


# ---- reading a release ---------------------------------------------------------------------------------
class _Release:
    """Files of a release, from a zip or a folder, at the top level or under one top-level folder."""

    def __init__(self, src: Path) -> None:
        self.src = src
        self._zip: zipfile.ZipFile | None = None
        self._files: dict[str, str] = {}  # basename -> member name / path
        self._extent: dict[int, int] = {}  # zip member's header offset -> bytes it really occupies in the file
        if src.is_file():
            try:
                self._zip = zipfile.ZipFile(src)
            except zipfile.BadZipFile:
                raise DataValidationError(f"{src}: not a zip archive, expected a MovieLens zip or folder") from None
            names = [n for n in self._zip.namelist() if not n.endswith("/") and not _ignored(n)]
            repeated = sorted({n for n in names if names.count(n) > 1}) if len(set(names)) != len(names) else []
            if repeated:
                raise DataValidationError(f"{src}: {repeated[0]}: appears {names.count(repeated[0])} times in the zip, "
                                          "expected each member once")
            self._extent = member_extents(self._zip, src.stat().st_size)
            self._files = _pick_level([(n.split("/"), n) for n in names], src)
        elif src.is_dir():
            self._files = _pick_level([(list(parts), path) for parts, path in _two_levels(src)], src)
        else:
            raise DataValidationError(f"{src}: no such file or folder, expected a MovieLens zip or folder")

    def has(self, name: str) -> bool:
        return name in self._files

    def read(self, name: str) -> bytes:
        """The bytes of one file; a zip member is checked by its declared sizes before it is inflated, and by
        the bytes it actually inflates to (`check_member`)."""
        if name not in self._files:
            raise DataValidationError(f"{self.src}: missing {name}")
        if self._zip is not None:
            info = self._zip.getinfo(self._files[name])
            check_member(self.src, info, self._extent.get(info.header_offset, 0))
            try:
                with self._zip.open(info) as member:
                    data = member.read(info.file_size + 1)  # zipfile stops at the declared size
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as err:
                raise DataValidationError(f"{self.src}: {info.filename}: corrupt zip member ({err})") from None
            if len(data) != info.file_size:
                raise DataValidationError(f"{self.src}: {info.filename}: expected {info.file_size:,} bytes (its "
                                          f"declared size), got {len(data):,}")
            return data
        path = Path(self._files[name])
        _check_size(self.src, path.name, path.stat().st_size)
        return path.read_bytes()

    def names(self) -> list[str]:
        return sorted(self._files)


def member_extents(archive: zipfile.ZipFile, file_size: int) -> dict[int, int]:
    """Bytes each member really occupies in the zip file (header offset -> bytes up to the next member's header
    or the central directory): its compressed data can be no larger, whatever its header declares."""
    starts = sorted({info.header_offset for info in archive.infolist()})
    end = min(getattr(archive, "start_dir", file_size), file_size)
    limits = starts[1:] + [end]
    return {start: max(0, min(limit, file_size) - start) for start, limit in zip(starts, limits)}


def check_member(src: Path, info: zipfile.ZipInfo, extent: int | None = None) -> None:
    """A zip member's sizes before it is inflated: a compression ratio above MAX_COMPRESSION_RATIO (no MovieLens
    release comes near it: a zip bomb does), measured against the bytes the member really occupies in the file
    (`extent`, `member_extents`) and not only its declared compressed size, or more bytes than the memory
    available are refused."""
    compressed = info.compress_size if extent is None else min(info.compress_size, extent)
    ratio = info.file_size / max(compressed, 1)
    if ratio > MAX_COMPRESSION_RATIO:
        raise DataValidationError(
            f"{src}: {info.filename}: expected a compression ratio of at most {MAX_COMPRESSION_RATIO} (MovieLens "
            f"releases: <= 5), got {ratio:,.0f} ({compressed:,} compressed bytes in the file for "
            f"{info.file_size:,} declared)"
        )
    _check_size(src, info.filename, info.file_size)


def _two_levels(src: Path) -> list[tuple[tuple[str, ...], str]]:
    """Files of a release folder at depth 1 and 2 only (a release never nests deeper), listed without walking
    further, following no link out and skipping what cannot be read: src=/ lists two levels, not the disk."""
    found: list[tuple[tuple[str, ...], str]] = []
    try:
        top = sorted(src.iterdir())[:MAX_FOLDER_ENTRIES]
    except OSError as err:
        raise DataValidationError(f"{src}: cannot list the folder ({err.strerror or err})") from None
    for entry in top:
        try:
            if _ignored(entry.name) or entry.is_symlink():
                continue
            if entry.is_file():
                found.append(((entry.name,), str(entry)))
            elif entry.is_dir():
                for inner in sorted(entry.iterdir())[:MAX_FOLDER_ENTRIES]:
                    if not _ignored(inner.name) and not inner.is_symlink() and inner.is_file():
                        found.append(((entry.name, inner.name), str(inner)))
        except OSError:  # unreadable (permissions): not part of a release
            continue
    return found


def _check_size(src: Path, name: str, size: int) -> None:
    free = cpu_available()
    if free is not None and size > free:
        raise DataValidationError(f"{src}: {name}: expected a file that fits in the {free / 2**30:,.1f} GiB of "
                                  f"memory available, got {size / 2**30:,.1f} GiB")


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
    finite = ratings["rating"].is_finite()
    if not finite.all():
        row = int(finite.not_().arg_true()[0])
        raise DataValidationError(f"{rel.src}: ratings row {row + 1}: rating {ratings['rating'][row]}, expected a "
                                  "finite number")
    for frame, column, what in ((movies, "title", "movies"), (movies, "genres", "movies"), (tags, "tag", "tags")):
        if frame is None:
            continue
        lengths = frame[column].str.len_chars().fill_null(0)
        if lengths.len() and int(lengths.max()) > MAX_TEXT_CHARS:  # type: ignore[arg-type]
            row = int(lengths.arg_max())  # type: ignore[arg-type]
            raise DataValidationError(f"{rel.src}: {what} row {row + 1}: column '{column}' has "
                                      f"{int(lengths[row]):,} characters, expected at most {MAX_TEXT_CHARS:,}")
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
