"""A refactor guard: every experiment (and every model / attention / data choice) composed and resolved, as one
JSON record of the code's own output.

    python tests/resolved_configs.py --write    # rewrite tests/resolved_configs.json from the current configs

tests/test_configs.py compares the current configs with the record: a config that is only restructured
(a shared group, an interpolation) resolves to exactly the same values. Written before the attention variants,
max_len and the module defaults were stated once; rewrite it only when a resolved value is meant to change.
The record says nothing about correctness (a wrong value rewritten into it passes): the published values are
checked separately, from their sources, by test_configs.py::test_published_values_are_the_composed_ones.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from qin_lightning.config import CONFIG_DIR

RECORD = Path(__file__).with_name("resolved_configs.json")
FIXED = ["paths.cache_dir=CACHE", "paths.log_dir=LOGS", "paths.data_dir=DATA"]


def choices() -> list[list[str]]:
    """The override lists composed: defaults, each experiment, each group option of model and data."""
    conf = Path(CONFIG_DIR)
    experiments = sorted(p.stem for p in (conf / "experiment").glob("*.yaml"))
    lists: list[list[str]] = [[]]
    lists += [[f"+experiment={name}"] for name in experiments]
    lists += [[f"model={p.stem}"] for p in sorted((conf / "model").glob("*.yaml"))]
    for group in ("attention", "interaction"):
        lists += [[f"model/{group}={p.stem}"] for p in sorted((conf / "model" / group).glob("*.yaml"))]
    lists += [[f"data={p.stem}"] for p in sorted((conf / "data").glob("*.yaml")) if p.stem != "mmctr"]
    lists += [["data=mmctr", "data.root=ROOT"], ["data=movielens", "data.max_len=20"],
              ["data.max_len=16"]]  # fmt: skip
    return lists


def resolved(overrides: list[str]) -> dict[str, Any]:
    """conf/train.yaml composed with `overrides`, every interpolation resolved (hydra node dropped)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", return_hydra_config=True, overrides=[*FIXED, *overrides])
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = "RUN"
        del cfg["hydra"]
    out = OmegaConf.to_container(cfg, resolve=True)
    GlobalHydra.instance().clear()
    assert isinstance(out, dict)
    return out


def record() -> dict[str, dict[str, Any]]:
    return {" ".join(overrides) or "(defaults)": resolved(overrides) for overrides in choices()}


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    RECORD.write_text(json.dumps(record(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {RECORD}")
