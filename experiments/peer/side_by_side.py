"""Side by side on one machine, in one invocation: one model of our tables as its authors published it (checkouts
that you supply, run on fuxictr 2.3.10 from the package registry in its own virtual environment) and ours
(experiments/bench/whole_run.py), on the same generated data, one after the other; both wall times, their ratio,
both validation AUC curves, both parameter counts and the machine go into one JSON record.

    python experiments/peer/side_by_side.py --qin-repo ../QIN --draws torch,sfc64 \
        --out experiments/peer/side_by_side.json
    python experiments/peer/side_by_side.py --model qnn_alpha --qin-repo ../QIN --fuxictr-repo ../FuxiCTR \
        --out experiments/peer/side_by_side_qnn_alpha.json
    python experiments/peer/side_by_side.py --table      # the README's table, read from the committed records

`--model` (MODELS below): qin (the default; QIN_variety_v9 of salmon1802/QIN), qnn_alpha (that QIN with the QNN of
reczoo/FuxiCTR's model_zoo/QNN/src/QNN_alpha.py and its self-ensemble loss), din and transformer_dcn (src/DIN.py and
src/Transformer_DCN.py of pinskyrobin/WWW2025_MMCTR, the challenge's DIN and its winner); ours is
`+experiment=<model>` (qin: the default config) at the same rows, batch and epochs.

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
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "experiments" / "bench"))

from qin_lightning.errors import ConfigError  # noqa: E402

FUXICTR = "fuxictr==2.3.10"
THEIR_MODEL = "QIN_variety_v9"
THEIR_FILES = ("src/__init__.py", "src/QIN_variety_v9.py", "src/mmctr_dataloader.py")
PEER = REPO / "experiments" / "peer"
README_TABLE_START = "<!-- table: python experiments/peer/side_by_side.py --table -->"
README_TABLE_END = "<!-- end of table -->"


class ModelSpec(NamedTuple):
    """One model of our tables beside its authors' code: which checkouts (flag -> files that must exist), their
    model name, our experiment config, the record's default file, and the defaults of this comparison."""

    their_model: str
    checkouts: dict[str, tuple[str, ...]]
    experiment: str | None  # ours: +experiment=<this>; None = the default config (QIN)
    record: str
    batch_size: int
    epochs: int
    draws: bool  # ours has the QNN dropout draw option (model.net.interaction.dropout_draw)


CHECKOUT_URLS = {"qin_repo": "github.com/salmon1802/QIN", "winner_repo": "github.com/pinskyrobin/WWW2025_MMCTR",
                 "fuxictr_repo": "github.com/reczoo/FuxiCTR"}
