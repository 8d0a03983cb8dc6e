"""A synthetic MMCTR dataset with a planted, learnable signal, written atomically in the MMCTR layout.

Generative story (all vectorised numpy, seeded, chunked so MicroLens scale fits in bounded memory):
- every item i >= 1 has a latent topic z_i (one of `num_topics`), a quality q_i ~ N(0, 1) and a Zipf-like
  popularity; its tags are mostly drawn from its topic's tag pool (else random) and its multimodal vector is
  its topic centroid + noise + a little quality, so item features reveal the topic even for rare items;
- a user likes a primary and a secondary topic (plus some noise); a row's history (length ~ geometric,
  mean `mean_history_len`, some empty, capped at `max_len`, left-padded) is drawn from the user's topics;
- the target is drawn from the user's topics half the time, else from the whole catalogue;
- label ~ Bernoulli(sigmoid(a * affinity + b * q_target + bias)) where affinity = fraction of the
  history in the target's topic (a history-target interaction) and the bias is calibrated to
  `positive_rate`; likes_level is a noisy view of q_target, views_level a noisy view of popularity.
So a model needs the target-history interaction *and* item features (tags / vector) to reach a high AUC.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qin_lightning.data import layout
from qin_lightning.errors import ConfigError, DataValidationError
from qin_lightning.files import FileWriteError
from qin_lightning.machine import cpu_available

GENERATOR_VERSION = 1  # bump when the generative story changes: it is part of the fingerprint
META_FILE = "synthetic.json"  # written last; its presence marks a complete dataset
CHUNK_ROWS = 131_072  # rows generated and written per row group (fixed: output does not depend on memory)
_SPLIT_STREAM = {layout.TRAIN: 1, layout.VALID: 2, layout.TEST: 3}


MAX_SIZE = 2**31 - 2  # ids are stored as int32
MAX_WEIGHT = 100.0  # |logit weight| of the planted signal (beyond it the label logits overflow float64's exp)
SIZE_BOUNDS = (  # (setting, lowest, highest): ids fit int32; widths and lengths stay far below any real use
    ("num_items", 2, MAX_SIZE), ("num_tags", 2, MAX_SIZE), ("tags_per_item", 1, 4_096), ("emb_dim", 1, 65_536),
    ("num_users", 1, MAX_SIZE), ("train_rows", 1, 2**40), ("valid_rows", 1, 2**40), ("test_rows", 1, 2**40),
    ("max_len", 1, 65_536), ("num_topics", 1, MAX_SIZE), ("seed", 0, 2**63 - 1),
)  # fmt: skip


class SyntheticConfigError(ConfigError, ValueError):
    """A SyntheticConfig setting out of range (one line)."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes and signal strengths of a synthetic dataset. `num_items` / `num_tags` include the 0 padding id."""

    num_items: int = 3_000
    num_tags: int = 300
    tags_per_item: int = 5
    emb_dim: int = 128
    num_users: int = 5_000
    train_rows: int = 30_000
    valid_rows: int = 5_000
    test_rows: int = 5_000
    max_len: int = 64
    mean_history_len: float = 8.0
    positive_rate: float = 0.25
    num_topics: int = 16
    affinity_weight: float = 5.0  # logit weight of the history-target topic affinity (0..1)
    quality_weight: float = 1.0  # logit weight of the target's latent quality (~N(0, 1))
    seed: int = 20242025
    name: str = "small"

    def __post_init__(self) -> None:
        """Every setting in range, checked before anything is generated (a stored config is bounded by this too)."""
        for key, low, high in SIZE_BOUNDS:
            value = getattr(self, key)
            if type(value) is not int or not low <= value <= high:
                raise SyntheticConfigError(f"SyntheticConfig.{key}={value!r} is out of range, expected an integer in "
                                           f"{low:,}..{high:,}")
        for key in ("mean_history_len", "positive_rate", "affinity_weight", "quality_weight"):
            value = getattr(self, key)
            if type(value) not in (int, float) or not math.isfinite(value):
                raise SyntheticConfigError(f"SyntheticConfig.{key}={value!r} is out of range, expected a finite number")
        checks = {
            "num_tags": self.num_tags >= self.num_topics + 1,
            "mean_history_len": 0 < self.mean_history_len <= MAX_SIZE,
            "positive_rate": 0.0 < self.positive_rate < 1.0,
            "affinity_weight": abs(self.affinity_weight) <= MAX_WEIGHT,
            "quality_weight": abs(self.quality_weight) <= MAX_WEIGHT,
        }
        for key, ok in checks.items():
            if not ok:
                raise SyntheticConfigError(f"SyntheticConfig.{key}={getattr(self, key)!r} is out of range")

    def fingerprint(self) -> str:
        """Stable 16-hex-digit hash of every field (and the generator version): names the data folder."""
        payload = json.dumps({"version": GENERATOR_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def prepare(self, out_dir: Path) -> Path:
        """Generate into `out_dir` unless it already holds this dataset (the datamodule's source hook)."""
        return generate(self, out_dir)

    @classmethod
    def small(cls, seed: int = 20242025) -> SyntheticConfig:
        """The default: a 2-core CPU trains QIN on it in ~2 minutes to a clearly-above-chance AUC."""
        return cls(seed=seed)

    @classmethod
    def tiny(cls, seed: int = 0) -> SyntheticConfig:
        """A few hundred rows, for unit tests."""
        return cls(
            num_items=60, num_tags=40, emb_dim=8, num_users=50, train_rows=300, valid_rows=100,
            test_rows=80, max_len=12, mean_history_len=4.0, num_topics=4, seed=seed, name="tiny",
        )

    @classmethod
    def microlens(cls, seed: int = 20242025) -> SyntheticConfig:
        """MicroLens_1M_MMCTR sizes: 3.6M train rows, 91,718 items, 11,740 tags, 64-long histories."""
        return cls(
            num_items=91_718, num_tags=11_740, num_users=1_000_000, train_rows=3_600_000, valid_rows=10_000,
            test_rows=379_142, num_topics=32, seed=seed, name="microlens",
        )


@dataclass(frozen=True)
class _World:
    """Item- and user-level latent variables shared by all splits."""

    topic: np.ndarray  # (N,) int64, item topic (item 0: -1)
    quality: np.ndarray  # (N,) float64
    pop_z: np.ndarray  # (N,) standardised log-popularity
    topic_cum: np.ndarray  # (N-1,) topic + within-topic cumulative popularity, sorted
    topic_items: np.ndarray  # (N-1,) item ids sorted by (topic, popularity order)
    user_primary: np.ndarray  # (U+1,) int64
    user_secondary: np.ndarray  # (U+1,) int64
    user_weight: np.ndarray  # (U+1,) probability of the primary topic


def _rng(config: SyntheticConfig, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([config.seed, *stream]))


def _world(config: SyntheticConfig) -> _World:
    rng = _rng(config, 0)
    n, k = config.num_items, config.num_topics
    topic = np.full(n, -1, dtype=np.int64)
    topic[1:] = rng.integers(0, k, n - 1)
    quality = np.zeros(n)
    quality[1:] = rng.standard_normal(n - 1)
    popularity = np.zeros(n)
    popularity[1:] = 1.0 / (1.0 + rng.permutation(n - 1)) ** 1.0  # Zipf: item with rank r gets 1 / r
    log_pop = np.log(popularity[1:])
    pop_z = np.zeros(n)
    pop_z[1:] = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-12)

    # Sampling an item of topic t by popularity = searchsorted on a cumulative array whose topic-t segment
    # runs over [t, t + 1): one vectorised call serves any mix of topics.
    items = np.arange(1, n)
    order = np.lexsort((items, topic[1:]))
    topic_items = items[order]
    seg_topic = topic[topic_items]
    w = popularity[topic_items]
    seg_total = np.bincount(seg_topic, weights=w, minlength=k)
    cum = np.cumsum(w)
    seg_start = np.concatenate([[0.0], np.cumsum(seg_total)[:-1]])
    topic_cum = seg_topic + (cum - seg_start[seg_topic]) / np.maximum(seg_total[seg_topic], 1e-300)

    u = config.num_users + 1
    primary = rng.integers(0, k, u)
    secondary = (primary + rng.integers(1, max(k, 2), u)) % k
    weight = rng.uniform(0.5, 0.9, u)
    return _World(topic, quality, pop_z, topic_cum, topic_items, primary, secondary, weight)


def _sample_items(world: _World, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One item per requested topic, by popularity within the topic (topics with no item fall back)."""
    pos = np.searchsorted(world.topic_cum, topics + rng.random(topics.shape[0]), side="left")
    return world.topic_items[np.minimum(pos, world.topic_items.shape[0] - 1)]


def _user_topics(world: _World, users: np.ndarray, k: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    r = rng.random(users.shape[0])
    w = world.user_weight[users] * (1 - noise)
    topics = np.where(r < w, world.user_primary[users], world.user_secondary[users])
    return np.where(r >= 1 - noise, rng.integers(0, k, users.shape[0]), topics)


def _item_table(config: SyntheticConfig, world: _World) -> pa.Table:
    rng = _rng(config, 4)
    n, t, k, d = config.num_items, config.tags_per_item, config.num_topics, config.emb_dim
    # tags: 1..t per item, left-padded; tag pool of topic j = {1 + j + k*m}; 80% from the pool, else random.
    count = 1 + rng.binomial(t - 1, 0.6, n)
    pool_size = (config.num_tags - 2 - np.arange(k) + k) // k  # tags 1..num_tags-1 with (tag-1) % k == j
    z = np.maximum(world.topic, 0)
    in_pool = 1 + z[:, None] + k * (rng.random((n, t)) * pool_size[z][:, None]).astype(np.int64)
    random_tag = rng.integers(1, config.num_tags, (n, t))
    tags = np.where(rng.random((n, t)) < 0.8, in_pool, random_tag)
    tags[np.arange(t)[None, :] < (t - count)[:, None]] = 0
    tags[0] = 0
    # multimodal vector: topic centroid (norm ~1) + noise (norm ~1) + quality along a fixed direction.
    centroids = rng.standard_normal((k, d)) / np.sqrt(d)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    vec = centroids[z] + rng.standard_normal((n, d)) / np.sqrt(d) + 0.3 * world.quality[:, None] * direction
    vec[0] = 0.0
    return layout.item_info_table(tags, vec.astype(np.float32))


def _rows(config: SyntheticConfig, world: _World, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Latent row draws: histories, target, levels and the label logit without its bias."""
    k, max_len = config.num_topics, config.max_len
    users = rng.integers(1, config.num_users + 1, rows)
    length = np.minimum(rng.geometric(1.0 / (config.mean_history_len + 1.0), rows) - 1, max_len)
    owner = np.repeat(np.arange(rows), length)  # row of each history position, row-major
    hist_topic = _user_topics(world, users[owner], k, rng, noise=0.1)
    hist_items = _sample_items(world, hist_topic, rng)
    seq = np.zeros((rows, max_len), dtype=np.int64)
    seq[np.arange(max_len)[None, :] >= (max_len - length)[:, None]] = hist_items  # left padding

    in_interest = rng.random(rows) < 0.5
    target_topic = np.where(in_interest, _user_topics(world, users, k, rng, noise=0.0), rng.integers(0, k, rows))
    target = _sample_items(world, target_topic, rng)
    same = world.topic[hist_items] == world.topic[target][owner]
    affinity = np.bincount(owner, weights=same, minlength=rows) / np.maximum(length, 1)
    q = world.quality[target]
    likes = np.clip(np.rint(5.0 + 1.5 * q + 1.5 * rng.standard_normal(rows)), 0, layout.NUM_LEVELS - 1)
    views = np.clip(np.rint(4.0 + 1.5 * world.pop_z[target] + 0.5 * q + 1.5 * rng.standard_normal(rows)), 0, 10)
    logit = config.affinity_weight * affinity + config.quality_weight * q
    return {
        layout.USER_ID: users.astype(np.int64),
        layout.ITEM_SEQ: seq,
        layout.LIKES_LEVEL: likes.astype(np.int64),
        layout.VIEWS_LEVEL: views.astype(np.int64),
        layout.ITEM_ID: target.astype(np.int64),
        "logit": logit,
    }


def _calibrate_bias(config: SyntheticConfig, world: _World) -> float:
    """Bias b with mean(sigmoid(logit + b)) = positive_rate on a pilot sample (bisection)."""
    logit = _rows(config, world, 100_000, _rng(config, 5))["logit"]
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if np.mean(1.0 / (1.0 + np.exp(-(logit + mid)))) < config.positive_rate:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def oracle_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """AUC of the true click probabilities (Mann-Whitney; the ceiling no model can beat on this data)."""
    ranks = np.empty(probs.shape[0], dtype=np.float64)
    ranks[np.argsort(probs, kind="stable")] = np.arange(1, probs.shape[0] + 1)
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _split_chunks(
    config: SyntheticConfig, world: _World, split: str, rows: int, bias: float, truth: list[tuple[np.ndarray, np.ndarray]]
) -> Iterator[pa.Table]:
    """The split's row groups; appends (true probability, label) of every row to `truth`."""
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        rng = _rng(config, _SPLIT_STREAM[split], index)
        r = _rows(config, world, min(CHUNK_ROWS, rows - start), rng)
        p = 1.0 / (1.0 + np.exp(-(r.pop("logit") + bias)))
        label = (rng.random(p.shape[0]) < p).astype(np.int64)
        truth.append((p.astype(np.float32), label.astype(np.int8)))
        yield layout.split_table(
            r[layout.USER_ID], r[layout.ITEM_SEQ], r[layout.LIKES_LEVEL], r[layout.VIEWS_LEVEL], r[layout.ITEM_ID], label
        )


def _write_table_chunks(path: Path, chunks: Iterator[pa.Table]) -> None:
    writer: pq.ParquetWriter | None = None
    try:
        for table in chunks:
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=CHUNK_ROWS)
    finally:
        if writer is not None:
            writer.close()


def _is_complete(out_dir: Path, config: SyntheticConfig) -> bool:
    meta = out_dir / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("fingerprint") == config.fingerprint()
    except (OSError, ValueError):
        return False


def _write_all(config: SyntheticConfig, tmp: Path) -> None:
    world = _world(config)
    bias = _calibrate_bias(config, world)
    pq.write_table(_item_table(config, world), tmp / layout.ITEM_INFO_FILE, compression="zstd")
    sizes = {layout.TRAIN: config.train_rows, layout.VALID: config.valid_rows, layout.TEST: config.test_rows}
    oracle: dict[str, float] = {}
    for split, rows in sizes.items():
        truth: list[tuple[np.ndarray, np.ndarray]] = []
        _write_table_chunks(tmp / layout.FILE_NAMES[split], _split_chunks(config, world, split, rows, bias, truth))
        oracle[split] = round(oracle_auc(np.concatenate([t[0] for t in truth]), np.concatenate([t[1] for t in truth])), 4)
    meta = {"fingerprint": config.fingerprint(), "generator_version": GENERATOR_VERSION,
            "config": dataclasses.asdict(config), "oracle_auc": oracle}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def generation_bytes(config: SyntheticConfig) -> int:
    """A lower bound of the memory generating `config` takes: its largest split's int64 histories and per-row
    columns, the float64 item vectors and their noise, the int64 tags and their draws, the topics' centroids and
    tag pools, the users' topics."""
    rows = max(config.train_rows, config.valid_rows, config.test_rows)
    items = config.num_items * (3 * config.emb_dim + 3 * config.tags_per_item + 6)
    topics = config.num_topics * (config.emb_dim + 3)
    return 8 * (rows * (config.max_len + 6) + items + topics + 3 * config.num_users)


def check_fits_in_memory(config: SyntheticConfig, where: str = "data.synthetic") -> None:
    """ConfigError (one line) when generating `config` cannot fit in the memory available, before anything is
    allocated."""
    needed, free = generation_bytes(config), cpu_available()
    if free is not None and needed > free:
        rows = config.train_rows + config.valid_rows + config.test_rows
        raise ConfigError(
            f"{where}: expected a dataset that fits in memory, got {rows:,} rows, {config.num_items:,} items and "
            f"{config.num_topics:,} topics needing at least {needed / 2**30:,.1f} GiB to generate (available: "
            f"{free / 2**30:,.1f} GiB)"
        )


def generate(config: SyntheticConfig, out_dir: Path | str) -> Path:
    """Write the dataset into `out_dir` atomically (temp folder beside it, then rename); returns `out_dir`.

    If `out_dir` already holds this config's dataset it is reused; any other existing folder is an error.
    A failure leaves neither `out_dir` nor the temp folder behind.
    """
    out_dir = Path(out_dir)
    check_fits_in_memory(config)
    if out_dir.exists():
        if _is_complete(out_dir, config):
            return out_dir
        raise DataValidationError(
            f"{out_dir}: folder exists but is not the synthetic dataset {config.fingerprint()} "
            f"(no matching {META_FILE}); remove it or choose another folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_all(config, tmp)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not _is_complete(out_dir, config):  # lost a race to an identical writer: theirs is as good
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:  # e.g. ENOSPC: nothing is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileWriteError(f"{out_dir}: cannot write the synthetic dataset ({err.strerror or err})") from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
