"""Side by side on one machine, in one invocation: the authors' published QIN (a checkout of github.com/salmon1802/QIN
that you supply, run on fuxictr 2.3.10 from the package registry in its own virtual environment) and ours
(experiments/bench/whole_run.py), on the same generated data, one after the other; both wall times, their ratio,
both validation AUC curves and the machine go into one JSON record.

    python experiments/peer/side_by_side.py --qin-repo ../QIN --draws torch,sfc64 \
        --out experiments/peer/side_by_side.json

Defaults: the size of whole_run.py (100,000 train / 20,000 validation rows of the synthetic MMCTR data, 3,000 items,
500 tags, 64-long histories of mean 8), 8 epochs, batch 2048, 2 threads; ours in fp32 and, on a CPU with bf16
kernels, bf16 (`--precision`).
Theirs: QIN_variety_v9 with its published hyperparameters (the paper, their config and training log; their config
files are generated in a temporary folder, nothing of theirs is copied here), on the CPU, through their own data
loader (MMCTRDataLoader, `--their-workers` loader processes) and FuxiCTR's fit loop; experiments/peer/their_run.py
drives it inside their environment (their run_expid.py pins fuxictr 2.3.7 and also predicts the test split).
The environment is made once (`--venv`, default $QIN_CACHE_DIR/peer-venv): python -m venv, then
pip install torch==<this torch> fuxictr==2.3.10 pandas; nothing is downloaded when it exists.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "experiments" / "bench"))

from qin_lightning.errors import ConfigError  # noqa: E402

FUXICTR = "fuxictr==2.3.10"
THEIR_MODEL = "QIN_variety_v9"
THEIR_FILES = ("src/__init__.py", "src/QIN_variety_v9.py", "src/mmctr_dataloader.py")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--qin-repo", type=Path, required=True, help="a checkout of github.com/salmon1802/QIN")
    p.add_argument("--out", type=Path, required=True, help="the JSON record (written atomically)")
    p.add_argument("--venv", type=Path, default=None,
                   help="their virtual environment (made on first use; default $QIN_CACHE_DIR/peer-venv)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-rows", type=int, default=100_000)
    p.add_argument("--valid-rows", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto",
                   help="ours: comma-separated 32, bf16 (whole_run.py); auto: 32,bf16 on a CPU with bf16 kernels, else 32")
    p.add_argument("--their-workers", type=int, default=2, help="loader processes of their MMCTRDataLoader")
    p.add_argument("--draws", default="torch",
                   help="ours: comma-separated dropout mask draws of the QNN (model.net.interaction.dropout_draw): "
                        "torch (the default), sfc64; each precision runs with each")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Every problem with the command line as one line, before anything is built or run."""
    missing = [name for name in THEIR_FILES if not (args.qin_repo / name).is_file()]
    if missing:
        raise ConfigError(f"--qin-repo {args.qin_repo}: no {', '.join(missing)}; expected a checkout of "
                          f"github.com/salmon1802/QIN (git clone https://github.com/salmon1802/QIN)")
    for key in ("epochs", "train_rows", "valid_rows", "batch_size", "threads"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}: {getattr(args, key)}, expected a positive integer")
    if args.their_workers < 0:
        raise ConfigError(f"--their-workers: {args.their_workers}, expected 0 or more")
    if args.precision == "auto":  # bf16 autocast is many times slower than fp32 without bf16 kernels
        from qin_lightning.training.machine import cpu_has_bf16

        args.precision = "32,bf16" if cpu_has_bf16() else "32"
    precisions = args.precision.split(",")
    if not precisions or any(p not in ("32", "bf16") for p in precisions):
        raise ConfigError(f"--precision: {args.precision!r}, expected a comma-separated list of 32, bf16")
    from qin_lightning.models.dropout import DROPOUT_DRAWS

    if any(d not in DROPOUT_DRAWS for d in args.draws.split(",")):
        raise ConfigError(f"--draws: {args.draws!r}, expected a comma-separated list of {', '.join(DROPOUT_DRAWS)}")