WINNER_FILES = ("src/DIN.py", "src/Transformer_DCN.py", "src/mmctr_dataloader.py")
MODELS: dict[str, ModelSpec] = {
    "qin": ModelSpec(THEIR_MODEL, {"qin_repo": THEIR_FILES}, None, "side_by_side.json", 2048, 8, True),
    "qnn_alpha": ModelSpec("QIN_QNN_alpha", {"qin_repo": THEIR_FILES,
                                             "fuxictr_repo": ("model_zoo/QNN/src/QNN_alpha.py",)},
                           "qnn_alpha", "side_by_side_qnn_alpha.json", 2048, 3, True),
    "din": ModelSpec("DIN", {"winner_repo": WINNER_FILES}, "din", "side_by_side_din.json", 2048, 3, False),
    "transformer_dcn": ModelSpec("Transformer_DCN", {"winner_repo": WINNER_FILES}, "transformer_dcn",
                                 "side_by_side_transformer_dcn.json", 128, 2, False),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=tuple(MODELS), default="qin", help="which model of our tables (default qin)")
    p.add_argument("--qin-repo", type=Path, default=None,
                   help="a checkout of github.com/salmon1802/QIN (qin, qnn_alpha)")
    p.add_argument("--winner-repo", type=Path, default=None,
                   help="a checkout of github.com/pinskyrobin/WWW2025_MMCTR (din, transformer_dcn)")
    p.add_argument("--fuxictr-repo", type=Path, default=None,
                   help="a checkout of github.com/reczoo/FuxiCTR (qnn_alpha: model_zoo/QNN)")
    p.add_argument("--out", type=Path, default=None, help="the JSON record (written atomically)")
    p.add_argument("--table", action="store_true",
                   help="print the table 'our model vs its authors' code' from the committed records and stop")
    p.add_argument("--venv", type=Path, default=None,
                   help="their virtual environment (made on first use; default $QIN_CACHE_DIR/peer-venv)")
    p.add_argument("--epochs", type=int, default=None, help="default: qin 8, qnn_alpha and din 3, transformer_dcn 2")
    p.add_argument("--train-rows", type=int, default=100_000)
    p.add_argument("--valid-rows", type=int, default=20_000)
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: 2048 (qin, qnn_alpha, din), 128 (transformer_dcn, as published)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="auto",
                   help="ours: comma-separated 32, bf16 (whole_run.py); auto: qin 32,bf16 on a CPU with bf16 kernels, "
                        "else 32")
    p.add_argument("--their-workers", type=int, default=2, help="loader processes of their MMCTRDataLoader")
    p.add_argument("--draws", default="torch",
                   help="ours: comma-separated dropout mask draws of the QNN (model.net.interaction.dropout_draw): "
                        "torch (the default), sfc64; each precision runs with each (qin, qnn_alpha)")
    p.add_argument("--our-loss", choices=("probability", "logit"), default="probability",
                   help="ours: model.bce_input (probability: their form, our default; logit: the form of the records "
                        "made before 2026-12-08)")
    p.add_argument("--their-seed", type=int, default=20242025,
                   help="their config's seed (default the published 20242025): their own seed spread")
    p.add_argument("--our-seeds", default="",
                   help="comma-separated extra seeds of ours (fp32, torch's draw): our seed spread on the same data")
    p.add_argument("--note", default=None, help="a sentence kept in the record (e.g. what else ran on the machine)")
    args = p.parse_args(argv)
    spec = MODELS[args.model]
    args.epochs = spec.epochs if args.epochs is None else args.epochs
    args.batch_size = spec.batch_size if args.batch_size is None else args.batch_size
    args.our_seeds = [int(seed) for seed in args.our_seeds.split(",") if seed]
    return args


def check_args(args: argparse.Namespace) -> None:
    """Every problem with the command line as one line, before anything is built or run."""
    if args.out is None:
        raise ConfigError("--out: missing, expected the path of the JSON record")
    for key, files in MODELS[args.model].checkouts.items():
        flag, url, repo = "--" + key.replace("_", "-"), CHECKOUT_URLS[key], getattr(args, key)
        if repo is None:
            raise ConfigError(f"{flag}: missing, --model {args.model} needs a checkout of {url} "
                              f"(git clone https://{url})")
        missing = [name for name in files if not (repo / name).is_file()]
        if missing:
            raise ConfigError(f"{flag} {repo}: no {', '.join(missing)}; expected a checkout of "
                              f"{url} (git clone https://{url})")
    for key in ("epochs", "train_rows", "valid_rows", "batch_size", "threads"):
        if getattr(args, key) < 1:
            raise ConfigError(f"--{key.replace('_', '-')}: {getattr(args, key)}, expected a positive integer")
    if args.their_workers < 0:
        raise ConfigError(f"--their-workers: {args.their_workers}, expected 0 or more")
    if args.precision == "auto":  # bf16 autocast is many times slower than fp32 without bf16 kernels
        from qin_lightning.machine import cpu_has_bf16

        args.precision = "32,bf16" if cpu_has_bf16() else "32"
    precisions = args.precision.split(",")
    if not precisions or any(p not in ("32", "bf16") for p in precisions):
        raise ConfigError(f"--precision: {args.precision!r}, expected a comma-separated list of 32, bf16")
    from qin_lightning.models.dropout import DROPOUT_DRAWS

    if any(d not in DROPOUT_DRAWS for d in args.draws.split(",")):
        raise ConfigError(f"--draws: {args.draws!r}, expected a comma-separated list of {', '.join(DROPOUT_DRAWS)}")
    if args.draws != "torch" and not MODELS[args.model].draws:
        raise ConfigError(f"--draws: {args.draws!r}, --model {args.model} has no QNN dropout draw option; "
                          f"expected torch")


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

    from qin_lightning.config import CONFIG_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONFIG_DIR):
        cfg = compose(config_name="train", overrides=overrides)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return Path(dm.data_dir), {"dir_name": Path(dm.data_dir).name, "num_items": dm.num_items,
                               "num_tags": dm.num_tags, "max_len": int(cfg.data.max_len),
                               "train_rows": len(dm.dataset("train")), "valid_rows": len(dm.dataset("valid"))}


