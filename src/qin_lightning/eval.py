"""Evaluate a checkpoint: ``python -m qin_lightning.eval ckpt_path=<ckpt> [split=valid|test] [data.root=...]``.

Prints and writes AUC, logloss and gAUC of one split. The network and the data configuration come from the
checkpoint (`qin_config`, written by `qin_lightning.train`); only where the data lives (``data.root``) and the
batch size (``data.batch_size``) may be overridden. With ``onnx=<model.onnx>`` the probabilities come from that
exported model (qin_lightning.export, e.g. its `--weights int8` form) run in onnxruntime instead of the
checkpoint's network; the checkpoint still names the data. The data's item tables must be the ones the model was
trained with (same rows, same values), else the ids would silently mean other items.

gAUC (group AUC, the MicroLens/FuxiCTR definition): AUC computed per user, averaged with weights = the user's
number of impressions, over users that have both a positive and a negative impression.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Iterator

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torchmetrics.functional.classification import binary_auroc

from qin_lightning.checkpoint import load_network
from qin_lightning.cli import CONFIG_DIR, instantiate_reporting, run_reporting_errors, set_threads
from qin_lightning.data import layout
from qin_lightning.data.datamodule import Batch, MMCTRDataModule, SplitDataset
from qin_lightning.errors import ConfigError, QinError
from qin_lightning.files import atomic_write_json
from qin_lightning.metrics import BinaryLogLoss
from qin_lightning.onnx_runtime import feed, open_session

DATA_OVERRIDES = ("root", "batch_size")  # the only data settings eval/predict may change


# ---- metrics ------------------------------------------------------------------------------------------------
def group_auc(user: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[float, int]:
    """(gAUC, number of users counted): impression-weighted mean of per-user AUCs, one-class users skipped.

    Vectorised (one lexsort + segment sums): within each user, AUC = (sum of positive ranks - P(P+1)/2) / (P N)
    with tied scores sharing their average rank (Mann-Whitney U, = ROC AUC with ties counted 1/2).
    """
    n = len(user)
    if n == 0:
        return math.nan, 0
    order = np.lexsort((scores, user))  # by user, then score
    u, y, s = user[order], labels[order].astype(np.float64), scores[order]
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new_run = new_user.copy()  # a run = equal (user, score)
    new_run[1:] |= s[1:] != s[:-1]
    pos = np.arange(1, n + 1, dtype=np.float64)  # global 1-based positions
    run_id = np.cumsum(new_run) - 1
    run_start = pos[new_run]
    run_end = np.append(run_start[1:] - 1.0, float(n))
    avg_pos = ((run_start + run_end) / 2.0)[run_id]  # tie-averaged position
    group = np.cumsum(new_user) - 1
    rank = avg_pos - (pos[new_user][group] - 1.0)  # 1-based rank within the user
    count = np.bincount(group).astype(np.float64)
    npos = np.bincount(group, weights=y)
    nneg = count - npos
    rank_pos = np.bincount(group, weights=rank * y)
    both = (npos > 0) & (nneg > 0)
    if not both.any():
        return math.nan, 0
    auc = (rank_pos[both] - npos[both] * (npos[both] + 1.0) / 2.0) / (npos[both] * nneg[both])
    weight = count[both]
    return float((auc * weight).sum() / weight.sum()), int(both.sum())


# ---- loading ------------------------------------------------------------------------------------------------
def data_config(run_cfg: dict[str, Any], overrides: DictConfig | dict | None, path: str | Path) -> dict[str, Any]:
    """The checkpoint's data config with only `root` / `batch_size` replaced (ConfigError for anything else)."""
    if not isinstance(run_cfg.get("data"), dict) or "_target_" not in run_cfg["data"]:
        raise ConfigError(f"{path}: checkpoint's qin_config has no data config (it was not written by our training)")
    data = dict(run_cfg["data"])
    given = {k: v for k, v in (OmegaConf.to_container(overrides) if isinstance(overrides, DictConfig)
                                else dict(overrides or {})).items() if v is not None}
    unknown = sorted(set(given) - set(DATA_OVERRIDES))
    if unknown:
        raise ConfigError(
            f"data.{unknown[0]}: cannot be overridden here; the model and data settings come from the checkpoint, "
            f"only {', '.join('data.' + k for k in DATA_OVERRIDES)} may be given"
        )
    if "root" in given:
        data["root"] = str(given["root"])
    if "batch_size" in given:
        if int(given["batch_size"]) < 1:
            raise ConfigError(f"data.batch_size={given['batch_size']}, expected >= 1")
        data["batch_size"] = data["eval_batch_size"] = int(given["batch_size"])
    return data


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
    strictly unless `trust_checkpoint` (qin_lightning.checkpoint)."""
    if ckpt_path is None or str(ckpt_path) in ("", "???"):
        raise ConfigError("ckpt_path is required, e.g. ckpt_path=logs/train/runs/qin/<run>/checkpoints/last.ckpt")
    net, run_cfg = load_network(ckpt_path, trust=trust_checkpoint)
    data = data_config(run_cfg, data_overrides, ckpt_path)
    dm = instantiate_reporting(OmegaConf.create(data), _convert_="object")
    dm.prepare_data()
    dm.setup(stage)
    check_item_tables(net, dm, ckpt_path)
    return net, run_cfg, dm


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: CUDA is not available, use device=cpu or device=auto")
    return torch.device(name)


def predict_batches(
    net: nn.Module, data: SplitDataset, batch_size: int, device: torch.device
) -> Iterator[tuple[Batch, np.ndarray]]:
    """(batch on the CPU, probabilities (B,) float32) over a split in row order, without gradients."""
    net = net.to(device).eval()
    with torch.inference_mode():
        for index in torch.arange(len(data)).split(batch_size):
            batch = data[index]
            logits = net(*(t.to(device) for t in (batch.item_seq, batch.item_id, batch.likes_level, batch.views_level)))
            yield batch, torch.sigmoid(logits.float()).cpu().numpy()


def onnx_predict_batches(session: Any, data: SplitDataset, batch_size: int,
                         name: str = "onnx") -> Iterator[tuple[Batch, np.ndarray]]:
    """Like `predict_batches`, with an onnxruntime session of an exported model (qin_lightning.onnx_runtime);
    a failing run (e.g. item ids beyond the model's table) is a QinError naming `name` and the rows."""
    for index in torch.arange(len(data)).split(batch_size):
        batch = data[index]
        try:
            probs = session.run(None, feed(batch.item_seq, batch.item_id, batch.likes_level, batch.views_level))[0]
        except Exception as err:  # onnxruntime's errors are untyped
            raise QinError(
                f"{name}: onnxruntime failed on rows {int(index[0])}-{int(index[-1])} "
                f"({str(err).splitlines()[0][:200]}); was the model exported from this checkpoint's data?"
            ) from None
        yield batch, probs


def split_metrics(probs: np.ndarray, labels: np.ndarray, users: np.ndarray) -> dict[str, Any]:
    """AUC, logloss, gAUC and the number of users gAUC counted, of one split's probabilities."""
    gauc, gauc_users = group_auc(users, labels, probs)
    return {
        "auc": float(binary_auroc(torch.from_numpy(probs), torch.from_numpy(labels).long())),
        "logloss": float(BinaryLogLoss()(torch.from_numpy(probs), torch.from_numpy(labels))),
        "gauc": gauc,
        "gauc_users": gauc_users,
    }


def exported_session(cfg: DictConfig) -> tuple[Path | None, Any]:
    """(path, onnxruntime session) of the exported model `cfg.onnx`, or (None, None) when it is not set."""
    if not cfg.get("onnx"):
        return None, None
    path = Path(str(cfg.onnx)).expanduser()
    return path, open_session(path, threads=torch.get_num_threads(), name="onnx")


def scored_batches(net: nn.Module, exported: tuple[Path | None, Any], data: SplitDataset, batch_size: int,
                   device: str) -> Iterator[tuple[Batch, np.ndarray]]:
    """The probabilities of the exported model when there is one (`exported_session`), else of `net`."""
    path, session = exported
    if session is not None:
        return onnx_predict_batches(session, data, batch_size, name=f"onnx={path}")
    return predict_batches(net, data, batch_size, pick_device(device))


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Metrics of `cfg.split` for `cfg.ckpt_path`; writes them to JSON (atomic) and returns them."""
    started = time.time()
    set_threads(cfg.get("threads"))
    split = str(cfg.split)
    if split not in (layout.VALID, layout.TEST):
        raise ConfigError(f"split={split}: expected valid or test")
    ckpt = Path(str(cfg.ckpt_path))
    exported = exported_session(cfg)  # checked before the data loads
    onnx_model = exported[0]
    stage = "validate" if split == layout.VALID else "test"
    net, run_cfg, dm = load_for_inference(ckpt, cfg.get("data"), stage, bool(cfg.get("trust_checkpoint")))
    data = dm.dataset(split)
    if not data.has_label:
        raise ConfigError(
            f"{dm.data_dir / layout.FILE_NAMES[split]}: has no '{layout.LABEL}' column, so it cannot be evaluated "
            "(use python -m qin_lightning.predict for the submission file)"
        )
    probs = np.empty(len(data), dtype=np.float32)
    start = 0
    for batch, p in scored_batches(net, exported, data, dm.eval_batch_size, str(cfg.device)):
        probs[start : start + len(p)] = p
        start += len(p)
    if not np.isfinite(probs).all():
        bad = int(np.flatnonzero(~np.isfinite(probs))[0])
        raise QinError(f"{onnx_model or ckpt}: the model predicts a non-finite probability for {split} row {bad}")
    labels = data.label.numpy()
    users = data.user_id.numpy()
    metrics = split_metrics(probs, labels, users)
    scored = onnx_model if onnx_model is not None else ckpt
    out = Path(str(cfg.output)) if cfg.get("output") else scored.with_name(f"{scored.stem}.eval_{split}.json")
    results = {
        **metrics,
        "split": split,
        "rows": len(data),
        "positive_rate": float(labels.mean()),
        "users": int(np.unique(users).size),
        "checkpoint": str(ckpt),
        "onnx": str(onnx_model) if onnx_model is not None else None,
        "experiment": run_cfg.get("experiment_name"),
        "data_dir": str(dm.data_dir),
        "seconds": round(time.time() - started, 2),
    }
    atomic_write_json(out, results)
    results["output"] = str(out)
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    r = run_reporting_errors(lambda: evaluate(cfg), debug=bool(cfg.get("debug")))
    print(f"wrote {r['output']}")
    print(f"{r['split']}: rows={r['rows']} auc={r['auc']:.6f} logloss={r['logloss']:.6f} gauc={r['gauc']:.6f}",
          flush=True)


if __name__ == "__main__":
    main()
