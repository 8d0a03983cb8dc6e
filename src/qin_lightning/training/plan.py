"""A plan's converged grid as one Hydra multirun: every (experiment, seed) trained to early stopping, one run
folder each, its record committed beside the plan.

    qin-train -m hydra/sweeper=plan hydra.sweeper.plan=experiments/converged/synthetic.yaml
    qin-train -m hydra/sweeper=plan hydra.sweeper.plan=PLAN hydra.sweeper.dry_run=true   # the jobs, nothing runs
    qin-train -m hydra/sweeper=plan hydra.sweeper.plan=PLAN hydra/launcher=submitit_local hydra.sweeper.max_batch_size=2
    qin-train -m hydra/sweeper=plan hydra.sweeper.plan=PLAN hydra/launcher=slurm hydra.launcher.timeout_min=600

A plan (YAML) names the experiments, the seeds, the overrides shared by every row and per-experiment ones
(`name`, `experiments`, `seeds`, `overrides`, `per_experiment`). `PlanSweeper` (Hydra's sweeper slot; the
launcher is any Hydra launcher: in-process one after another, submitit's local processes or SLURM) expands it
into jobs `+experiment=E seed=S <overrides> <per_experiment[E]> <command-line overrides>`, each in the run
folder `<runs_dir>/<E>_seed<S>` (default `<paths.log_dir>/converged/<name>`):
- a job whose committed record (`<plan dir>/<name>/runs/<E>_seed<S>.json`) or run folder's `results.json` says
  `completed` is not launched (a record missing for a completed run folder is collected first);
- at the start of a job (`PlanJob`), a run folder holding `checkpoints/last.ckpt` resumes with
  `ckpt_path=last`; otherwise the job starts fresh;
- at the end of a completed job its best checkpoint is scored on the test split by `qin_lightning.eval` (AUC,
  logloss, gAUC) and `<plan dir>/<name>/runs/<E>_seed<S>.json` receives the run's results.json with that test
  evaluation under `test_eval`, `<E>_seed<S>.preds.parquet` beside it the kept test predictions (atomic writes).
Time budget: the launcher's (`hydra.launcher.timeout_min`); submitit signals a job (SIGUSR2) shortly before its
time is up, and the job passes it on as SIGTERM: training saves `last.ckpt` after the current batch and the job
ends as interrupted. Rerunning the same command continues every unfinished job where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from qin_lightning.errors import ConfigError
from qin_lightning.files import atomic_writer

log = logging.getLogger(__name__)

# the exit status of a training stopped by SIGTERM (qin_lightning.train: 128 + signal number): the time budget or a
# cancelled job, the sweep goes on; a Ctrl-C (SIGINT) saves too and then stops the whole sweep
STOPPED_BY_SIGTERM = 128 + signal.SIGTERM


@dataclass(frozen=True)
class Job:
    """One (experiment, seed) run of a plan."""

    experiment: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]  # the plan's shared overrides, then this experiment's own
    record: Path  # the committed copy of its results: a job recorded there is done even if run_dir is gone

    @property
    def name(self) -> str:
        return f"{self.experiment}_seed{self.seed}"

    def state(self) -> str:
        """completed | resume | fresh, from its committed record and what the run folder holds."""
        return job_state(self.run_dir, self.record)

    def job_overrides(self, extra: Sequence[str] = ()) -> list[str]:
        """The Hydra overrides of this job: experiment, seed, the plan's, `extra` (command line), its folder."""
        return [f"+experiment={self.experiment}", f"seed={self.seed}", *self.overrides, *extra,
                f"hydra.sweep.dir={self.run_dir.parent}", f"hydra.sweep.subdir={self.run_dir.name}"]


def is_completed(results: Path) -> bool:
    """True when the JSON file `results` exists and says status completed."""
    return results.is_file() and json.loads(results.read_text()).get("status") == "completed"


def job_state(run_dir: Path, record: Path) -> str:
    """completed (its record or its run folder's results.json), resume (a last.ckpt) or fresh."""
    if is_completed(record) or is_completed(run_dir / "results.json"):
        return "completed"
    return "resume" if (run_dir / "checkpoints" / "last.ckpt").is_file() else "fresh"


