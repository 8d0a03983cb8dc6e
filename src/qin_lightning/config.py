"""Where the package's Hydra configs are, which classes its model configs name, how a config node is
instantiated with one-line errors, and which ``results.json`` key a sweep's ``optimized_metric`` names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
import yaml
from omegaconf import DictConfig

from qin_lightning.errors import ConfigError, QinError

# the Hydra configs ship inside the package (src/qin_lightning/conf), so an installed wheel finds them anywhere
CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")
MODEL_DIR = Path(CONFIG_DIR) / "model"
MODULE_GROUP = "module"  # conf/model/module/: the LightningModule around a network, not a part of one
OBJECTIVES = {"val/auc": "best_val_auc", "val/logloss": "best_val_logloss"}  # optimized_metric -> results.json


def instantiate_reporting(node: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate``, re-raising a QinError raised inside a constructor as itself (one line)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, QinError):
            cause = cause.__cause__
        if isinstance(cause, QinError):
            raise cause from err
        raise


def objective_key(metric: str) -> str:
    """The ``results.json`` key of a sweep's ``optimized_metric``; ConfigError for a metric no run records."""
    if metric not in OBJECTIVES:
        raise ConfigError(f"config key 'optimized_metric': {metric!r}, expected one of {', '.join(OBJECTIVES)} (the "
                          "validation metrics every run records; the test split never chooses a trial)")
    return OBJECTIVES[metric]


def model_targets(model_dir: Path = MODEL_DIR) -> tuple[list[str], list[str]]:
    """The classes the package's own model configs name: the networks (``net._target_`` of each
    ``conf/model/*.yaml``) and their parts (the ``_target_`` of each ``conf/model/<part>/*.yaml``, e.g.
    ``attention/``, ``interaction/``). A network is added by a file in ``models/`` and a config here, and
    every command (a stored checkpoint included) accepts it."""
    networks, parts = set(), set()
    for path in sorted(model_dir.glob("*.yaml")):
        target = ((yaml.safe_load(path.read_text()) or {}).get("net") or {}).get("_target_")
        if target:
            networks.add(target)
    for path in sorted(model_dir.glob("*/*.yaml")):
        if path.parent.name != MODULE_GROUP:
            target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
            if target:
                parts.add(target)
    return sorted(networks), sorted(parts)
