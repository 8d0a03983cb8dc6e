"""What a converged plan will cost before it runs: one epoch of a few rows timed, the whole plan projected.

    python experiments/movielens/plan_cost.py measure PLAN.yaml [PLAN.yaml ...] \
        [--experiments qin,din,transformer_dcn] [--out experiments/movielens/plan_cost.json]
    python experiments/movielens/plan_cost.py measure PLAN.yaml ... --experiments qin --converge
    python experiments/movielens/plan_cost.py project experiments/movielens/plan_cost.json

`measure` converts each plan's data first (prepare on first use, outside the timing), then runs every named
experiment of the plan for one epoch, seed 1, with the plan's own overrides plus `trainer.max_epochs=1
test_after_fit=false` (the commands are recorded), one at a time. Per run it keeps the epoch's wall seconds
(results.json `timing`), the run's wall and CPU seconds (the child's rusage) and the load average: on a shared
machine the wall seconds stretch with the load, the CPU seconds much less. The epoch's CPU seconds are
estimated as its wall seconds x the run's CPU / wall ratio. With `--converge` the named experiments run as the
plan runs them instead (seed 1, to early stopping, no test scoring): their epochs to convergence are kept. The
record is updated in place: one invocation may add to another's.

`project` turns that into CPU-hours per plan: seeds x epochs per run x CPU seconds per epoch, summed over the
plan's rows. A row that was not measured takes the measured QIN epoch scaled by its ratio to QIN in reference
records (default: the sampled-protocol converged sweep, whose rows all ran on one AVX-512 machine, QIN in
converged_fp32_avx512). Epochs per run are the reference records' mean `epochs_trained` for that row: an
assumption (a new protocol may converge in more or fewer epochs), printed with the table; where QIN was run to
convergence (`--converge`), a second column scales every row's epochs by QIN's measured / reference ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from qin_lightning.config import CONFIG_DIR
from qin_lightning.files import atomic_write_json

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
REFERENCE_EPOCHS = [HERE / "converged" / "runs"]  # epochs_trained and epoch seconds of every row
REFERENCE_QIN = HERE / "converged_fp32_avx512" / "runs"  # QIN on the same machine as the rows above


def plan_overrides(plan_path: Path, experiment: str) -> tuple[str, list[str], list[str], list[int]]:
    """(plan name, the overrides of `experiment`'s jobs, the plan's experiments, its seeds)."""
    plan = OmegaConf.to_container(OmegaConf.load(plan_path), resolve=True)
    assert isinstance(plan, dict)
    extra = (plan.get("per_experiment") or {}).get(experiment) or []
    overrides = [str(o) for o in plan.get("overrides") or []] + [str(o) for o in extra]
    return str(plan["name"]), overrides, [str(e) for e in plan["experiments"]], [int(s) for s in plan["seeds"]]


def prepare_data(overrides: list[str]) -> dict:
    """Convert the plan's data (in this process, untimed); returns its meta.json."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose(config_name="train", overrides=[o for o in overrides if not o.startswith("hydra.")])
    GlobalHydra.instance().clear()
    data = instantiate(cfg.data)
    data.prepare_data()
    return json.loads((Path(data.data_dir) / "meta.json").read_text())


def time_run(experiment: str, overrides: list[str], run_dir: Path, converge: bool) -> dict:
    """One epoch of `experiment` (seed 1; to early stopping if `converge`) in a child process: its timing, wall
    and CPU seconds, the command."""
    one_epoch = [] if converge else ["trainer.max_epochs=1"]
    command = [sys.executable, "-m", "qin_lightning.train", f"+experiment={experiment}", "seed=1", *overrides,
               *one_epoch, "test_after_fit=false", f"hydra.run.dir={run_dir}"]  # fmt: skip
    load_before = os.getloadavg()
    started = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {experiment} failed (exit {status}); see {run_dir.parent / run_dir.name}.log")
    results = json.loads((run_dir / "results.json").read_text())
    timing = results["timing"]
    cpu = usage.ru_utime + usage.ru_stime
    epoch_s = statistics.mean(timing["epoch_s"])
    out = {
        "command": " ".join(["python"] + command[1:]),
        "epoch_wall_s": round(epoch_s, 3), "train_wall_s": round(statistics.mean(timing["train_s"]), 3),
        "val_wall_s": round(statistics.mean(timing["val_s"]), 3),
        "run_wall_s": round(wall, 2), "run_cpu_s": round(cpu, 2), "cpu_per_wall": round(cpu / wall, 3),
        "epoch_cpu_s_estimate": round(epoch_s * cpu / wall, 2),
        "loadavg_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "n_params": results.get("n_params"), "machine": results.get("machine"),
    }  # fmt: skip
    if converge:
        out |= {k: results.get(k) for k in ("epochs_trained", "best_epoch", "stop_reason")}
    return out


