"""Collect a sweep's runs into rows: every ``<run>/results.json`` below a folder and every ``runs/<run>.json``
record copied out of a sweep, grouped by experiment and by every non-seed override that varies between runs.

Records are read strictly: a file over MAX_RECORD_BYTES is refused before it is read, and a field of the wrong
type (a string AUC, a list where a number belongs, a `trainer` that is not a mapping, a null AUC) makes the run
unreadable, listed with one line (file, key, expected, got) while the report goes on. A run's kept test
predictions are ``<run>/test.preds.parquet`` (training) or ``<run>/eval_test.preds.parquet`` (qin-eval), or for a
record ``runs/<run>.preds.parquet``.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from qin_lightning.errors import QinError

# Validation AUC on MicroLens_1M_MMCTR (paper Tables 2 and 3).
PAPER_AUC: dict[str, float] = {
    "din": 0.8655,
    "qin": 0.9701,
    "ablation_no_qnn": 0.7396,
    "ablation_no_asta": 0.9321,
    "ablation_softmax": 0.9490,
    "ablation_relu": 0.9584,
    "ablation_dropout": 0.9681,
}
PAPER_ROW: dict[str, str] = {
    "din": "DIN (official baseline)",
    "qin": "QIN",
    "ablation_no_qnn": "QIN w/o QNN",
    "ablation_no_asta": "QIN w/o ASTA",
    "ablation_softmax": "ASTA w/ SoftMax",
    "ablation_relu": "QNN w/o PReLU",
    "ablation_dropout": "ASTA w/ Dropout",
    "attention_silu": "ASTA w/ SiLU",
    "attention_relu2": "ASTA w/ ReLU^2",
    "qnn_alpha": "QIN + QNN-alpha (self-ensemble)",  # beyond the paper: no paper AUC
    "transformer_dcn": "Transformer+DCNv2 (1st place)",  # beyond the paper: valid 0.9766 in the winners' report
}
ORDER = list(PAPER_ROW)
# overrides that never split rows: the seed is what a row averages, the experiment has its own column, and
# `ckpt_path` only says that a run was resumed (an exact resume continues the same run)
NOT_A_ROW_KEY = ("seed", "experiment", "ckpt_path")
DEFAULT_MAX_EPOCHS = 100  # conf/trainer/default.yaml
PRECISION = "trainer.precision"  # rows split by the precision a run trained in, not by how the command said it
BF16_TRAINERS = ("cpu_bf16", "gpu")  # the trainer configs that set bf16-mixed before trainer.precision=auto
MAX_RECORD_BYTES = 1 << 20  # a results.json is ~10 KB; anything past 1 MiB is refused unread
MAX_DEPTH = 32  # nesting of a record or config the report parses (Hydra's configs: under 10)
PREDICTION_FILES = ("test.preds.parquet", "eval_test.preds.parquet")  # in a run folder, in this order


class Unreadable(Exception):
    """A record or config the report cannot use; the message is the one line it lists."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# key of a record -> (what it must be, the check); a missing key is fine (older records), null only where allowed
RECORD_FIELDS: dict[str, tuple[str, Any]] = {
    "status": ("a string", lambda v: isinstance(v, str)),
    "experiment": ("a string", lambda v: isinstance(v, str)),
    "error": ("a string", lambda v: isinstance(v, str)),
    "seed": ("an integer", _integer),
    "best_val_auc": ("a number", _number),
    "best_val_logloss": ("a number", _number),
    "best_epoch": ("an integer", _integer),
    "epochs_trained": ("an integer", _integer),
    "stop_reason": ("a string", lambda v: isinstance(v, str)),
    "test_auc": ("a number", _number),
    "overrides": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v)),
    "val_history": ("a list of {epoch, auc: number}",
                    lambda v: isinstance(v, list) and all(isinstance(h, dict) and _number(h.get("auc")) for h in v)),
    "test_eval": ("a mapping with a number 'auc'", lambda v: isinstance(v, dict) and _number(v.get("auc"))),
    "data_dir": ("a string", lambda v: isinstance(v, str)),
    "precision": ("a string", lambda v: isinstance(v, str)),
}
NULLABLE = {"experiment", "error", "seed", "best_epoch", "stop_reason", "overrides", "val_history", "data_dir",
            "best_val_logloss"}


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return f"{type(value).__name__ if value is not None else 'null'} {text[:40]}{'...' if len(text) > 40 else ''}"


