"""Score a split with a trained model: the one scorer of eval, predict, training's test scoring and experiments/.

`load_for_inference` rebuilds the network and the data from a training checkpoint (strict, safe loading:
qin_lightning.serving.load; the stored config is plain data built by qin_lightning.serving.stored_config);
where the data lives always comes from the user (``data.root``, ``+data.source.src``, else the user's own defaults:
a checkpoint carries a model, not a place) and the scoring batch size (``data.eval_batch_size``, as in training;
the only batch size of scoring) may be overridden. The data's item tables must be the ones the model was trained
with (same rows, same values), else the ids would silently mean other items (`check_item_tables`).
`split_probabilities` gives a split's probabilities in row order, every row once, from one batching, the
DataModule's (`MMCTRDataModule.split_dataloader` / `eval_sampler`): a torch network runs in Lightning
(`torch_probabilities`: ``Trainer.predict`` of `ProbabilityModule`, fp32, quiet), as training does; an exported
model (qin_lightning.export) in onnxruntime, which no Trainer can drive, runs in this module's own loop over the
DataModule's batches (`onnx_probabilities`).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import lightning.pytorch as pl
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from qin_lightning.config import CONFIG_DIR, instantiate_reporting
from qin_lightning.data import layout, reader
from qin_lightning.data.datamodule import Batch, MMCTRDataModule
from qin_lightning.errors import ConfigError, QinError, expect_device, expect_int, missing_values
from qin_lightning.models.inference import inference_form
from qin_lightning.serving.load import TRUST_HINT, load_network
from qin_lightning.serving.runtime import feed, open_session
from qin_lightning.serving.stored_config import stored_datamodule

DATA_OVERRIDES = ("root", "eval_batch_size", "source")  # the only data settings eval/predict may change
SOURCE_OVERRIDES = ("src",)  # of data.source: where the MovieLens release is (+data.source.src=PATH)
PATHS_CONFIG = Path(CONFIG_DIR) / "paths" / "default.yaml"
DATA_CONFIGS = {"synthetic": "synthetic.yaml", "source": "movielens.yaml", "folder": "mmctr.yaml"}
# Lightning's warnings about a scoring run that ask nothing of the user: in-process batches need no loader workers,
# device=cpu on a machine with a GPU is the user's choice, and Lightning 2.6 on torch 2.13 warns about its own code
SCORING_NOTICES = (r".*does not have many workers.*", r".*available but not used.*",
                   r".*isinstance\(treespec, LeafSpec\).*")


# ---- loading ------------------------------------------------------------------------------------------------
def check_inference_config(cfg: DictConfig) -> None:
    """ConfigError (one line) for a qin-eval / qin-predict config that cannot run: ``ckpt_path`` unset, a
    ``device``, ``threads`` or ``data.eval_batch_size`` that is not one."""
    missing_values(cfg)
    expect_device(str(cfg.get("device", "auto")))
    expect_int(cfg, "threads", nullable=True)
    expect_int(cfg, "data.eval_batch_size", nullable=True)


def data_kind(data: dict[str, Any]) -> str:
    """Which kind of data a stored data config describes: a generated synthetic set, a converted source, a folder."""
    if isinstance(data.get("synthetic"), dict):
        return "synthetic"
    return "source" if isinstance(data.get("source"), dict) else "folder"


def user_data_paths(kind: str) -> dict[str, Any]:
    """The user's own defaults for where data of `kind` lives: the package's data config of that kind resolved
    with the user's ``paths`` config and environment (QIN_DATA_DIR, QIN_CACHE_DIR, QIN_MOVIELENS_SRC), never the
    checkpoint's: {"root": ... or None, "src": ..., "cache_dir": ...}."""
    tree = OmegaConf.create({"paths": OmegaConf.load(PATHS_CONFIG),
                             "data": OmegaConf.load(Path(CONFIG_DIR) / "data" / DATA_CONFIGS[kind])})
    root = OmegaConf.select(tree, "data.root")
    return {"root": None if root in (None, "???") else str(root),
            "src": OmegaConf.select(tree, "data.source.src", default=None),
            "cache_dir": OmegaConf.select(tree, "data.source.cache_dir", default=None)}