def their_hyperparameters(args: argparse.Namespace, data: dict[str, Any]) -> dict[str, Any]:
    """Their published hyperparameters for `--model` at this batch and epoch count, as one experiment of their
    model_config.yaml: QIN's paper and config (qin, qnn_alpha), the challenge's DIN_default template with its
    MicroLens tuner (reczoo/WWW2025_MMCTR_Challenge), the winners' Transformer_DCN tuner config."""
    common = {"model": MODELS[args.model].their_model, "dataset_id": "side_by_side", "loss": "binary_crossentropy",
              "metrics": ["AUC", "logloss"], "task": "binary_classification", "optimizer": "adam",
              "batch_size": args.batch_size, "epochs": args.epochs, "shuffle": True, "seed": args.their_seed,
              "max_len": data["max_len"], "accumulation_steps": 1}
    if args.model in ("qin", "qnn_alpha"):  # the published QIN (paper section 3, their model_config.yaml)
        qin = {**common, "learning_rate": 2.0e-3, "embedding_regularizer": 2.0e-4, "net_regularizer": 0,
               "embedding_dim": 128, "num_layers": 4, "num_row": 4, "net_dropout": 0.1, "batch_norm": True,
               "monitor": {"AUC": 1, "logloss": 0}, "monitor_mode": "max", "early_stop_patience": 8,
               "factor": 0.5}
        # qnn_alpha: QIN's sizes and protocol (our conf/experiment/qnn_alpha.yaml), QNN-alpha's layer with 1 head
        return qin if args.model == "qin" else {**qin, "num_heads": 1}
    if args.model == "din":  # the challenge's DIN_default template + its MicroLens tuner (emb 64, dropout 0.1)
        return {**common, "learning_rate": 1.0e-3, "embedding_regularizer": 1.0e-7, "net_regularizer": 0,
                "embedding_dim": 64, "dnn_hidden_units": [1024, 512, 256], "dnn_activations": "ReLU",
                "attention_hidden_units": [512, 256], "attention_hidden_activations": "ReLU",
                "attention_output_activation": None, "attention_dropout": 0.1, "din_use_softmax": False,
                "net_dropout": 0.1, "batch_norm": True, "monitor": "AUC", "monitor_mode": "max",
                "early_stop_patience": 3}
    # transformer_dcn: the winners' Transformer_DCN_default + their MicroLens tuner config
    return {**common, "learning_rate": 5.0e-4, "embedding_regularizer": 0, "net_regularizer": 0,
            "embedding_dim": 64, "hidden_activations": "relu", "dcn_cross_layers": 3,
            "dcn_hidden_units": [1024, 512, 256], "mlp_hidden_units": [64, 32], "num_heads": 1,
            "transformer_layers": 2, "transformer_dropout": 0.2, "dim_feedforward": 256, "net_dropout": 0.2,
            "batch_norm": False, "first_k_cols": 16, "concat_max_pool": True, "monitor": {"AUC": 1},
            "monitor_mode": "max", "early_stop_patience": 5}


def their_configs(folder: Path, data_dir: Path, data: dict[str, Any], args: argparse.Namespace,
                  hyperparameters: dict[str, Any] | None = None) -> Path:
    """Their dataset and model config files for this data (YAML written here from the published facts);
    `hyperparameters`: the model's experiment instead of `their_hyperparameters` (trajectory.py: dropout 0)."""
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
        MODELS[args.model].their_model: hyperparameters or their_hyperparameters(args, data),
    }
    config_dir = folder / "config"
    config_dir.mkdir()
    (config_dir / "dataset_config.yaml").write_text(yaml.safe_dump(dataset, sort_keys=False))
    (config_dir / "model_config.yaml").write_text(yaml.safe_dump(model, sort_keys=False))
    return config_dir