def read_plan(path: Path) -> dict[str, Any]:
    """The plan YAML as a mapping, its keys checked (one-line ConfigError naming the file and key)."""
    if not path.is_file():
        raise ConfigError(f"hydra.sweeper.plan: {path}: file not found")
    plan = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(plan, dict):
        raise ConfigError(f"{path}: expected a mapping with name, experiments, seeds")
    for key in ("name", "experiments", "seeds"):
        if not plan.get(key):
            raise ConfigError(f"{path}: {key}: missing (expected name, experiments, seeds)")
    return plan


def records_dir(plan_path: Path, plan: dict[str, Any]) -> Path:
    """`<plan dir>/<name>/runs`: where the plan's records are committed."""
    return plan_path.parent / str(plan["name"]) / "runs"


def plan_jobs(plan_path: Path, runs_dir: Path, experiments: Sequence[str] | None = None,
              seeds: Sequence[int] | None = None) -> list[Job]:
    """The plan's jobs in plan order (experiments outer, seeds inner), optionally only some experiments/seeds."""
    plan = read_plan(plan_path)
    shared = [str(o) for o in plan.get("overrides") or []]
    extra = {str(k): [str(o) for o in v] for k, v in (plan.get("per_experiment") or {}).items()}
    records = records_dir(plan_path, plan)
    for key, chosen, known in (("experiments", experiments, plan["experiments"]), ("seeds", seeds, plan["seeds"])):
        unknown = [c for c in chosen or [] if c not in known]
        if unknown:
            raise ConfigError(f"hydra.sweeper.{key}: {unknown} not in the plan's {key} {list(known)}")
    return [Job(str(e), int(s), runs_dir / f"{e}_seed{s}", tuple(shared + extra.get(str(e), [])),
                records / f"{e}_seed{s}.json")
            for e in plan["experiments"] if experiments is None or e in experiments
            for s in plan["seeds"] if seeds is None or s in seeds]


def collect(run_dir: Path, record: Path, cwd: Path) -> None:
    """Commit the run's record: results.json as `record`, its kept test predictions as `<record stem>.preds.parquet`.

    A run that scored its test split itself (`test_after_fit`: the best weights, `test_auc` in results.json and
    `test.preds.parquet` beside it) is recorded as it is; otherwise its best checkpoint is scored on the test split
    by qin-eval (`test_eval`, or `test_eval_error`), told where the run's data is (`eval_data_location`), since a
    checkpoint never decides where data is read."""
    results = json.loads((run_dir / "results.json").read_text())
    best = results.get("best_checkpoint")
    eval_json = run_dir / "eval_test.json"
    scored_in_training = results.get("test_auc") is not None and (run_dir / "test.preds.parquet").is_file()
    if scored_in_training:
        preds = run_dir / "test.preds.parquet"
    else:
        if best and Path(best).is_file() and not eval_json.is_file():
            proc = subprocess.run([sys.executable, "-m", "qin_lightning.eval", f"ckpt_path={best}", "split=test",
                                   f"output={eval_json}", "threads=1", *eval_data_location(run_dir, results)],
                                  cwd=cwd, capture_output=True, text=True)
            if proc.returncode != 0:  # recorded, and the sweep goes on
                results["test_eval_error"] = (proc.stderr.strip().splitlines() or ["eval failed"])[-1]
        if eval_json.is_file():
            results["test_eval"] = json.loads(eval_json.read_text())
        preds = eval_json.with_suffix(".preds.parquet")  # the kept test predictions qin_lightning.eval writes
    record.parent.mkdir(parents=True, exist_ok=True)
    if preds.is_file():
        with preds.open("rb") as src, atomic_writer(record.with_suffix(".preds.parquet")) as dst:
            shutil.copyfileobj(src, dst)
    with atomic_writer(record, "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")


def eval_data_location(run_dir: Path, results: dict[str, Any]) -> list[str]:
    """qin-eval's overrides naming where this run read its data: ``data.root`` (the parent of the folder it read)
    and, for a converted release, ``+data.source.src`` from the run's own config (its `.hydra/config.yaml`)."""
    overrides = [f"data.root={Path(str(results['data_dir'])).parent}"] if results.get("data_dir") else []
    config = run_dir / ".hydra" / "config.yaml"
    if config.is_file():
        src = OmegaConf.select(OmegaConf.load(config), "data.source.src", default=None,
                               throw_on_resolution_failure=False)
        if src is not None:
            overrides.append(f"+data.source.src={src}")
    return overrides