def data_config(run_cfg: dict[str, Any], overrides: DictConfig | dict | None, path: str | Path) -> dict[str, Any]:
    """The checkpoint's data config with every path taken from the user (a checkpoint carries a model, not a
    place): ``root`` (and a MovieLens source's ``src`` / ``cache_dir``) from the command line (``data.root``,
    ``+data.source.src``) or the user's own defaults (`user_data_paths`), never from the stored config; only
    ``eval_batch_size`` may change otherwise (ConfigError for anything else). Given ``data.root``, a MovieLens
    conversion keeps its text-encoder cache in ``<data.root>/embeddings``."""
    if not isinstance(run_cfg.get("data"), dict) or "_target_" not in run_cfg["data"]:
        raise ConfigError(f"{path}: checkpoint's qin_config has no data config (it was not written by our training)")
    data = dict(run_cfg["data"])
    given = {k: v for k, v in (OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig)
                                else dict(overrides or {})).items() if v is not None}
    unknown = sorted(set(given) - set(DATA_OVERRIDES))
    source_given = given.get("source", {})
    if not unknown and (not isinstance(source_given, dict) or set(source_given) - set(SOURCE_OVERRIDES)):
        unknown = ["source." + next(iter(sorted(set(source_given) - set(SOURCE_OVERRIDES))), "")] \
            if isinstance(source_given, dict) else ["source"]
    if unknown:
        raise ConfigError(
            f"data.{unknown[0]}: cannot be overridden here; the model and data settings come from the checkpoint, "
            f"only {', '.join('data.' + k for k in DATA_OVERRIDES if k != 'source')} and data.source.src may be given"
        )
    kind = data_kind(data)
    defaults = user_data_paths(kind)
    if "root" in given:
        data["root"] = str(given["root"])
    elif defaults["root"] is not None:
        data["root"] = defaults["root"]
    else:
        raise ConfigError(
            f"data.root: required: {path} was trained on a data folder, and a checkpoint never decides where data "
            "is read; pass data.root=<the folder with train/valid/test/item_info.parquet>"
        )
    if kind == "source":
        source = dict(data["source"])
        source["src"] = str(source_given.get("src", defaults["src"]))
        source["cache_dir"] = str(Path(str(given["root"])) / "embeddings") if "root" in given else defaults["cache_dir"]
        data["source"] = source
    if given.get("eval_batch_size") is not None:  # the batch size of scoring, and only that (as in training)
        if int(given["eval_batch_size"]) < 1:
            raise ConfigError(f"data.eval_batch_size={given['eval_batch_size']}, expected >= 1")
        data["eval_batch_size"] = int(given["eval_batch_size"])
    return data


def check_item_count(net: nn.Module, dm: MMCTRDataModule, path: str | Path) -> None:
    """Before the data is read: its item_info must declare the checkpoint's number of items (its footer only)."""
    items = getattr(net, "items", None)
    if items is None:
        return
    rows = reader.item_info_rows(dm.data_dir)
    if rows != items.item_tags.shape[0]:
        raise ConfigError(f"{dm.data_dir / layout.ITEM_INFO_FILE}: has {rows:,} items, but {path} was trained with "
                          f"{items.item_tags.shape[0]:,} (not the dataset of this checkpoint)")


def check_item_tables(net: nn.Module, dm: MMCTRDataModule, path: str | Path) -> None:
    """The data's item_info must be the table the checkpoint was trained with (shape and values)."""
    items = getattr(net, "items", None)
    if items is None:
        return
    where = f"{dm.data_dir / layout.ITEM_INFO_FILE}"
    ck_mm, ck_tags = items.item_mm, items.item_tags
    assert dm.item_mm is not None and dm.item_tags is not None
    if dm.item_mm.shape[1] != ck_mm.shape[1]:
        raise ConfigError(
            f"{where}: column '{layout.ITEM_EMB}' vectors are {dm.item_mm.shape[1]} wide, but {path} was trained with "
            f"{ck_mm.shape[1]}-wide vectors (embedding width of the data and the model config differ)"
        )
    if dm.item_mm.shape[0] != ck_mm.shape[0]:
        raise ConfigError(
            f"{where}: has {dm.item_mm.shape[0]} items, but {path} was trained with {ck_mm.shape[0]} "
            "(not the dataset of this checkpoint)"
        )
    if dm.item_tags.shape != ck_tags.shape or not torch.equal(dm.item_tags, ck_tags):
        raise ConfigError(f"{where}: column '{layout.ITEM_TAGS}' differs from the tags {path} was trained with")
    if not torch.equal(dm.item_mm, ck_mm):
        raise ConfigError(f"{where}: column '{layout.ITEM_EMB}' differs from the vectors {path} was trained with")


def load_for_inference(
    ckpt_path: str | Path, data_overrides: DictConfig | dict | None, stage: str, trust_checkpoint: bool = False
) -> tuple[nn.Module, dict[str, Any], MMCTRDataModule]:
    """(network in eval mode, run config, datamodule set up for `stage`) from a training checkpoint, read
    strictly unless `trust_checkpoint` (qin_lightning.serving.load)."""
    if ckpt_path is None or str(ckpt_path) in ("", "???"):
        raise ConfigError("ckpt_path is required, e.g. ckpt_path=logs/train/runs/qin/<run>/checkpoints/last.ckpt")
    net, run_cfg = load_network(ckpt_path, trust=trust_checkpoint)
    data = data_config(run_cfg, data_overrides, ckpt_path)
    if trust_checkpoint:
        dm = instantiate_reporting(OmegaConf.create(data), _convert_="object")
    else:  # plain data of our own classes only, never instantiated with Hydra (serving.stored_config)
        dm = stored_datamodule(data, ckpt_path, TRUST_HINT)
    dm.prepare_data()
    check_item_count(net, dm, ckpt_path)
    dm.setup(stage)
    check_item_tables(net, dm, ckpt_path)
    return net, run_cfg, dm


