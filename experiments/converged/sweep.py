"""Resumable converged sweep: every (experiment, seed) of a plan trained to early stopping, one run folder each.

    python experiments/converged/sweep.py experiments/converged/synthetic.yaml [--jobs 2] [--hours 2.5]
    python experiments/converged/sweep.py PLAN --dry-run          # the commands, nothing runs
    python experiments/converged/sweep.py PLAN --only E --seeds 1,2   # a part of the plan (e.g. one per core)

A plan (YAML) names the experiments, the seeds and the overrides shared by every row (the one reduced
configuration), plus per-experiment shrink options where a model needs them. Each job runs
`python -m qin_lightning.train +experiment=E seed=S <overrides> hydra.run.dir=<runs>/<E>_seed<S>`:
- a job whose committed record (`<plan dir>/<name>/runs/<E>_seed<S>.json`) or run folder's `results.json`
  says `completed` is skipped (a record is collected again when missing);
- a folder with `checkpoints/last.ckpt` (interrupted, or killed) resumes with `ckpt_path=last`;
- otherwise the job starts fresh.
At `--hours` the driver stops launching jobs and sends SIGTERM to the running ones: training saves
`last.ckpt` after the current batch, and the next invocation continues from there. So a sweep longer than a
session runs in chunks without redoing finished work. After a job completes, its best checkpoint is scored on
the test split by `qin_lightning.eval` (AUC, logloss, gAUC) and `<plan dir>/<name>/runs/<E>_seed<S>.json`
receives the run's results.json with that test evaluation under `test_eval`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

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
    records.mkdir(parents=True, exist_ok=True)
    tmp = records / f".{job.name}.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, records / f"{job.name}.json")


def run(jobs: list[Job], records: Path, parallel: int, deadline: float, log_dir: Path) -> int:
    """Run the jobs that are not completed, `parallel` at a time, until done or `deadline` (time.time())."""
    pending = [j for j in jobs if j.state() != "completed"]
    for job in jobs:
        if job.state() == "completed" and not job.record.is_file():
            collect(job, records)
    print(f"{len(jobs) - len(pending)} of {len(jobs)} jobs completed; {len(pending)} to run", flush=True)
    running: dict[Job, subprocess.Popen[bytes]] = {}
    failed = 0
    log_dir.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < parallel and time.time() < deadline:
            job = pending.pop(0)
            print(f"start {job.name} ({job.state()})", flush=True)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            with open(log_dir / f"{job.name}.log", "ab") as log:
                running[job] = subprocess.Popen(job.train_command(), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                                env={**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")})
        if time.time() >= deadline:
            pending.clear()
            for proc in running.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)  # saves last.ckpt after the current batch
        for job, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[job]
            state = job.state()
            print(f"end {job.name}: exit {proc.returncode}, {state}", flush=True)
            if state == "completed" and (job.run_dir / "results.json").is_file():
                collect(job, records)
            elif proc.returncode not in (128 + signal.SIGTERM, 128 + signal.SIGINT):
                failed += 1
        time.sleep(1.0)
    left = sum(j.state() != "completed" for j in jobs)
    print(f"{len(jobs) - left} of {len(jobs)} jobs completed" + (f"; rerun to continue ({left} left)" if left else ""))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("plan", type=Path, help="plan YAML (experiments, seeds, overrides, per_experiment)")
    parser.add_argument("--runs-dir", type=Path, default=None, help="run folders (default logs/converged/<name>)")
    parser.add_argument("--jobs", type=int, default=1, help="jobs at a time (give each threads=1 in the plan)")
    parser.add_argument("--hours", type=float, default=2.5, help="stop (and checkpoint) the sweep after this long")
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
    code = run(jobs, records, max(1, args.jobs), started + args.hours * 3600, jobs[0].run_dir.parent / "logs")
    print(f"sweep {name}: {time.time() - started:.0f} s in this invocation", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