class PlanJob:
    """The task function of a plan's job (wraps the training's): resume from the run folder's last.ckpt, pass the
    launcher's timeout signal (SIGUSR2) on as SIGTERM, and collect the record of a completed run."""

    def __init__(self, task_function: TaskFunction, records: Path, cwd: Path) -> None:
        self.task_function, self.records, self.cwd = task_function, records, cwd

    def __call__(self, cfg: DictConfig) -> Any:
        run_dir = Path(cfg.paths.output_dir)
        record = self.records / f"{run_dir.name}.json"
        if job_state(run_dir, record) == "resume":
            with read_write(cfg), open_dict(cfg):
                cfg.ckpt_path = "last"
        previous = signal.signal(signal.SIGUSR2, pass_on_as_sigterm)
        try:
            value = self.task_function(cfg)
        except SystemExit as stop:
            if stop.code != STOPPED_BY_SIGTERM:
                raise
            log.warning("%s interrupted (exit %s): the next run of the plan resumes it", run_dir.name, stop.code)
            return None
        finally:
            signal.signal(signal.SIGUSR2, previous)
        if is_completed(run_dir / "results.json"):
            collect(run_dir, record, self.cwd)
        return value


def pass_on_as_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGUSR2 (submitit: the job's time is nearly up) -> SIGTERM to this process (training saves and stops)."""
    os.kill(os.getpid(), signal.SIGTERM)


class PlanSweeper(Sweeper):
    """Hydra sweeper (`hydra/sweeper=plan`): the plan's jobs that are not completed, handed to the launcher in
    batches of `max_batch_size` (None: all at once) with `PlanJob` as their task function."""

    def __init__(self, plan: str, runs_dir: str | None = None, experiments: list[str] | None = None,
                 seeds: list[int] | None = None, max_batch_size: int | None = None, dry_run: bool = False) -> None:
        super().__init__()
        self.plan_path = Path(plan).absolute()
        self.runs_dir = Path(runs_dir).absolute() if runs_dir else None
        self.experiments, self.seeds = experiments, seeds
        self.max_batch_size, self.dry_run = max_batch_size, dry_run
        self.launcher: Launcher | None = None
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: Callable[[DictConfig], Any] | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        plan = read_plan(self.plan_path)
        if self.runs_dir is None:
            self.runs_dir = Path(str(config.paths.log_dir)).absolute() / "converged" / str(plan["name"])
        self.hydra_context, self.config = hydra_context, config
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.sweep.dir = str(self.runs_dir)  # the launcher's own files (.submitit/) go there too
        task = PlanJob(task_function, records_dir(self.plan_path, plan), Path.cwd())
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task, config=config)

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        assert self.launcher is not None and self.runs_dir is not None
        jobs = plan_jobs(self.plan_path, self.runs_dir, self.experiments, self.seeds)
        for job in jobs:  # completed, but its record was never written (e.g. the job was stopped at the end)
            if job.state() == "completed" and not job.record.is_file():
                collect(job.run_dir, job.record, Path.cwd())
        pending = [job for job in jobs if job.state() != "completed"]
        print(f"{len(jobs) - len(pending)} of {len(jobs)} jobs completed; {len(pending)} to run", flush=True)
        for job in pending:
            print(f"{job.state():6s} {job.name}: {' '.join(job.job_overrides(arguments))}", flush=True)
        if self.dry_run or not pending:
            return []
        batch_size = self.max_batch_size or len(pending)
        returns = []
        for start in range(0, len(pending), batch_size):
            batch = [job.job_overrides(arguments) for job in pending[start:start + batch_size]]
            self.validate_batch_is_legal(batch)
            returns.append(self.launcher.launch(batch, initial_job_idx=start))
        left = [job.name for job in jobs if job.state() != "completed"]
        print(f"{len(jobs) - len(left)} of {len(jobs)} jobs completed"
              + (f"; rerun the command to continue ({', '.join(left)})" if left else ""), flush=True)
        return returns
