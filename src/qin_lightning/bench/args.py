"""What defines a benchmark run: `BenchArgs` (each flag and its help stated once) and the measured configurations."""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from qin_lightning.errors import ConfigError

PRECISIONS = ("32", "bf16")
MODELS = ("qin", "din")
TRAIN_BATCHES = ("auto", "loader", "device")
PROG = "python -m qin_lightning.bench"
DESCRIPTION = "Benchmark the plain (paper-literal) and fast (exact) paths side by side."


def option(default: object, help: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None) -> object:
    """A BenchArgs field with its command-line help (and choices, or a flag name other than `--field-name`)."""
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


def default_data_root() -> str:
    return os.path.join(os.environ.get("QIN_CACHE_DIR", ".cache/qin"), "synthetic")


@dataclass
class BenchArgs:
    """Everything that defines a run (recorded verbatim in the JSON); every field is a command-line flag."""

    model: str = option("qin", "the model config (`model=NAME`) when no --experiment is given", choices=MODELS)
    experiment: str | None = option(
        None, "NAME[,NAME...]: measure `+experiment=NAME` (conf/experiment/, any model) instead of --model; several "
              "names are measured in turn into one JSON; only the experiment's model config is used (data and batch "
              "size stay the bench's)")
    data_scale: str = option("bench", "bench: MicroLens vocab with --train-rows rows; microlens: 3.6M train rows; "
                                      "converged: the converged MovieLens shapes (ml-latest-small vocabulary, "
                                      "20-long histories, 88%% full); tiny: tests",
                             choices=("bench", "microlens", "converged", "tiny"))
    train_rows: int = option(100_000, "training rows of the bench dataset")
    eval_rows: int = option(10_000, "validation rows (AUC parity, inference)")
    batch_size: int = option(2048, "batch size of training and inference")
    rounds: int = option(5, "rounds; every round measures every configuration (the median is reported)")
    train_steps: int = option(2, "training steps per configuration and round")
    infer_batches: int = option(2, "inference batches per configuration and round")
    requests: int = option(1_000, "single requests for the eager latency")
    onnx_requests: int = option(10_000, "single requests for each ONNX latency (cycling over the --requests inputs;"
                                        " cheap per request: a longer window makes the p99 less a matter of luck)")
    threads: int = option(2, "intra-op threads")
    device: str = option("cpu", "cpu | cuda | cuda:N")
    precision: str = option("32", "32 | bf16 | 32,bf16: measure every precision side by side in each round (bf16: "
                                  "autocast, fp32 weights); the first gets the plain and fast keys, the others "
                                  "`bf16_*` (fast paths)")
    train_batches: str = option("auto", "device: training batches indexed from device-resident columns (auto: on "
                                        "CUDA only); loader: the datamodule's batches", choices=TRAIN_BATCHES)
    compile: bool = option(False, "torch.compile the training forward (CTRModule)")
    epoch: bool = option(False, "also time one whole training epoch with the fast paths")
    onnx: bool = option(True, "skip the ONNX export and latency", flag="--no-onnx")
    data_only: bool = option(False, "only generate/load the data, record its load time and memory")
    data_root: str = field(default_factory=default_data_root,
                           metadata={"help": "where the bench datasets are generated ($QIN_CACHE_DIR/synthetic)"})
    seed: int = option(20242025, "seed of the data and the weights")
    overrides: list[str] = field(default_factory=list, metadata={
        "help": "Hydra override of the composed config, e.g. model.net.embedding_dim=64 (repeatable); "
                "NAME:key=value applies to --experiment NAME only, e.g. transformer_dcn:model.net.cross_rank=64",
        "flag": "--override"})


def parser(description: str = DESCRIPTION) -> argparse.ArgumentParser:
    """The command line of BenchArgs, built from its fields (flag, type, default and help from the field)."""
    p = argparse.ArgumentParser(prog=PROG, description=description)
    defaults = BenchArgs()
    for f in dataclasses.fields(BenchArgs):
        meta, default = f.metadata, getattr(defaults, f.name)
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action="store_false" if default else "store_true", help=meta["help"])
        elif isinstance(default, list):
            p.add_argument(flag, dest=f.name, action="append", default=[], help=meta["help"])
        else:
            kind = type(default) if default is not None else str
            p.add_argument(flag, dest=f.name, type=kind, default=default, choices=meta.get("choices"),
                           help=meta["help"])
    p.add_argument("--out", type=Path, default=None, help="write the JSON record here (atomically)")
    return p


def parse_args(argv: list[str] | None = None, description: str = DESCRIPTION) -> tuple[BenchArgs, Path | None]:
    """(BenchArgs, --out) from the command line."""
    values = vars(parser(description).parse_args(argv))
    out = values.pop("out")
    return BenchArgs(**values), out


@dataclass(frozen=True)
class Config:
    """One measured configuration: the paths (plain / fast) and the precision; `prefix` names its record keys."""

    name: str  # plain | fast | bf16 (the fast paths under bf16 autocast) ...
    fast: bool
    precision: str  # 32 | bf16
    prefix: str  # "plain_" | "" | "bf16_": e.g. {prefix}train_samples_per_s


def overrides_for(args: BenchArgs, names: list[str]) -> dict[str, list[str]]:
    """Experiment name -> its Hydra overrides: every plain --override, then the `NAME:key=value` ones of that name."""
    shared, own = [], {name: [] for name in names}
    for text in args.overrides:
        head, sep, rest = text.partition(":")
        if not sep or "=" in head:  # key=value (a value may hold ':', e.g. ${oc.env:X})
            shared.append(text)
        elif head in own:
            own[head].append(rest)
        else:
            raise ConfigError(f"--override {text}: {head!r} is not one of the measured experiments "
                              f"({', '.join(names) or 'none: give --experiment'})")
    return {name: [*shared, *own[name]] for name in names}


def precisions_of(args: BenchArgs) -> tuple[str, ...]:
    """`--precision 32,bf16` -> ("32", "bf16"); every name checked."""
    names = tuple(p.strip() for p in args.precision.split(","))
    if not names or any(p not in PRECISIONS for p in names) or len(set(names)) != len(names):
        raise ConfigError(f"--precision: {args.precision!r}, expected a comma-separated list of distinct values "
                          f"from {', '.join(PRECISIONS)} (e.g. 32,bf16)")
    return names


def configurations(precisions: tuple[str, ...]) -> list[Config]:
    """plain and fast in the first precision (today's keys), then the fast paths in every other precision."""
    main = precisions[0]
    configs = [Config("plain", False, main, "plain_"), Config("fast", True, main, "")]
    return configs + [Config(p, True, p, f"{p}_") for p in precisions[1:]]


def check(args: BenchArgs) -> None:
    """What argparse cannot check (run() is also called from Python)."""
    if args.model not in MODELS:
        raise ConfigError(f"--model: unknown value {args.model!r}, expected one of {', '.join(MODELS)}")
    if args.experiment is not None and "," in args.experiment:
        raise ConfigError(f"--experiment {args.experiment}: one experiment per run() (run_all takes a list)")
    if args.train_batches not in TRAIN_BATCHES:
        raise ConfigError(f"--train-batches: unknown value {args.train_batches!r}, expected one of "
                          f"{', '.join(TRAIN_BATCHES)}")
    precisions_of(args)
