"""MovieLensSource: a MovieLens release converted into the MMCTR layout on first use, then reused."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qin_lightning.data import layout
from qin_lightning.data.movielens.convert import FORMAT_VERSION, HISTORIES, PROTOCOLS, SPLIT_MODES, convert_movielens
from qin_lightning.data.text_embed import ENCODERS, encoder_id
from qin_lightning.errors import ConfigError


SOURCE_BOUNDS = {  # setting: (lowest, highest)
    "holdout": (1, 1_000), "seed": (0, 2**32 - 1), "negatives": (1, 1_000), "max_len": (1, 65_536),
}  # fmt: skip


@dataclass
class MovieLensSource:
    """A MovieLens release to prepare on first use (the datamodule calls `prepare(out_dir)`).

    A relative `src` resolves against the working directory only (the launch directory: Hydra does not change
    it here, hydra.job.chdir=false), never against where the package is installed.
    """

    src: str
    protocol: str = "sampled"
    split: str = "per_user"
    holdout: int = 1
    history: str = "positives"
    encoder: str = "auto"
    seed: int = 20242025
    negatives: int = 3
    max_len: int = 64
    cache_dir: str | None = field(default=None)

    def __post_init__(self) -> None:
        """Every setting in range before anything is read or converted (a stored config is bounded by this too)."""
        for key, choices in (("protocol", PROTOCOLS), ("split", SPLIT_MODES), ("history", HISTORIES),
                             ("encoder", ENCODERS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"data.source.{key}={getattr(self, key)!r}: expected one of {', '.join(choices)}")
        for key, (low, high) in SOURCE_BOUNDS.items():
            value = getattr(self, key)
            if type(value) is not int or not low <= value <= high:
                raise ConfigError(f"data.source.{key}={value!r}: expected an integer in {low:,}..{high:,}")
        if type(self.src) is not str or not self.src or (self.cache_dir is not None and type(self.cache_dir) is not str):
            raise ConfigError(f"data.source.src={self.src!r}, cache_dir={self.cache_dir!r}: expected paths")

    def resolved_src(self) -> Path:
        return Path(self.src).expanduser()

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
            where = "" if Path(self.src).expanduser().is_absolute() else f" (looked in {Path.cwd()})"
            raise ConfigError(
                f"data.source.src={self.src}: no such file or folder{where}, "
                "expected a MovieLens release zip or folder from https://grouplens.org/datasets/movielens/ "
                "(set data.source.src=PATH or QIN_MOVIELENS_SRC, or use a prepared folder: "
                "data.root=FOLDER data.source=null)"
            )
        convert_movielens(src, out_dir, protocol=self.protocol, split=self.split, holdout=self.holdout,
                          history=self.history, encoder=self.encoder, seed=self.seed, max_len=self.max_len,
                          negatives=self.negatives, cache_dir=self.cache_dir, overwrite=False)  # fmt: skip
        return out_dir