def check_record(record: Any, path: Path) -> None:
    """Raise Unreadable naming the first key of ``record`` whose value has the wrong type."""
    if not isinstance(record, dict):
        raise Unreadable(f"{path}: expected a JSON object, got {_shown(record)}")
    for key, (expected, ok) in RECORD_FIELDS.items():
        if key not in record or (record[key] is None and key in NULLABLE):
            continue
        if not ok(record[key]):
            raise Unreadable(f"{path}: key '{key}': expected {expected}, got {_shown(record[key])}")


def read_bounded(path: Path) -> str:
    """The text of a record or config, refused unread beyond MAX_RECORD_BYTES."""
    try:
        size = path.stat().st_size
        if size > MAX_RECORD_BYTES:
            raise Unreadable(f"{path}: {size:,} bytes: expected at most {MAX_RECORD_BYTES:,} (refused unread)")
        return path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise Unreadable(f"{path}: cannot read ({err})") from None


@dataclass
class Run:
    """One run of the sweep: its record (None when it never wrote one) and its command-line overrides."""

    name: str  # run folder (or record file) relative to the sweep folder
    record: dict[str, Any] | None
    overrides: dict[str, str]
    problem: str | None = None  # why the run is not in the table (failed, incomplete, unreadable)
    max_epochs: int | None = None  # from the run's .hydra/config.yaml, when there is one
    predictions: Path | None = None  # the kept test predictions, when there are any
    override_list: tuple[str, ...] = ()  # the overrides as given (``+experiment=qin``, ``model/attention=relu``)
    model_config: Any = None  # the run's own composed ``model`` subtree (.hydra/config.yaml), when there is one

    @property
    def seed(self) -> int | None:
        return (self.record or {}).get("seed")

    @property
    def test_auc(self) -> float | None:
        """The test AUC of the best weights: qin-eval's (`test_eval`) where the sweep ran it, else test_after_fit's."""
        record = self.record or {}
        value = (record.get("test_eval") or {}).get("auc", record.get("test_auc"))
        return float(value) if value is not None else None

    @property
    def data_dir(self) -> str | None:
        """The data folder the test AUC was computed on."""
        record = self.record or {}
        return (record.get("test_eval") or {}).get("data_dir") or record.get("data_dir")

    @property
    def experiment(self) -> str:
        if self.record and self.record.get("experiment"):
            return str(self.record["experiment"])
        return self.overrides.get("experiment", "unknown")

    @property
    def stop_reason(self) -> str:
        """results.json's ``stop_reason``; for older records inferred from the epochs trained."""
        if self.problem is not None:
            return "failed"
        assert self.record is not None
        if self.record.get("stop_reason"):
            return str(self.record["stop_reason"])
        cap = self.max_epochs or int(self.overrides.get("trainer.max_epochs", DEFAULT_MAX_EPOCHS))
        return "max_epochs" if int(self.record.get("epochs_trained") or 0) >= cap else "early_stopping"


@dataclass
class Row:
    """The runs of one experiment with one setting of the varying overrides."""

    experiment: str
    setting: tuple[tuple[str, str], ...]  # (key, value) of every varying override, in column order
    runs: list[Run] = field(default_factory=list)
    show_experiment: bool = True  # False where every run of the sweep has the same experiment: not a row name
    paper: str | None = None  # the paper experiment whose composed model this row's is (report.paper)

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.problem is None]

    @property
    def aucs(self) -> list[float]:
        return [float(r.record["best_val_auc"]) for r in self.completed if r.record]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.aucs)

    @property
    def std(self) -> float:
        return statistics.stdev(self.aucs) if len(self.aucs) > 1 else 0.0

    @property
    def label(self) -> str:
        """The row's name: the overrides its runs set that differ between the sweep's runs (``model/attention=
        softmax``), after the experiment where experiments differ (the converged grid: just the experiment)."""
        swept = [f"{k}={_short(v)}" for k, v in self.setting if v != "–"]
        return " ".join([self.experiment, *swept] if self.show_experiment or not swept else swept)

    def count(self, reason: str) -> int:
        return sum(r.stop_reason == reason for r in self.runs)

    def histories(self) -> list[list[float]]:
        """Validation AUC by epoch of every completed run that recorded it."""
        return [[float(h["auc"]) for h in r.record["val_history"]] for r in self.completed
                if r.record and r.record.get("val_history")]  # fmt: skip