def run_theirs(env_info: dict[str, str], args: argparse.Namespace, config_dir: Path, folder: Path,
               extra: tuple[str, ...] = ()) -> dict[str, Any]:
    """experiments/peer/their_run.py in their environment (`extra`: more of its arguments); its report plus the
    process's wall time."""
    report, threads = folder / "their_report.json", args.threads
    command = [env_info["python"], str(PEER / "their_run.py"), "--model", args.model, "--config", str(config_dir),
               "--expid", MODELS[args.model].their_model, "--threads", str(threads), "--report", str(report), *extra]
    for key in MODELS[args.model].checkouts:
        command += ["--" + key.replace("_", "-"), str(getattr(args, key).resolve())]
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
    """experiments/bench/whole_run.py for each draw and precision, on the generated data, then once more in fp32
    with torch's draw for each of `--our-seeds`; its record (runs of the sfc64 draw are named with the suffix
    `_sfc64`, the extra seeds `_seed<N>`)."""
    out = folder / "ours.json"
    extra = [o for o in overrides if o.startswith(("data.synthetic.train_rows", "data.synthetic.valid_rows",
                                                   "data.batch_size", "threads", "paths.cache_dir"))]
    variants = [(args.precision, draw, None) for draw in args.draws.split(",")]
    variants += [("32", "torch", seed) for seed in args.our_seeds]
    for precision, draw, seed in variants:
        command = [sys.executable, str(REPO / "experiments" / "bench" / "whole_run.py"), "--out", str(out),
                   "--precision", precision, "--epochs", str(args.epochs)]
        experiment = MODELS[args.model].experiment
        if experiment is not None:
            command += ["--override", f"+experiment={experiment}"]
        if draw != "torch":
            command += ["--tag", f"_{draw}", "--override", f"model.net.interaction.dropout_draw={draw}"]
        if seed is not None:  # our seed spread on the same data (their seed is the published 20242025)
            command += ["--tag", f"_seed{seed}", "--override", f"seed={seed}"]
        command += ["--override", f"model.bce_input={args.our_loss}"]
        for o in extra:
            command += ["--override", o]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: our run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def git_commit(repo: Path) -> str | None:
    done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def their_checkouts(args: argparse.Namespace) -> dict[str, Any]:
    """Each checkout the run used: its commit (None when it is not a git checkout) and the sha256 of every file
    of theirs that the run imports, so a record names their code even without a commit."""
    spec = MODELS[args.model]
    return {CHECKOUT_URLS[key]: {"commit": git_commit(getattr(args, key)),
                                 "sha256": {name: hashlib.sha256((getattr(args, key) / name).read_bytes()).hexdigest()
                                            for name in files}}
            for key, files in spec.checkouts.items()}


def main(argv: list[str] | None = None) -> int:
    from qin_lightning.errors import run_reporting_errors
    from qin_lightning.files import atomic_write_json, atomic_write_text
    from qin_lightning.machine import machine

    args = parse_args(argv)
    if args.table:  # the table, also kept in experiments/peer/table.md (the docs include it)
        text = table()
        atomic_write_text(PEER / "table.md", text)
        print(text, end="")
        return 0
    run_reporting_errors(lambda: check_args(args))
    spec = MODELS[args.model]
    venv = args.venv or Path(os.environ.get("QIN_CACHE_DIR", REPO / ".cache" / "qin")) / "peer-venv"
    record: dict[str, Any] = {
        "command": "python experiments/peer/side_by_side.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": {**machine(), "cpu_count": os.cpu_count()},
        "their_repo_commit": git_commit(args.qin_repo) if args.qin_repo else None, "their_model": spec.their_model,
        "settings": {"epochs": args.epochs, "batch_size": args.batch_size, "threads": args.threads,
                     "bce_input_ours": args.our_loss, "their_seed": args.their_seed,
                     "their_loader_workers": args.their_workers, "precision_ours": args.precision,
                     "draws_ours": args.draws},
    }
    if args.model != "qin":  # the QIN record keeps its published format
        record = {"model": args.model, **record, "their_checkouts": their_checkouts(args),
                  "their_hyperparameters": None, "ours_experiment": f"+experiment={spec.experiment}",
                  "note": args.note}
    env_info = ensure_venv(venv)
    record["their_environment"] = {k: v for k, v in env_info.items() if k != "python"}
    with tempfile.TemporaryDirectory(prefix="qin_side_by_side_") as tmp:
        folder = Path(tmp)
        overrides = size_overrides(args, folder / "cache")
        data_dir, record["data"] = generate_data(overrides)
        config_dir = their_configs(folder, data_dir, record["data"], args)
        if args.model != "qin":
            record["their_hyperparameters"] = their_hyperparameters(args, record["data"])
        record["theirs"] = run_theirs(env_info, args, config_dir, folder)
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
    if args.model != "qin":
        record["fidelity"] = fidelity(record)
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(args.out, record)
    for name, run in runs.items():
        print(f"ours {name}: wall {run['wall_s']} s; theirs / ours: wall "
              f"{record['ratio_their_wall_to_ours'][name]}x, fit {record['ratio_their_fit_to_ours'][name]}x")
    return 0