def measure(plans: list[Path], experiments: list[str], out: Path, converge: bool) -> None:
    import qin_lightning

    record: dict = json.loads(out.read_text()) if out.is_file() else {"plans": {}}
    kind = "converged" if converge else "measured"
    invocation = {"commit": _git("rev-parse", "HEAD"), "package": str(Path(qin_lightning.__file__).parent),
                  "python": sys.executable, "experiments": experiments, "kind": kind}  # fmt: skip
    record.setdefault("invocations", []).append(invocation)
    for plan_path in plans:
        name, shared, plan_experiments, seeds = plan_overrides(plan_path, "")
        meta = prepare_data(shared)
        entry: dict = record["plans"].setdefault(name, {})
        entry |= {"plan": str(plan_path.relative_to(REPO)), "data": meta["source"], "rows": meta["counts"]["rows"],
                  "experiments": plan_experiments, "seeds": seeds}  # fmt: skip
        for experiment in experiments:
            _, overrides, _, _ = plan_overrides(plan_path, experiment)
            run_dir = REPO / "logs" / "plan_cost" / name / f"{experiment}{'_converged' if converge else ''}"
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            entry.setdefault(kind, {})[experiment] = time_run(experiment, overrides, run_dir, converge)
            print(name, experiment, kind, json.dumps(entry[kind][experiment]["epoch_cpu_s_estimate"]), flush=True)
            atomic_write_json(out, record)
    print(f"wrote {out}")


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def reference_rows() -> dict[str, tuple[float, float]]:
    """experiment -> (mean epoch seconds, mean epochs trained) in the reference records; QIN's seconds from
    REFERENCE_QIN (same machine as the others)."""
    rows: dict[str, list[tuple[float, int]]] = {}
    for folder in REFERENCE_EPOCHS:
        for path in sorted(folder.glob("*.json")):
            run = json.loads(path.read_text())
            rows.setdefault(run["experiment"], []).append((statistics.mean(run["timing"]["epoch_s"]), run["epochs_trained"]))
    qin_seconds = [statistics.mean(json.loads(p.read_text())["timing"]["epoch_s"]) for p in sorted(REFERENCE_QIN.glob("*.json"))]
    out = {e: (statistics.mean(s for s, _ in r), statistics.mean(n for _, n in r)) for e, r in rows.items()}
    out["qin"] = (statistics.mean(qin_seconds), out["qin"][1])
    return out


def project(record_path: Path) -> None:
    record = json.loads(record_path.read_text())
    reference = reference_rows()
    for name, entry in record["plans"].items():
        measured = entry["measured"]
        qin_cpu = measured["qin"]["epoch_cpu_s_estimate"]
        seeds = len(entry["seeds"])
        print(f"\n{name} ({entry['plan']}; train rows {entry['rows']['train']:,}; {seeds} seeds)\n")
        converged = (entry.get("converged") or {}).get("qin")
        scale = converged["epochs_trained"] / reference["qin"][1] if converged else None
        scaled = f" | epochs x {scale:.2f} (QIN: {converged['epochs_trained']} measured) | CPU-hours" if scale else ""
        print(f"| experiment | CPU s per epoch | source | epochs per run (reference) | CPU-hours{scaled} |")
        print("| --- | --- | --- | --- | --- |" + (" --- | --- |" if scale else ""))
        totals = [0.0, 0.0]
        for experiment in entry["experiments"]:
            ref_seconds, ref_epochs = reference[experiment]
            if experiment in measured:
                seconds, source = measured[experiment]["epoch_cpu_s_estimate"], "measured"
            else:
                ratio = ref_seconds / reference["qin"][0]
                seconds, source = qin_cpu * ratio, f"QIN x {ratio:.2f}"
            hours = seeds * ref_epochs * seconds / 3600
            totals[0] += hours
            line = f"| {experiment} | {seconds:.0f} | {source} | {ref_epochs:.1f} | {hours:.2f} |"
            if scale:
                totals[1] += hours * scale
                line += f" {ref_epochs * scale:.1f} | {hours * scale:.2f} |"
            print(line)
        print(f"| total | | | | {totals[0]:.1f} |" + (f" | {totals[1]:.1f} |" if scale else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="time one epoch of some experiments of each plan")
    m.add_argument("plans", nargs="+", type=Path, help="plan YAML files (the plan sweeper's: qin_lightning.training.plan)")
    m.add_argument("--experiments", default="qin,din,transformer_dcn", help="comma-separated experiments to time")
    m.add_argument("--out", type=Path, default=HERE / "plan_cost.json", help="the record (JSON), updated in place")
    m.add_argument("--converge", action="store_true", help="run the experiments to early stopping (epochs kept)")
    p = sub.add_parser("project", help="CPU-hours per plan from a measure record")
    p.add_argument("record", type=Path, help="the JSON written by measure")
    args = parser.parse_args(argv)
    if args.command == "measure":
        measure([path.resolve() for path in args.plans], args.experiments.split(","), args.out, args.converge)
    else:
        project(args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