@dataclass
class Collected:
    rows: list[Row]
    varying: list[str]  # override keys that split rows
    problems: list[tuple[str, str]]  # (run, what is wrong)
    sweep: dict[str, Any]  # the sweep folder's multirun.yaml ({} when absent)

    @property
    def is_optuna(self) -> bool:
        return "optuna" in str(self.sweeper.get("_target_", "")).lower()

    @property
    def sweeper(self) -> dict[str, Any]:
        """The sweep's ``hydra.sweeper`` node ({} where absent or not a mapping)."""
        hydra = self.sweep.get("hydra")
        sweeper = hydra.get("sweeper") if isinstance(hydra, dict) else None
        return sweeper if isinstance(sweeper, dict) else {}

    def row(self, experiment: str, setting: tuple[tuple[str, str], ...]) -> Row | None:
        return next((r for r in self.rows if r.experiment == experiment and r.setting == setting), None)

    def named(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)

    def shared_overrides(self) -> tuple[str, ...]:
        """The overrides every completed run of the sweep was given (its fixed settings), seed, experiment and
        resume left out, in the first run's order."""
        done = [r for row in self.rows for r in row.completed]
        if not done:
            return ()
        common = set(done[0].override_list).intersection(*(r.override_list for r in done[1:]))
        return tuple(o for o in done[0].override_list if o in common
                     and o.partition("=")[0].lstrip("+~") not in NOT_A_ROW_KEY)


def parse_overrides(overrides: list[str]) -> dict[str, str]:
    """``["+experiment=qin", "seed=1"]`` -> ``{"experiment": "qin", "seed": "1"}`` (``+``/``++``/``~`` dropped)."""
    parsed: dict[str, str] = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases (no file the report reads uses them; an alias bomb of 1 KB expands
    to gigabytes) and at most MAX_DEPTH levels of nesting."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not accepted",
                                              self.peek_event().start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def parse_yaml(text: str, path: Path) -> Any:
    """YAML text as data (bounded depth, no aliases); Unreadable (one line) otherwise."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, ValueError, RecursionError) as err:  # ValueError: an integer over 4,300 digits
        first = " ".join(str(err).split())[:160]
        raise Unreadable(f"{path}: not YAML the report accepts ({first})") from None


def parse_json(text: str, path: Path) -> Any:
    """JSON text as data (bounded depth: MAX_DEPTH); Unreadable (one line) otherwise."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise Unreadable(f"{path}: nested deeper than Python can parse (expected at most {MAX_DEPTH} levels)") from None
    except ValueError as err:  # JSONDecodeError, or an integer over 4,300 digits
        raise Unreadable(f"{path}: not JSON the report accepts ({' '.join(str(err).split())[:160]})") from None
    if _depth(data) > MAX_DEPTH:
        raise Unreadable(f"{path}: nested deeper than {MAX_DEPTH} levels")
    return data


