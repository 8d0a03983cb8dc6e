"""Resumable converged sweep: every (experiment, seed) of a plan trained to early stopping, one run folder each.

    python experiments/converged/sweep.py experiments/converged/synthetic.yaml [--jobs 2] [--hours 2.5]
    python experiments/converged/sweep.py PLAN --dry-run          # the commands, nothing runs
    python experiments/converged/sweep.py PLAN --only E --seeds 1,2   # a part of the plan
    python experiments/converged/sweep.py PLAN --jobs 16 --partition gpu --gpus-per-job 1   # on a SLURM cluster

A plan (YAML) names the experiments, the seeds and the overrides shared by every row (the one reduced
configuration), plus per-experiment shrink options where a model needs them. Each job runs
`python -m qin_lightning.train +experiment=E seed=S <overrides> hydra.run.dir=<runs>/<E>_seed<S>`.
Job selection is this script's:
- a job whose committed record (`<plan dir>/<name>/runs/<E>_seed<S>.json`) or run folder's `results.json`
  says `completed` is skipped (a record is collected again when missing);
- a folder with `checkpoints/last.ckpt` (interrupted, or killed) resumes with `ckpt_path=last`;
- otherwise the job starts fresh.
Scheduling is submitit's (`submitit.AutoExecutor`): on a SLURM cluster the remaining jobs are one job array
(one array task per job, `--jobs` of them at a time); elsewhere they run as local processes, in `--jobs`
lanes that each train their share one after another. At `--hours` no further job starts and the running
ones get SIGTERM (so does a job that SLURM cancels): training saves `last.ckpt` after the current batch, and
the next invocation continues from there. So a sweep longer than a session runs in chunks without redoing
finished work. After a job completes, its best checkpoint is scored on the test split by `qin_lightning.eval`
(AUC, logloss, gAUC) and `<plan dir>/<name>/runs/<E>_seed<S>.json` receives the run's results.json with that
test evaluation under `test_eval`, and `<E>_seed<S>.preds.parquet` beside it the kept test predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import submitit
from omegaconf import OmegaConf

from qin_lightning.files import atomic_writer

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Job:
    """One (experiment, seed) run of a plan."""

    experiment: str
    seed: int
    run_dir: Path
    overrides: tuple[str, ...]
    record: Path  # the committed copy of its results: a job recorded there is done even if run_dir is gone

    @property
    def name(self) -> str:
        return f"{self.experiment}_seed{self.seed}"

    def state(self) -> str:
        """completed | resume | fresh, from its committed record and what the run folder holds."""
        for results in (self.record, self.run_dir / "results.json"):
            if results.is_file() and json.loads(results.read_text()).get("status") == "completed":
                return "completed"
        return "resume" if (self.run_dir / "checkpoints" / "last.ckpt").is_file() else "fresh"

    def train_command(self) -> list[str]:
        resume = ["ckpt_path=last"] if self.state() == "resume" else []
        return [sys.executable, "-m", "qin_lightning.train", f"+experiment={self.experiment}", f"seed={self.seed}",
                *self.overrides, f"hydra.run.dir={self.run_dir}", *resume]


def load_plan(path: Path, runs_dir: Path | None) -> tuple[str, list[Job], Path]:
    """(plan name, jobs in plan order, folder of the committed per-run records)."""
    plan = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(plan, dict)
    name = str(plan["name"])
    runs = runs_dir or REPO / "logs" / "converged" / name
    shared = [str(o) for o in plan.get("overrides") or []]
    extra = {str(k): [str(o) for o in v] for k, v in (plan.get("per_experiment") or {}).items()}
    records = path.parent / name / "runs"
    jobs = [Job(str(e), int(s), runs / f"{e}_seed{s}", tuple(shared + extra.get(str(e), [])),
                records / f"{e}_seed{s}.json") for e in plan["experiments"] for s in plan["seeds"]]
    return name, jobs, records


def select(jobs: list[Job], only: str | None, seeds: str | None) -> list[Job]:
    """The jobs of the comma-separated experiments `only` and `seeds` (None: all of them)."""
    experiments = set(only.split(",")) if only else None
    chosen = {int(s) for s in seeds.split(",")} if seeds else None
    return [j for j in jobs if (experiments is None or j.experiment in experiments)
            and (chosen is None or j.seed in chosen)]


def collect(job: Job, records: Path) -> None:
    """Score the best checkpoint on the test split (gAUC included) and commit the run's record."""
    results = json.loads((job.run_dir / "results.json").read_text())
    best = results.get("best_checkpoint")
    eval_json = job.run_dir / "eval_test.json"
    if best and Path(best).is_file() and not eval_json.is_file():
        proc = subprocess.run([sys.executable, "-m", "qin_lightning.eval", f"ckpt_path={best}", "split=test",
                               f"output={eval_json}", "threads=1"], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:  # recorded, and the sweep goes on
            results["test_eval_error"] = (proc.stderr.strip().splitlines() or ["eval failed"])[-1]
    if eval_json.is_file():
        results["test_eval"] = json.loads(eval_json.read_text())
    preds = eval_json.with_suffix(".preds.parquet")  # the kept test predictions qin_lightning.eval writes
    if preds.is_file():
        with preds.open("rb") as src, atomic_writer(records / f"{job.name}.preds.parquet") as dst:
            shutil.copyfileobj(src, dst)
    with atomic_writer(records / f"{job.name}.json", "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")


INTERRUPTED = (128 + signal.SIGTERM, 128 + signal.SIGINT)  # exit codes of a training stopped by a signal


def train_until(job: Job, deadline: float, log_dir: Path) -> int:
    """Train `job` (fresh or resumed) and return its exit code. At `deadline` (time.time()), or when this process
    gets SIGTERM (scancel, a local cancel), the training gets SIGTERM and saves last.ckpt after its batch."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    with open(log_dir / f"{job.name}.log", "ab") as log:
        proc = subprocess.Popen(job.train_command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)

        def pass_on(signum: int, frame: FrameType | None) -> None:
            proc.send_signal(signal.SIGTERM)

        previous = signal.signal(signal.SIGTERM, pass_on)  # submitit's own handler ignores SIGTERM
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
        finally:
            code = proc.wait()
            signal.signal(signal.SIGTERM, previous)
    return code


def run_lane(jobs: list[Job], records: Path, deadline: float, log_dir: Path) -> dict[str, int]:
    """One submitit job: its jobs one after another until `deadline`; each that completes is collected.
    Returns {job name: exit code} of the trainings it started; an interrupted one ends the lane."""
    exits: dict[str, int] = {}
    for job in jobs:
        if time.time() >= deadline or job.state() == "completed":
            continue
        print(f"start {job.name} ({job.state()})", flush=True)
        exits[job.name] = train_until(job, deadline, log_dir)
        print(f"end {job.name}: exit {exits[job.name]}, {job.state()}", flush=True)
        if job.state() == "completed":
            collect(job, records)
        if exits[job.name] in INTERRUPTED:
            break
    return exits


def run(jobs: list[Job], records: Path, executor: submitit.AutoExecutor, parallel: int, deadline: float,
        log_dir: Path) -> int:
    """Hand the jobs that are not completed to `executor`, at most `parallel` at a time, and wait for them."""
    pending = [j for j in jobs if j.state() != "completed"]
    for job in jobs:
        if job.state() == "completed" and not job.record.is_file():
            collect(job, records)
    print(f"{len(jobs) - len(pending)} of {len(jobs)} jobs completed; {len(pending)} to run", flush=True)
    failed = 0
    if pending:
        # SLURM: one array task per job, `parallel` at a time; local processes: `parallel` lanes
        n_lanes = len(pending) if executor.cluster == "slurm" else min(parallel, len(pending))
        lanes = [pending[i::n_lanes] for i in range(n_lanes)]
        executor.update_parameters(slurm_array_parallelism=parallel,
                                   timeout_min=max(1, round((deadline - time.time()) / 60)) + 10)
        for job in pending:
            print(f"start {job.name} ({job.state()})", flush=True)
        submitted = executor.map_array(run_lane, lanes, [records] * n_lanes, [deadline] * n_lanes,
                                       [log_dir] * n_lanes)
        for lane, sub in zip(lanes, submitted):
            try:
                exits = sub.result()
            except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as err:
                print(f"submitit job {sub.job_id} ({', '.join(j.name for j in lane)}) failed: "
                      f"{(str(err).strip().splitlines() or ['no message'])[-1]}; its log: {sub.paths.stderr}", flush=True)
                failed += 1
                continue
            for job in lane:
                if job.name in exits:
                    print(f"end {job.name}: exit {exits[job.name]}, {job.state()}", flush=True)
                    failed += exits[job.name] not in (0, *INTERRUPTED)
    left = sum(j.state() != "completed" for j in jobs)
    print(f"{len(jobs) - left} of {len(jobs)} jobs completed" + (f"; rerun to continue ({left} left)" if left else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path, help="plan YAML (experiments, seeds, overrides, per_experiment)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="run folders (default logs/converged/<name>)")
    parser.add_argument("--jobs", type=int, default=1, help="jobs at a time (locally: give each threads=1 in the "
                                                          "plan)")
    parser.add_argument("--hours", type=float, default=2.5, help="stop (and checkpoint) the sweep after this long")
    parser.add_argument("--cluster", choices=("slurm", "local"), default=None,
                        help="where the jobs run (default: SLURM where sbatch exists, else local processes)")
    parser.add_argument("--partition", default=None, help="SLURM partition")
    parser.add_argument("--gpus-per-job", type=int, default=0, help="GPUs of a SLURM job (trainer=gpu in the plan)")
    parser.add_argument("--cpus-per-job", type=int, default=1, help="CPUs of a SLURM job")
    parser.add_argument("--only", default=None, help="comma-separated experiments to run (default: all)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds to run (default: the plan's); two "
                                                      "drivers with disjoint seeds share one plan's work")
    parser.add_argument("--dry-run", action="store_true", help="print the job states and commands, run nothing")
    args = parser.parse_args(argv)
    name, jobs, records = load_plan(args.plan, args.runs_dir)
    jobs = select(jobs, args.only, args.seeds)
    if args.dry_run:
        for job in jobs:
            print(f"{job.state():9s} {' '.join(job.train_command()[1:])}")
        return 0
    started = time.time()
    runs = jobs[0].run_dir.parent
    executor = submitit.AutoExecutor(folder=runs / "submitit" / "%j", cluster=args.cluster)
    executor.update_parameters(name=f"converged-{name}", cpus_per_task=args.cpus_per_job,
                               gpus_per_node=args.gpus_per_job, slurm_partition=args.partition)
    code = run(jobs, records, executor, max(1, args.jobs), started + args.hours * 3600, runs / "logs")
    print(f"sweep {name}: {time.time() - started:.0f} s in this invocation", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
