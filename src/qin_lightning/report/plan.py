"""A converged sweep's plan: ``<folder>.yaml`` beside the sweep folder ``<folder>`` with ``name: <folder>``
(experiments/converged/sweep.py's plans; keys ``name, experiments, seeds, overrides, per_experiment`` and
optionally ``baseline: {plan: <sibling plan file>, experiment: E}``). The plan says which rows compare with
which: one row per experiment (its shrink options in ``per_experiment`` do not split it from the comparison),
each against the plan's ``qin`` row, or against row E of a sibling plan's records.

Read with the report's bounds (size, depth, no aliases); a plan names a sibling plan by its file name only, so
the report never reads beyond the sweep folder's own folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qin_lightning.errors import QinError
from qin_lightning.report.collect import Run, Unreadable, find_runs, read_yaml_strict

PLAN_SUFFIX = ".yaml"


@dataclass(frozen=True)
class Plan:
    """The parts of a plan the report reads."""

    path: Path
    name: str
    experiments: list[str]
    seeds: list[int]
    overrides: list[str]
    per_experiment: dict[str, list[str]] = field(default_factory=dict)
    baseline: tuple[str, str] | None = None  # (sibling plan file name, experiment)

    @property
    def folder(self) -> Path:
        return self.path.parent / self.name

    def max_epochs(self) -> int | None:
        """``trainer.max_epochs`` set for every row, if the plan sets it."""
        for option in self.overrides:
            key, _, value = option.partition("=")
            if key == "trainer.max_epochs":
                try:
                    return int(value)
                except ValueError:
                    raise QinError(f"{self.path}: overrides: trainer.max_epochs={value[:40]}: expected an "
                                   "integer") from None
        return None


def _strings(value: Any, path: Path, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise QinError(f"{path}: key '{key}': expected a list of strings")
    return [str(v) for v in value]


def load_plan(path: Path) -> Plan:
    """The plan at ``path``; QinError (one line) when it is not one."""
    try:
        data = read_yaml_strict(path)
    except Unreadable as err:
        raise QinError(str(err)) from None
    if not isinstance(data, dict):
        raise QinError(f"{path}: expected a mapping with name, experiments, seeds")
    for key in ("name", "experiments", "seeds"):
        if key not in data:
            raise QinError(f"{path}: key '{key}': missing")
    name = data["name"]
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise QinError(f"{path}: key 'name': expected a folder name")
    seeds = data["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise QinError(f"{path}: key 'seeds': expected a list of integers")
    shrink = data.get("per_experiment") or {}
    if not isinstance(shrink, dict):
        raise QinError(f"{path}: key 'per_experiment': expected a mapping of experiment -> overrides")
    baseline = data.get("baseline")
    parsed_baseline = None
    if baseline:
        if not (isinstance(baseline, dict) and isinstance(baseline.get("plan"), str)
                and isinstance(baseline.get("experiment"), str)):
            raise QinError(f"{path}: key 'baseline': expected {{plan: <file>, experiment: <name>}}")
        other = baseline["plan"]
        if Path(other).name != other or other in (".", ".."):
            raise QinError(f"{path}: key 'baseline.plan': {other[:80]!r}: expected the file name of a plan beside "
                           "this one")
        parsed_baseline = (other, baseline["experiment"])
    return Plan(path, name, _strings(data["experiments"], path, "experiments"), list(seeds),
                _strings(data.get("overrides") or [], path, "overrides"),
                {str(e): _strings(o, path, f"per_experiment.{e}") for e, o in shrink.items()}, parsed_baseline)


def find_plan(sweep_dir: Path) -> Plan | None:
    """The plan of a converged sweep folder (``<folder>.yaml`` beside it, naming it), or None."""
    path = sweep_dir.parent / (sweep_dir.name + PLAN_SUFFIX)
    if not path.is_file():
        return None
    plan = load_plan(path)
    return plan if plan.name == sweep_dir.name else None


def baseline_runs(plan: Plan) -> tuple[str, str, list[Run]] | None:
    """(label, experiment, runs) of the plan's ``baseline``; None: the plan's own ``qin`` row."""
    if plan.baseline is None:
        return None
    other_file, experiment = plan.baseline
    other = load_plan(plan.path.parent / other_file)
    runs = [r for r in find_runs(other.folder) if r.problem is None and r.experiment == experiment]
    if not runs:
        raise QinError(f"{plan.path}: key 'baseline': no completed records of {experiment!r} under "
                       f"{other.name}/runs (run its sweep first)")
    return f"{other.name}/{experiment}", experiment, runs