def _depth(data: Any) -> int:
    """Nesting depth of parsed JSON (iterative: no recursion limit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, level + 1) for v in item]
    return deepest


def read_yaml_strict(path: Path) -> Any:
    """A YAML file as data; None when absent; Unreadable (one line) when unreadable, oversized or malformed."""
    return parse_yaml(read_bounded(path), path) if path.is_file() else None


def read_yaml(path: Path) -> Any:
    """A YAML file as data; None when it is absent, unreadable, over MAX_RECORD_BYTES or malformed."""
    try:
        return read_yaml_strict(path)
    except Unreadable:
        return None


def _max_epochs(config: Any, path: Path) -> int | None:
    """``trainer.max_epochs`` of a run's .hydra/config.yaml (None when absent)."""
    if config is None:
        return None
    if not isinstance(config, dict):
        raise Unreadable(f"{path}: expected a mapping, got {_shown(config)}")
    trainer = config.get("trainer")
    if trainer is None:
        return None
    if not isinstance(trainer, dict):
        raise Unreadable(f"{path}: key 'trainer': expected a mapping, got {_shown(trainer)}")
    value = trainer.get("max_epochs")
    if value is not None and not _integer(value):
        raise Unreadable(f"{path}: key 'trainer.max_epochs': expected an integer, got {_shown(value)}")
    return value


INTEGER_OVERRIDES = ("seed", "trainer.max_epochs")  # overrides the report reads as integers