def ensure_venv(venv: Path) -> dict[str, str]:
    """Their environment: made once (venv + pip from the package registry); returns the versions inside it."""
    import torch

    python = venv / "bin" / "python"
    marker = venv / ".side_by_side-installed"
    if not marker.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the same kernels as ours
        subprocess.run([str(python), "-m", "pip", "install", "-q", torch_pin, FUXICTR, "pandas"], check=True)
        marker.write_text(torch_pin + "\n")
    probe = "import fuxictr, torch, pandas; print(fuxictr.__version__, torch.__version__, pandas.__version__)"
    versions = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True).stdout.split()
    return {"python": str(python), "fuxictr": versions[0], "torch": versions[1], "pandas": versions[2]}


def size_overrides(args: argparse.Namespace, cache: Path) -> list[str]:
    """whole_run.py's size with this invocation's rows, batch and threads, generated under `cache`."""
    from whole_run import SIZE

    return [*SIZE, f"data.synthetic.train_rows={args.train_rows}", f"data.synthetic.valid_rows={args.valid_rows}",
            f"data.batch_size={args.batch_size}", f"threads={args.threads}", f"paths.cache_dir={cache}"]


def generate_data(overrides: list[str]) -> tuple[Path, dict[str, Any]]:
    """The synthetic dataset exactly as `python -m qin_lightning.train <overrides>` would generate it (same folder,
    so ours finds it made and neither side's wall time includes generating it); its folder and sizes."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from qin_lightning.cli import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="train", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return Path(dm.data_dir), {"dir_name": Path(dm.data_dir).name, "num_items": dm.num_items,
                               "num_tags": dm.num_tags, "max_len": int(cfg.data.max_len),
                               "train_rows": len(dm.dataset("train")), "valid_rows": len(dm.dataset("valid"))}


def their_configs(folder: Path, data_dir: Path, data: dict[str, Any], args: argparse.Namespace) -> Path:
    """Their dataset and model config files for this data (YAML written here from the published facts)."""
    import yaml

    dataset = {"side_by_side": {
        "data_root": str(folder / "fuxictr") + "/", "data_format": "parquet",  # their feature_map.json goes here
        "train_data": str(data_dir / "train.parquet"), "valid_data": str(data_dir / "valid.parquet"),
        "test_data": str(data_dir / "test.parquet"), "item_info": str(data_dir / "item_info.parquet"),
        "rebuild_dataset": False,  # as published: their loader reads the parquet files, only the feature map is made
        "feature_cols": [
            {"name": "user_id", "active": True, "dtype": "int", "type": "meta"},
            {"name": "item_seq", "active": True, "dtype": "int", "type": "meta"},
            {"name": "likes_level", "active": True, "dtype": "int", "type": "categorical", "vocab_size": 11},
            {"name": "views_level", "active": True, "dtype": "int", "type": "categorical", "vocab_size": 11},
            {"name": "item_id", "active": True, "dtype": "int", "type": "categorical",
             "vocab_size": data["num_items"], "source": "item"},
            {"name": "item_tags", "active": True, "dtype": "int", "type": "sequence", "max_len": 5,
             "vocab_size": data["num_tags"], "source": "item"},
            {"name": "item_emb_d128", "active": True, "dtype": "float", "type": "embedding", "source": "item",
             "embedding_dim": 128, "pretrain_dim": 128},  # fuxictr 2.3.10 needs the vector's width stated
        ],
        "label_col": {"name": "label", "dtype": "float"},
    }}
    model = {
        "Base": {"model_root": str(folder / "checkpoints") + "/", "num_workers": args.their_workers, "verbose": 0,
                 "pickle_feature_encoder": True, "save_best_only": True, "eval_steps": None, "debug_mode": False,
                 "group_id": "user_id", "use_features": None, "feature_specs": None, "feature_config": None},
        THEIR_MODEL: {  # the published QIN (paper section 3, their model_config.yaml) at this batch and epoch count
            "model": THEIR_MODEL, "dataset_id": "side_by_side", "loss": "binary_crossentropy",
            "metrics": ["AUC", "logloss"], "task": "binary_classification", "optimizer": "adam",
            "learning_rate": 2.0e-3, "embedding_regularizer": 2.0e-4, "net_regularizer": 0,
            "batch_size": args.batch_size, "embedding_dim": 128, "num_layers": 4, "num_row": 4, "net_dropout": 0.1,
            "batch_norm": True, "epochs": args.epochs, "shuffle": True, "seed": 20242025,
            "monitor": {"AUC": 1, "logloss": 0}, "monitor_mode": "max", "max_len": data["max_len"],
            "early_stop_patience": 8, "accumulation_steps": 1, "factor": 0.5,
        },
    }
    config_dir = folder / "config"
    config_dir.mkdir()
    (config_dir / "dataset_config.yaml").write_text(yaml.safe_dump(dataset, sort_keys=False))
    (config_dir / "model_config.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return config_dir


def run_theirs(env_info: dict[str, str], repo: Path, config_dir: Path, folder: Path,
               threads: int) -> dict[str, Any]:
    """experiments/peer/their_run.py in their environment; its report plus the process's wall time."""
    report = folder / "their_report.json"
    command = [env_info["python"], str(REPO / "experiments" / "peer" / "their_run.py"), "--qin-repo",
               str(repo.resolve()), "--config", str(config_dir), "--expid", THEIR_MODEL, "--threads", str(threads),
               "--report", str(report)]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"error: their run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return {"wall_s": round(wall, 1), **json.loads(report.read_text()), "loadavg_start": load_start,
            "loadavg_end": os.getloadavg()}


