"""The parts of a training run built from its config: datamodule, CTRModule (checked against memory), trainer."""

from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from qin_lightning import machine
from qin_lightning.config import instantiate_reporting
from qin_lightning.errors import ConfigError, expect_int, expect_number, missing_values
from qin_lightning.models.build import build_network
from qin_lightning.training.callbacks import with_display_flags
from qin_lightning.training.checkpoint_io import SafeCheckpointIO
from qin_lightning.training.memory import check_training_memory, estimate_training_memory, trains_on_gpu
from qin_lightning.training.module import CTRModule


def check_train_config(cfg: DictConfig) -> None:
    """ConfigError (one line) for a composed training config that cannot run: a mandatory value left unset
    (``data=mmctr`` without ``data.root``), a value of the wrong type or range on the command line
    (``data.batch_size=abc``, ``data.batch_size=0``, ``model.lr=abc``, ``threads=abc``), or a GPU asked for on a
    machine without one. Runs before anything is built, so such a run leaves no run folder."""
    missing_values(cfg)
    expect_int(cfg, "seed", minimum=0)
    expect_int(cfg, "threads", nullable=True)
    for key in ("data.batch_size", "data.eval_batch_size", "data.max_len", "trainer.max_epochs"):
        expect_int(cfg, key)
    for key in ("data.num_workers", "trainer.min_epochs", "callbacks.early_stopping.patience"):
        expect_int(cfg, key, minimum=0)
    expect_number(cfg, "model.lr", inclusive=False)
    expect_number(cfg, "model.embedding_l2")
    expect_number(cfg, "trainer.gradient_clip_val", nullable=True)
    accelerator = str(cfg.trainer.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.accelerator={accelerator}: this machine has no CUDA GPU (torch.cuda.is_available()"
                          " is false); use trainer=cpu or trainer=auto")


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    """Instantiate ``cfg.data``, generate/prepare it if needed and load it (stage ``fit``)."""
    dm = instantiate_reporting(cfg.data, _convert_="object")
    dm.prepare_data()
    dm.setup("fit")
    return dm


def build_module(cfg: DictConfig, dm: pl.LightningDataModule) -> CTRModule:
    """Instantiate ``cfg.model`` (a CTRModule around ``model.net``) with the data's item tables."""
    if "net" not in cfg.model:
        raise ConfigError("config key 'model.net' is missing: a model config must define the network under 'net'")
    if cfg.get("memory_check", True):  # before anything is allocated (training.memory)
        memory = estimate_training_memory(cfg.model.net, dm.item_tags, dm.item_mm, dm.num_tags)
        check_training_memory(memory, trains_on_gpu(cfg.trainer.get("accelerator")))
    net = build_network(cfg.model.net, dm.item_tags, dm.item_mm, dm.num_tags)
    model_kwargs = {k: v for k, v in cfg.model.items() if k != "net"}
    return instantiate_reporting(OmegaConf.create(model_kwargs), net=net)


def instantiate_list(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a callbacks/logger group (entries set to null are skipped)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if entry is not None and "_target_" in entry]


def build_trainer(cfg: DictConfig, callbacks: list[Callback], loggers: list[Logger]) -> pl.Trainer:
    """``cfg.trainer`` with `callbacks`, `loggers` and strict, atomic checkpoint files (``SafeCheckpointIO``;
    ``trust_checkpoint=true`` lifts the strict reading for a checkpoint the user trusts)."""
    shown = with_display_flags(callbacks, enable_model_summary=cfg.trainer.get("enable_model_summary", True))
    trust = bool(cfg.get("trust_checkpoint", False))
    warn_slow_cpu_bf16(cfg)
    return instantiate(cfg.trainer, precision=trainer_precision(cfg), logger=loggers or False,
                       plugins=[SafeCheckpointIO(trust=trust)], **shown)


def trainer_precision(cfg: DictConfig) -> str:
    """``cfg.trainer.precision``, with ``auto`` (the default) resolved for this machine: bf16-mixed where the
    device has bf16 kernels, 32-true elsewhere (``machine.auto_precision``). Logged once when resolved."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision != "auto":
        return precision
    on_gpu = trains_on_gpu(cfg.trainer.get("accelerator"))
    resolved = machine.auto_precision(on_gpu)
    logging.getLogger("qin_lightning.train").info(
        "trainer.precision=auto: %s (%s %s bf16 kernels); trainer.precision=32-true trains in fp32", resolved,
        "this GPU" if on_gpu else "this CPU", "has" if resolved == "bf16-mixed" else "has no")
    return resolved


def warn_slow_cpu_bf16(cfg: DictConfig) -> None:
    """One warning when bf16 autocast will run on a CPU without bf16 instructions (no avx512_bf16 / AMX):
    there torch's bf16 matrix products take a slow fallback, many times slower than fp32 (the record:
    experiments/bench/bf16_cpu.json), so fp32 is the faster choice."""
    precision = str(cfg.trainer.get("precision", "32-true"))
    if precision.startswith("bf16") and not trains_on_gpu(cfg.trainer.get("accelerator")) and not machine.cpu_has_bf16():
        logging.getLogger("qin_lightning.train").warning(
            "trainer.precision=%s on a CPU without bf16 instructions (torch CPU capability %s): bf16 matrix "
            "products take a slow fallback here, much slower than fp32; use trainer.precision=32-true",
            precision, torch.backends.cpu.get_cpu_capability())
