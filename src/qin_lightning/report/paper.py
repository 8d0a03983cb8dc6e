"""Which paper experiment a row is, decided from composed configs, never from a name.

A row's model is its run's own composed ``model`` subtree (``.hydra/config.yaml``), or for a record without a run
folder (``runs/<run>.json``) conf/train.yaml composed with the record's overrides (with ``+experiment=<its
experiment>`` for an old record that kept neither). A paper experiment's model is
conf/train.yaml composed with ``+experiment=<name>`` and the overrides every run of the sweep shares (the sweep's
fixed settings, such as a width or the data). A row is that experiment where the two ``model`` subtrees are
equal (unresolved, as Hydra stores them): ``model/attention=softmax`` on QIN is ``ablation_softmax``. The same
composition gives the default value of a swept key (the row a sweep's deltas are taken against).

Composition reads only the package's own configs; nothing is resolved (no interpolation, no environment
variable), so an override from a record cannot reach beyond the config tree. A set of overrides that does not
compose gives no paper row (and no default).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from qin_lightning.config import CONFIG_DIR

PAPER_EXPERIMENTS = tuple(sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")))
MAX_OVERRIDES = 200  # a run's command line; more is not a run the report composes


@functools.lru_cache(maxsize=512)
def composed(overrides: tuple[str, ...]) -> tuple[Any, dict[str, str]] | None:
    """(the ``model`` subtree as plain data, unresolved; Hydra's group choices) of conf/train.yaml with
    ``overrides``; None where they do not compose."""
    if len(overrides) > MAX_OVERRIDES:
        return None
    previous = GlobalHydra.instance().is_initialized()
    if previous:  # inside a Hydra app or a test's composition: compose beside it, not over it
        return None
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices, resolve=False)
        model = OmegaConf.to_container(cfg.model, resolve=False) if "model" in cfg else None
        return model, {str(k): str(v) for k, v in (choices or {}).items()}
    except Exception:  # noqa: BLE001 (Hydra's composition errors have no common base): not composable
        return None
    finally:
        GlobalHydra.instance().clear()


def default_value(key: str, shared: tuple[str, ...]) -> str | None:
    """The value a swept override key takes without its override: a config group's default choice
    (``model/attention`` -> relu) or a key's composed value (``model.net.qnn.dropout`` -> 0.0), with the sweep's
    shared overrides; None where it has none."""
    if key == "experiment":
        return "qin"  # no +experiment: conf/train.yaml's model, QIN
    base = _full_config(shared)
    if base is None:
        return None
    config, choices = base
    if key in choices:
        return choices[key]
    value = OmegaConf.select(config, key, default=None, throw_on_missing=False)
    if value is None:
        return "null" if OmegaConf.select(config, key, default="<absent>") is None else None
    return str(value) if not OmegaConf.is_config(value) else None


@functools.lru_cache(maxsize=64)
def _full_config(shared: tuple[str, ...]) -> tuple[Any, dict[str, str]] | None:
    if len(shared) > MAX_OVERRIDES or GlobalHydra.instance().is_initialized():
        return None
    try:
        with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
            cfg = compose(config_name="train", overrides=list(shared), return_hydra_config=True)
        choices = OmegaConf.to_container(cfg.hydra.runtime.choices, resolve=False) or {}
        return cfg, {str(k): str(v) for k, v in choices.items()}
    except Exception:  # noqa: BLE001
        return None
    finally:
        GlobalHydra.instance().clear()


def paper_experiment(model: Any, shared: tuple[str, ...]) -> str | None:
    """The paper experiment whose composed model (with the sweep's shared overrides) equals ``model``."""
    if model is None:
        return None
    for name in PAPER_EXPERIMENTS:
        reference = composed((f"+experiment={name}", *shared))
        if reference is not None and reference[0] == model:
            return name
    return None


def row_model(runs: list[Any]) -> Any:
    """A row's composed model: its first run's own (.hydra/config.yaml), else its record's overrides composed."""
    for run in runs:
        if run.model_config is not None:
            return run.model_config
    for run in runs:
        if run.override_list:
            own = tuple(o for o in run.override_list if o.partition("=")[0].lstrip("+~") not in ("seed", "ckpt_path"))
            result = composed(own)
            if result is not None:
                return result[0]
    for run in runs:  # a record that kept neither its config nor its overrides: the experiment it names, composed
        if not run.override_list and run.model_config is None and run.experiment in PAPER_EXPERIMENTS:
            result = composed((f"+experiment={run.experiment}",))
            if result is not None:
                return result[0]
    return None


def annotate(collected: Any) -> None:
    """Set every row's ``paper``: the paper experiment its composed model is, with the sweep's shared overrides."""
    shared = collected.shared_overrides()
    for row in collected.rows:
        row.paper = paper_experiment(row_model(row.completed or row.runs), shared)
