"""Shared test set-up: one thread (2-core machine), wandb disabled, no network."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

from pathlib import Path  # noqa: E402
from typing import Iterator  # noqa: E402

import shutil  # noqa: E402

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, open_dict  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
from qin_lightning.config import CONFIG_DIR  # noqa: E402  (the configs ship inside the package)
from qin_lightning.data.datamodule import MMCTRDataModule  # noqa: E402
from qin_lightning.data.synthetic import SyntheticConfig  # noqa: E402


def tiny_datamodule(folder: Path, max_len: int) -> MMCTRDataModule:
    """The tiny synthetic dataset generated into `folder`, set up for fitting (batches of 64, eval 128)."""
    dm = MMCTRDataModule(str(folder), max_len=max_len, batch_size=64, eval_batch_size=128,
                         synthetic=SyntheticConfig.tiny())
    dm.prepare_data()
    dm.setup("fit")
    return dm


def copy_of(dataset: Path, tmp_path: Path) -> Path:
    """A private copy of a generated dataset folder (`tmp_path/data`) that a test may edit or break."""
    dst = tmp_path / "data"
    shutil.copytree(dataset, dst)
    return dst


def tiny_overrides(tmp: Path) -> list[str]:
    """Overrides that make any experiment a seconds-long CPU run on a tiny synthetic dataset."""
    return [
        f"paths.cache_dir={tmp}/cache",
        f"paths.log_dir={tmp}/logs",
        "data.synthetic.num_items=60",
        "data.synthetic.num_tags=20",
        "data.synthetic.num_users=40",
        "data.synthetic.train_rows=512",
        "data.synthetic.valid_rows=256",
        "data.synthetic.test_rows=128",
        "data.batch_size=128",
        "data.eval_batch_size=256",
        "data.max_len=8",
        "data.synthetic.max_len=8",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",  # fp32 on every CPU (the default `auto` is bf16 where the CPU has bf16 kernels)
        "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "threads=1",
    ]


def tiny_model_overrides(experiment: str | None = None) -> list[str]:
    """Small widths for QIN, DIN or the Transformer+DCN winner so a step takes milliseconds."""
    tiny = ["model.net.embedding_dim=8", "model.net.mm_projection_dim=8"]
    if experiment == "din":
        return [*tiny, "model.net.attention_units=[16,8]", "model.net.dnn_units=[32,16]"]
    if experiment == "transformer_dcn":
        return [*tiny, "model.net.feedforward_dim=16", "model.net.first_k_cols=4", "model.net.cross_rank=8",
                "model.net.dnn_units=[32,16]", "model.net.head_units=[8]"]
    return tiny


def compose_train(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml as Hydra would, with the run folder set to ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=overrides)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg["hydra"]
    return cfg


@pytest.fixture(autouse=True)
def _clear_hydra() -> Iterator[None]:
    yield
    GlobalHydra.instance().clear()
