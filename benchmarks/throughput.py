"""Training speed of OMSD, measured by running its scripts as command lines and reading their run records.

For each task, device, torch thread count and batch size it runs the task's script (osd_mpe.py or
osd_mamujoco.py) twice on the task's dataset (built on first use, as the scripts do):
  phase 1: `--pretrain-steps N --critic-steps N --policy-steps 1`: the behavior model and the critics;
  phase 2: `--pretrained <phase 1's checkpoint> --policy-steps M`: the actors alone;
and reads each run's record (osd_common.RECORD_SCHEMA): updates per second over the training loop, the
evaluation excluded (phase 1's one actor step is counted with its updates). The scripts are imported by
nothing here: a change to a script is measured as it runs, and nothing here breaks when one is edited.
The report (benchmarks/records/throughput.json) holds every run's command line and its whole record.

    python benchmarks/throughput.py                                   # spread, batch 256 and 1024, 1 thread
    python benchmarks/throughput.py --tasks mpe/simple_spread mamujoco/HalfCheetah-2x3 --threads 1 2
    python benchmarks/throughput.py --devices cuda --batch-sizes 256 1024 4096
    python benchmarks/throughput.py --steps 200 --out /tmp/t.json     # a quick look
    python benchmarks/throughput.py --tasks mpe/simple_spread mpe/simple_spread-N4 mpe/simple_spread-N6 \
        --tier random --batch-sizes 256 --out benchmarks/records/throughput_team_sizes.json   # cost against N
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import osd_common  # noqa: E402
from report import format_throughput  # noqa: E402

SCRIPTS = {"mpe": "osd_mpe.py", "mamujoco": "osd_mamujoco.py"}


def script_of(task: str) -> str:
    return SCRIPTS[task.split("/", 1)[0]]


def run_script(argv: list[str], log: pathlib.Path) -> None:
    """One command line of a script, from the repo root; its output goes to `log`. Stops on failure."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        process = subprocess.run([sys.executable, *argv], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    if process.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"throughput: `python {shlex.join(argv)}` failed ({process.returncode}):\n{tail}")


def measure(task: str, device: str, threads: int, batch_size: int, steps: int, actor_steps: int,
            workdir: pathlib.Path, dataset: str | None = None, tier: str | None = None) -> list[dict]:
    """Phase 1, then phase 2 on its checkpoint: one row per phase with the run's command and record."""
    name = f"{task.replace('/', '_')}__{device}__{threads}__{batch_size}"
    data = ["--dataset", dataset] if dataset else ["--task", task, *(["--tier", tier] if tier else [])]
    common = [script_of(task), *data, "--device", device, "--torch-threads", str(threads), "--seed", "1",
              "--behavior-batch-size", str(batch_size), "--critic-batch-size", str(batch_size),
              "--actor-batch-size", str(batch_size), "--eval-episodes", "1", "--final-eval-episodes", "1",
              "--log-every", str(max(steps, actor_steps)), "--checkpoint-dir", str(workdir / "checkpoints")]
    phases = {"phase 1 (behavior + critics)": ["--pretrain-steps", str(steps), "--critic-steps", str(steps),
                                               "--policy-steps", "1", "--eval-every", "1"],
              "phase 2 (actors)": ["--pretrained", None, "--policy-steps", str(actor_steps),
                                   "--eval-every", str(actor_steps)]}
    rows = []
    for phase, flags in phases.items():
        record_path = workdir / f"{name}__{len(rows) + 1}.json"
        if rows:  # phase 2 starts from phase 1's behavior model and critics
            flags = [rows[0]["record"]["checkpoint"] if flag is None else flag for flag in flags]
        argv = [*common, *flags, "--exp-name", f"throughput{len(rows) + 1}", "--record", str(record_path)]
        run_script(argv, workdir / f"{name}__{len(rows) + 1}.log")
        record = osd_common.load_record(record_path)
        rows.append({"task": task, "device": device, "threads": threads, "batch_size": batch_size, "phase": phase,
                     "updates_per_s": record["updates_per_s"], "updates": record["updates"],
                     "command": shlex.join(["python", *argv]), "record": record})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["mpe/simple_spread"], help="tasks (their scripts' default tiers)")
    parser.add_argument("--dataset", default=None, help="time on this dataset file instead (one task)")
    parser.add_argument("--tier", default=None, help="the tier of every task (default: each script's default "
                        "tier); the speed depends on the shapes, not the tier: `random` is the quickest to build")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="CPU thread counts to time")
    parser.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"],
                        help="default: cpu, and cuda when torch sees one")
    parser.add_argument("--steps", type=int, default=1000, help="phase-1 steps per run")
    parser.add_argument("--actor-steps", type=int, default=1000, help="phase-2 steps per run")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "records" / "throughput.json",
                        help="the report (default: benchmarks/records/throughput.json, beside the run records)")
    args = parser.parse_args(argv)
    import torch  # only to see which devices there are

    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit(f"throughput: --devices cuda, but torch {torch.__version__} sees no CUDA device")
    if args.dataset and args.tier:
        raise SystemExit("throughput: --dataset and --tier both name the data: pass one of them")
    if args.dataset and len(args.tasks) != 1:
        raise SystemExit("throughput: --dataset times one task: pass the dataset's task alone with --tasks")

    rows = []
    with tempfile.TemporaryDirectory(prefix="osd_throughput_") as tmp:
        for device in devices:
            for threads in (args.threads if device == "cpu" else [args.threads[0]]):
                for task in args.tasks:
                    for batch_size in args.batch_sizes:
                        for row in measure(task, device, threads, batch_size, args.steps, args.actor_steps,
                                           pathlib.Path(tmp), args.dataset, args.tier):
                            rows.append(row)
                            print(f"{task:24s} {device:4s} threads={threads} batch={batch_size:5d} {row['phase']:28s} "
                                  f"{row['updates_per_s']:9.1f} updates/s", flush=True)

    commit, dirty = osd_common.git_commit()
    report = {
        "command": shlex.join(["python", "benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit, "git_dirty": dirty,
        "load_average_1min": os.getloadavg()[0],  # other work on the machine slows every number down
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, args.out)
    print()
    print(format_throughput(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
