"""`data=movielens` end to end: the config's source node, prepare-on-first-use, clear errors, and a real
conversion + training run on ../shared/data/ml-latest-small.zip when that archive is present."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT, compose_train
from hydra.utils import instantiate
from test_movielens import make_source, random_ratings

from qin_lightning.data.datamodule import MMCTRDataModule
from qin_lightning.data.movielens.source import MovieLensSource
from qin_lightning.errors import ConfigError
from qin_lightning.serving.load import load_network
from qin_lightning.train import train

ML_SMALL = (REPO_ROOT / ".." / "shared" / "data" / "ml-latest-small.zip").resolve()


def movielens_overrides(tmp: Path) -> list[str]:
    """`data=movielens` at a scale of seconds: tiny QIN, short histories, a few batches, hashing text encoder."""
    return [
        "data=movielens",
        f"paths.data_dir={tmp}/data",
        f"paths.cache_dir={tmp}/cache",
        f"paths.log_dir={tmp}/logs",
        "data.source.encoder=hashing",
        "data.max_len=8",
        "data.batch_size=512",
        "data.eval_batch_size=4096",
        "model.net.embedding_dim=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=4",
        "trainer.log_every_n_steps=1",
        "trainer.accelerator=cpu",
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "threads=1",
    ]


def test_config_default_source_and_switches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QIN_MOVIELENS_SRC", raising=False)
    cfg = compose_train(["data=movielens"], tmp_path / "run")
    assert cfg.data.source._target_ == "qin_lightning.data.movielens.source.MovieLensSource"
    assert cfg.data.source.src == "../shared/data/ml-latest-small.zip" and cfg.data.source.protocol == "sampled"
    cfg = compose_train(["data=movielens", "data.source.src=/x/ml-25m.zip", "data.source.protocol=rating"], tmp_path)
    assert cfg.data.source.src == "/x/ml-25m.zip" and cfg.data.source.protocol == "rating"
    assert cfg.data.source.max_len == 64  # stated once, as data.max_len
    assert compose_train(["data=movielens", "data.max_len=20"], tmp_path).data.source.max_len == 20
    monkeypatch.setenv("QIN_MOVIELENS_SRC", "/y/ml-1m.zip")
    assert compose_train(["data=movielens"], tmp_path).data.source.src == "/y/ml-1m.zip"
    cfg = compose_train(["data=movielens", "data.source=null", f"data.root={tmp_path}/prepared"], tmp_path)
    dm = instantiate(cfg.data)
    assert dm.source is None and dm.data_dir == tmp_path / "prepared"


def test_prepares_on_first_use_into_fingerprint_folder(tmp_path: Path) -> None:
    src = make_source(tmp_path, "csv")
    overrides = movielens_overrides(tmp_path) + [f"data.source.src={src}", "data.source.protocol=rating"]
    cfg = compose_train(overrides, tmp_path)
    dm: MMCTRDataModule = instantiate(cfg.data)
    fp = MovieLensSource(src=str(src), protocol="rating", encoder="hashing", max_len=8).fingerprint()
    assert dm.data_dir == tmp_path / "data" / "movielens" / fp
    dm.prepare_data()
    dm.setup("fit")
    assert (dm.data_dir / "meta.json").is_file() and dm.num_items == 11  # 10 rated movies + padding
    assert dm.dataset("train").item_seq.shape[1] == 8  # data.max_len: converted at 8 (source.max_len follows)
    assert (tmp_path / "cache" / "embeddings").is_dir()  # text-encoder cache under paths.cache_dir
    mtime = (dm.data_dir / "train.parquet").stat().st_mtime_ns
    instantiate(cfg.data).prepare_data()  # second use: reused, not converted again
    assert (dm.data_dir / "train.parquet").stat().st_mtime_ns == mtime


def test_holdout_and_history_reach_the_conversion(tmp_path: Path) -> None:
    """data.source.holdout / history are conversion options: they reach meta.json and name a new folder."""
    src = make_source(tmp_path, "csv", ratings=random_ratings(seed=5, users=30), tags=[])
    base = movielens_overrides(tmp_path) + [f"data.source.src={src}", "data.source.protocol=rating"]
    folders = set()
    for extra in ([], ["data.source.holdout=2"], ["data.source.holdout=2", "data.source.history=rated"]):
        dm: MMCTRDataModule = instantiate(compose_train(base + extra, tmp_path).data)
        dm.prepare_data()
        meta = json.loads((dm.data_dir / "meta.json").read_text())
        assert meta["holdout"] == (2 if extra else 1)
        assert meta["history"] == ("rated" if len(extra) == 2 else "positives")
        folders.add(dm.data_dir)
    assert len(folders) == 3
    assert meta["counts"]["rows"]["test"] == 2 * meta["counts"]["users_scored"]


def test_missing_source_is_a_clear_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ml-25m.zip"
    cfg = compose_train(movielens_overrides(tmp_path) + [f"data.source.src={missing}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"data\.source\.src=.*ml-25m\.zip: no such file or folder, .*grouplens"):
        train(cfg)
    relative = compose_train(movielens_overrides(tmp_path) + ["data.source.src=nope/ml-1m.zip"], tmp_path / "run2")
    with pytest.raises(ConfigError, match=r"data\.source\.src=nope/ml-1m\.zip: no such file or folder \(looked in "):
        train(relative)
    assert not (tmp_path / "data" / "movielens").exists() or not any((tmp_path / "data" / "movielens").iterdir())


@pytest.mark.skipif(not ML_SMALL.is_file(), reason=f"{ML_SMALL} not present (MovieLens ml-latest-small zip; "
                    "get it from https://grouplens.org/datasets/movielens/)")
def test_converts_and_trains_on_ml_latest_small(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    cfg = compose_train(movielens_overrides(tmp_path) + [f"data.source.src={ML_SMALL}"], tmp_path / "run")
    results = train(cfg)
    elapsed = time.perf_counter() - t0
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["data"] == "movielens" and on_disk["model"] == "qin"
    data_dir = Path(on_disk["data_dir"])
    assert data_dir.parent == tmp_path / "data" / "movielens" and data_dir.name.startswith("movielens-ml-latest-small-")
    meta = json.loads((data_dir / "meta.json").read_text())
    assert meta["counts"]["items"] == 9724 and meta["encoder"].startswith("hashing")
    assert math.isfinite(results["best_val_auc"]) and 0.0 <= results["best_val_auc"] <= 1.0
    assert math.isfinite(results["best_val_logloss"]) and on_disk["epochs_trained"] == 1
    assert elapsed < 60, f"convert + train took {elapsed:.0f} s, over the suite's budget"
    for ckpt in (on_disk["best_checkpoint"], tmp_path / "run" / "checkpoints" / "last.ckpt"):
        load_network(ckpt)  # MovieLens checkpoints load strictly too (weights_only=True, our classes only)