def our_reference_run(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Our run the table compares: the first fp32 run with torch's dropout draw (no name suffix)."""
    runs = record["ours"]["runs"]
    name = next(n for n in runs if n.startswith("fp32_") and n.endswith("ep"))
    return name, runs[name]


def fidelity(record: dict[str, Any]) -> dict[str, Any]:
    """The issue's fidelity goal on one record: parameter counts equal; validation AUC within 0.01 of theirs at
    epoch 1 and at each side's best epoch (our fp32 run with torch's draw)."""
    _, ours = our_reference_run(record)
    their_auc = [e["AUC"] for e in record["theirs"]["val_history"]]
    our_auc = [e["auc"] for e in ours["val_history"]]
    epoch1, best = our_auc[0] - their_auc[0], max(our_auc) - max(their_auc)
    result = {"params_equal": record["theirs"]["n_params"] == ours["n_params"],
              "auc_epoch1_ours_minus_theirs": round(epoch1, 4), "auc_best_ours_minus_theirs": round(best, 4),
              "within_0.01": abs(epoch1) <= 0.01 and abs(best) <= 0.01}
    seeds = [run for n, run in record["ours"]["runs"].items() if "_seed" in n]
    if seeds:  # ours over its seeds (the reference run's seed included): how far epoch 1 and the best move alone
        curves = [[e["auc"] for e in run["val_history"]] for run in [ours, *seeds]]
        result["ours_over_seeds"] = {"runs": len(curves),
                                     "auc_epoch1_range": [round(min(c[0] for c in curves), 4),
                                                          round(max(c[0] for c in curves), 4)],
                                     "auc_best_range": [round(min(max(c) for c in curves), 4),
                                                        round(max(max(c) for c in curves), 4)]}
    return result


def step_agreement(folder: Path, model: str) -> str:
    """What the trajectory record of `model` (experiments/peer/trajectory.py: the same initial weights and batches,
    dropout off, with their loss form on our side where it differs) says of single training steps: each step run
    alone from their weights ("teacher-forced"), else the first steps of one free run; "–" without a record."""
    path = next((p for p in (folder / f"trajectory_{model}_fuxictr_loss.json", folder / f"trajectory_{model}.json")
                 if p.is_file()), None)
    if path is None:
        return "–"
    record = json.loads(path.read_text())
    summary, steps = record["summary"], record["settings"]["steps"]
    forced = [summary.get(k) for k in ("teacher_forced_clean_steps", "teacher_forced_steps_with_such_rows")]
    forced = [f for f in forced if f and f["steps"]]
    if forced:
        worst = max(f["max_loss_rel_diff"] for f in forced)
        return f"{sum(f['steps'] for f in forced)} of {steps} steps, each alone: loss within {worst:.1e}"
    return f"first {summary['free_steps_loss_within_1e-5']} of {steps} steps in one run: loss within 1e-5"


def table(folder: Path = PEER) -> str:
    """The table 'our model vs its authors' code': one line per committed record (MODELS order)."""
    lines = ["| model | their code | rows (train / valid), epochs, batch | parameters (theirs / ours) | "
             "our loss (`model.bce_input`) | AUC epoch 1 (theirs / ours) | best AUC (theirs / ours) | "
             "their fit / our fit | same weights and batches, their loss form |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, spec in MODELS.items():
        path = folder / spec.record
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        name, ours = our_reference_run(record)
        their_auc = [e["AUC"] for e in record["theirs"]["val_history"]]
        our_auc = [e["auc"] for e in ours["val_history"]]
        data, settings = record["data"], record["settings"]
        lines.append(
            f"| {model} | {record['their_model']} | {data['train_rows']:,} / {data['valid_rows']:,}, "
            f"{settings['epochs']}, {settings['batch_size']} | {record['theirs']['n_params']:,} / "
            f"{ours['n_params']:,} | {settings.get('bce_input_ours', 'logit')} | "  # logit: records made before it
            f"{their_auc[0]:.4f} / {our_auc[0]:.4f} | {max(their_auc):.4f} / "
            f"{max(our_auc):.4f} | {record['ratio_their_fit_to_ours'][name]:.2f}x | {step_agreement(folder, model)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