def run_ours(args: argparse.Namespace, overrides: list[str], folder: Path) -> dict[str, Any]:
    """experiments/bench/whole_run.py for each draw and precision, on the generated data; its record (runs of
    the sfc64 draw are named with the suffix `_sfc64`)."""
    out = folder / "ours.json"
    extra = [o for o in overrides if o.startswith(("data.synthetic.train_rows", "data.synthetic.valid_rows",
                                                   "data.batch_size", "threads", "paths.cache_dir"))]
    for draw in args.draws.split(","):
        command = [sys.executable, str(REPO / "experiments" / "bench" / "whole_run.py"), "--out", str(out),
                   "--precision", args.precision, "--epochs", str(args.epochs)]
        if draw != "torch":
            command += ["--tag", f"_{draw}", "--override", f"model.net.interaction.dropout_draw={draw}"]
        for o in extra:
            command += ["--override", o]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: our run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def git_commit(repo: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def main(argv: list[str] | None = None) -> int:
    from qin_lightning.cli import run_reporting_errors
    from qin_lightning.files import atomic_write_json
    from qin_lightning.training.machine import machine

    args = parse_args(argv)
    run_reporting_errors(lambda: check_args(args))
    venv = args.venv or Path(os.environ.get("QIN_CACHE_DIR", REPO / ".cache" / "qin")) / "peer-venv"
    record: dict[str, Any] = {
        "command": "python experiments/peer/side_by_side.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {**machine(), "cpu_count": os.cpu_count()},
        "their_repo_commit": git_commit(args.qin_repo), "their_model": THEIR_MODEL,
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
                     "their_loader_workers": args.their_workers, "precision_ours": args.precision,
                     "draws_ours": args.draws},
    }
    env_info = ensure_venv(venv)
    record["their_environment"] = {k: v for k, v in env_info.items() if k != "python"}
    with tempfile.TemporaryDirectory(prefix="qin_side_by_side_") as tmp:
        folder = Path(tmp)
        overrides = size_overrides(args, folder / "cache")
        data_dir, record["data"] = generate_data(overrides)
        config_dir = their_configs(folder, data_dir, record["data"], args)
        record["theirs"] = run_theirs(env_info, args.qin_repo, config_dir, folder, args.threads)
        print(f"theirs: wall {record['theirs']['wall_s']} s, fit {record['theirs']['fit_s']} s", flush=True)
        record["ours"] = run_ours(args, overrides, folder)
        generated = sorted(p.name for p in (folder / "cache" / "synthetic").iterdir())
        if generated != [record["data"]["dir_name"]]:  # ours would have generated another dataset beside it
            raise SystemExit(f"error: our run did not read the generated data {record['data']['dir_name']}: "
                             f"the cache holds {generated}")
        record["data"]["same_folder_for_both"] = True
    runs = record["ours"]["runs"]
    record["ratio_their_wall_to_ours"] = {name: round(record["theirs"]["wall_s"] / run["wall_s"], 3)
                                          for name, run in runs.items()}
    record["ratio_their_fit_to_ours"] = {name: round(record["theirs"]["fit_s"] / run["fit_s"], 3)
                                         for name, run in runs.items()}
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(args.out, record)
    for name, run in runs.items():
        print(f"ours {name}: wall {run['wall_s']} s; theirs / ours: wall "
              f"{record['ratio_their_wall_to_ours'][name]}x, fit {record['ratio_their_fit_to_ours'][name]}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