def _override_list(value: Any, path: Path) -> list[str] | None:
    """A run's overrides (``.hydra/overrides.yaml`` or a record's ``overrides``): a list of ``key=value`` strings,
    the ones the report reads as integers checked; Unreadable (one line) otherwise."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(o, str) for o in value):
        raise Unreadable(f"{path}: expected a list of override strings, got {_shown(value)}")
    for key, override in parse_overrides(value).items():
        if key in INTEGER_OVERRIDES and override.lower() != "null":
            try:
                int(override)
            except ValueError:
                raise Unreadable(f"{path}: override {key}={override[:40]}: expected an integer") from None
    return value


def _kept_predictions(record_path: Path, run_dir: Path | None) -> Path | None:
    candidates = [run_dir / name for name in PREDICTION_FILES] if run_dir else [
        record_path.with_name(record_path.stem + ".preds.parquet")]
    return next((p for p in candidates if p.is_file()), None)


def _load_run(name: str, record_path: Path, run_dir: Path | None) -> Run:
    hydra_overrides = None
    try:
        overrides_path = run_dir / ".hydra" / "overrides.yaml" if run_dir else record_path
        hydra_overrides = _override_list(read_yaml_strict(overrides_path) if run_dir else None, overrides_path)
        run_config = read_yaml_strict(run_dir / ".hydra" / "config.yaml") if run_dir else None
        max_epochs = _max_epochs(run_config, run_dir / ".hydra" / "config.yaml" if run_dir else record_path)
        if not record_path.exists():
            overrides = parse_overrides(hydra_overrides or [])
            return Run(name, None, overrides, "incomplete: no results.json (still running, killed or crashed)",
                       max_epochs)
        record = parse_json(read_bounded(record_path), record_path)
        check_record(record, record_path)
        _override_list(record.get("overrides"), record_path)
    except Unreadable as err:
        return Run(name, None, parse_overrides(hydra_overrides or []), f"unreadable: {err}")
    override_list = tuple(str(o) for o in (record.get("overrides") or hydra_overrides or []))
    overrides = parse_overrides(list(override_list))
    overrides[PRECISION] = trained_precision(record, overrides)
    run = Run(name, record, overrides, None, max_epochs, _kept_predictions(record_path, run_dir), override_list,
              run_config.get("model") if isinstance(run_config, dict) else None)
    if record.get("status") != "completed":
        run.problem = f"{record.get('status', 'unknown')}: {record.get('error', 'no error message')}"
    elif record.get("best_val_auc") is None or not math.isfinite(record["best_val_auc"]):
        run.problem = "completed without a validation AUC (e.g. fast_dev_run)"
    return run


def trained_precision(record: dict[str, Any], overrides: dict[str, str]) -> str:
    """The precision a run trained in: its record's ``precision`` (written since trainer.precision=auto); for an
    older record, what its overrides composed to then (32-true unless they said otherwise or chose a bf16 trainer
    config). A plan that later states the fp32 it always used therefore keeps its rows whole."""
    if record.get("precision") is not None:
        return str(record["precision"])
    if PRECISION in overrides:
        return overrides[PRECISION]
    return "bf16-mixed" if overrides.get("trainer") in BF16_TRAINERS else "32-true"


def find_runs(sweep_dir: Path) -> list[Run]:
    """Every run folder below ``sweep_dir`` (started or finished) and every ``runs/*.json`` record."""
    started = {p.parent.parent for p in sweep_dir.rglob(".hydra/config.yaml")}
    run_dirs = sorted(started | {p.parent for p in sweep_dir.rglob("results.json")})
    runs = [_load_run(str(d.relative_to(sweep_dir)) or ".", d / "results.json", d) for d in run_dirs]
    records = sorted((sweep_dir / "runs").glob("*.json")) if (sweep_dir / "runs").is_dir() else []
    runs += [_load_run(str(p.relative_to(sweep_dir)), p, None) for p in records]
    return runs


def _short(value: str) -> str:
    """A float override value with 4 significant digits (Optuna samples carry 16)."""
    try:
        return f"{float(value):.4g}" if any(c in value for c in ".e") else value
    except ValueError:
        return value


def _sort_key(value: str) -> tuple[int, float, str]:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def collect(sweep_dir: Path, by_experiment: bool = False) -> Collected:
    """Group the runs into rows: experiment x every non-seed override whose value differs between runs; with
    ``by_experiment`` (a converged plan's folder: the plan says which rows compare with which, and its shrink
    options for one model do not split that model) one row per experiment."""
    runs = find_runs(sweep_dir)
    done = [r for r in runs if r.problem is None] or runs  # a run that failed or never finished does not split
    keys = sorted({k for r in done for k in r.overrides if k not in NOT_A_ROW_KEY})
    varying = [] if by_experiment else [k for k in keys if len({r.overrides.get(k) for r in done}) > 1]
    rows: dict[tuple[str, tuple[tuple[str, str], ...]], Row] = {}
    show_experiment = by_experiment or len({r.experiment for r in done}) > 1
    for run in runs:
        setting = tuple((k, run.overrides.get(k, "–")) for k in varying)
        rows.setdefault((run.experiment, setting), Row(run.experiment, setting, [], show_experiment)).runs.append(run)
    rank = {name: i for i, name in enumerate(ORDER)}
    ordered = sorted(
        rows.values(),
        key=lambda r: (rank.get(r.experiment, len(ORDER)), r.experiment, [_sort_key(v) for _, v in r.setting]),
    )
    problems = [(r.name, r.problem) for r in runs if r.problem is not None]
    return Collected(ordered, varying, problems, sweep_config(sweep_dir))


def sweep_config(sweep_dir: Path) -> dict[str, Any]:
    """The sweep's configuration with its ``hydra`` node: ``multirun.yaml`` (basic sweeper), else the first job's
    ``.hydra/config.yaml`` + ``.hydra/hydra.yaml`` (the Optuna sweeper writes no multirun.yaml); {} if none."""
    multirun = _sweep_file(sweep_dir / "multirun.yaml")
    if multirun is not None:
        return multirun
    for hydra_file in sorted(sweep_dir.glob("*/.hydra/hydra.yaml")):
        config, hydra = read_yaml(hydra_file.with_name("config.yaml")), _sweep_file(hydra_file)
        if isinstance(config, dict) and hydra is not None:
            return {**config, "hydra": hydra.get("hydra", {})}
    return {}


def _sweep_file(path: Path) -> dict[str, Any] | None:
    """A sweep-level Hydra file (multirun.yaml, a job's hydra.yaml): a mapping whose ``hydra`` node, if any, is a
    mapping; None when absent; QinError (one line) when it is not what Hydra writes."""
    try:
        data = read_yaml_strict(path)
    except Unreadable as err:
        raise QinError(str(err)) from None
    if data is None:
        return None
    if not isinstance(data, dict):
        raise QinError(f"{path}: expected a mapping, got {_shown(data)}")
    if "hydra" in data and not isinstance(data["hydra"], dict):
        raise QinError(f"{path}: key 'hydra': expected a mapping, got {_shown(data['hydra'])}")
    return data