def pick_device(name: str) -> torch.device:
    """The torch device of a ``device`` setting (auto, cpu, cuda, cuda:N); ConfigError (one line) for CUDA without
    a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available, use device=cpu or device=auto")
    return torch.device(name)


# ---- scoring: Lightning for a torch network, the scorer's own loop for an onnxruntime session ------------------
class ProbabilityModule(pl.LightningModule):
    """A loaded network for ``Trainer.predict``: a batch's click probabilities (B,) float32, on the CPU."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        logits = self.net(batch.item_seq, batch.item_id, batch.likes_level, batch.views_level)  # (B,)
        return torch.sigmoid(logits.float()).cpu()


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning says nothing for the block: none of its info lines (device banner, tips, LOCAL_RANK, matmul
    precision) and none of its notices about a scoring run (loader workers, an unused GPU); its other warnings stay."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        for notice in SCORING_NOTICES:
            warnings.filterwarnings("ignore", message=notice)
        for logger in loggers:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def scoring_trainer(device: torch.device) -> pl.Trainer:
    """A Trainer that only predicts, on `device` in fp32: no logger, checkpoints, progress bar or summary."""
    if device.type == "cuda":
        accelerator, devices = "cuda", [device.index if device.index is not None else torch.cuda.current_device()]
    else:
        accelerator, devices = device.type, 1
    return pl.Trainer(accelerator=accelerator, devices=devices, precision="32-true", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


def torch_probabilities(net: nn.Module, dm: MMCTRDataModule, split: str, device: torch.device) -> np.ndarray:
    """Click probabilities (n,) float32 of `split` in row order: `net` in its inference form, run by Lightning's
    ``Trainer.predict`` over the DataModule's batches of the split (`MMCTRDataModule.split_dataloader`)."""
    net = net.to(device)  # before the inference form is prepared (models.inference)
    with quiet_lightning(), inference_form(net):
        batches = scoring_trainer(device).predict(ProbabilityModule(net), dataloaders=dm.split_dataloader(split))
    return torch.cat(batches).numpy() if batches else np.empty(0, dtype=np.float32)  # type: ignore[arg-type]


def onnx_probabilities(session: Any, dm: MMCTRDataModule, split: str, name: str = "onnx") -> np.ndarray:
    """Like `torch_probabilities`, with an onnxruntime session of an exported model (qin_lightning.serving.runtime)
    run over the same batches (`MMCTRDataModule.eval_sampler` in one process); a failing run (e.g. item ids beyond
    the model's table) is a QinError naming `name` and the rows."""
    data = dm.dataset(split)
    probs = np.empty(len(data), dtype=np.float32)
    for index in dm.eval_sampler(split, rank=0, world_size=1):  # (B,) row numbers, in row order
        batch = data[index]
        try:
            probs[index.numpy()] = session.run(None, feed(batch.item_seq, batch.item_id, batch.likes_level,
                                                          batch.views_level))[0]
        except Exception as err:  # onnxruntime's errors are untyped
            raise QinError(
                f"{name}: onnxruntime failed on rows {int(index[0])}-{int(index[-1])} "
                f"({str(err).splitlines()[0][:200]}); was the model exported from this checkpoint's data?"
            ) from None
    return probs


def exported_session(cfg: DictConfig) -> tuple[Path | None, Any]:
    """(path, onnxruntime session) of the exported model `cfg.onnx`, or (None, None) when it is not set."""
    if not cfg.get("onnx"):
        return None, None
    path = Path(str(cfg.onnx)).expanduser()
    return path, open_session(path, threads=torch.get_num_threads(), name="onnx")


def split_probabilities(net: nn.Module, exported: tuple[Path | None, Any], dm: MMCTRDataModule, split: str,
                        device: str) -> np.ndarray:
    """Click probabilities (n,) float32 of `split` in row order, every row once: of the exported model when there
    is one (`exported_session`), else of `net` on `device` (auto, cpu, cuda, cuda:N)."""
    path, session = exported
    if session is not None:
        probs = onnx_probabilities(session, dm, split, name=f"onnx={path}")
    else:
        probs = torch_probabilities(net, dm, split, pick_device(device))
    if len(probs) != len(dm.dataset(split)):
        raise QinError(f"scored {len(probs)} rows of the {len(dm.dataset(split))} of the {split} split")
    return probs
