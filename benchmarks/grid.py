"""Run a grid of training runs (algorithms x tasks x tiers x seeds) and collect one JSON record per run.

Every run is a plain command line of an algorithm script with `--record <records>/<algo>__<task>__<tier>__<seed>.json`;
a run whose record exists already is skipped, so an interrupted grid resumes where it stopped (scripts
write records whole, then rename them: a record on disk is always complete). Then
`python benchmarks/report.py` turns the records into docs/results.md.

    python benchmarks/grid.py --dry-run                                     # print the command lines
    python benchmarks/grid.py --workers 2                                   # default algorithms, every MPE task, tier, seed
    python benchmarks/grid.py --budget smoke --algos bc matd3-bc --tiers expert --seeds 1 --workers 2
    python benchmarks/grid.py --budget short --algos omsd omsd-independent --tasks mamujoco/HalfCheetah-2x3 \\
        --tiers random medium medium-replay expert medium-expert --seeds 1 2 3 --workers 2
    python benchmarks/grid.py --budget short --algos omsd omsd-beta0 matd3-bc bc --tasks mamujoco/HalfCheetah-2x3 \\
        --tiers random medium medium-replay expert medium-expert --seeds 1 2 3 --workers 2
    python benchmarks/grid.py --submitit --slurm-partition <p> --workers 50 # the same command lines on Slurm
    python benchmarks/grid.py --submitit --submitit-cluster local ...      # through submitit on this machine

Budgets are BUDGETS below, the configuration of the reference runs. Records go to one folder per budget,
benchmarks/records/<budget>/, with a suffix naming any --extra override (`--extra "--beta 0"` ->
benchmarks/records/short_beta0/), so runs of different settings never share a table in the report.
Each local worker runs one process with `--torch-threads 1` (see --torch-threads): K workers use K cores.
A local grid first builds, one at a time, the cached datasets its runs need and the cache lacks.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from datetime import datetime, timezone

try:
    import fcntl  # POSIX; without it (Windows) concurrent grids on one folder are not guarded
except ImportError:
    fcntl = None

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import osd_common  # noqa: E402

ALGORITHMS = ("omsd", "omsd-independent", "omsd-beta0", "bc", "matd3-bc")
# without --algos: the four the documented grid commands ran before omsd-beta0 existed, so those
# commands still plan the same runs
DEFAULT_ALGORITHMS = ("omsd", "omsd-independent", "bc", "matd3-bc")
SCRIPTS = {  # (algorithm, task family) -> script, relative to the repo root
    ("omsd", "mpe"): "osd_mpe.py",
    ("omsd", "mamujoco"): "osd_mamujoco.py",
    ("bc", "mpe"): "baselines/bc.py",
    ("bc", "mamujoco"): "baselines/bc.py",
    ("matd3-bc", "mpe"): "baselines/matd3_bc.py",
    ("matd3-bc", "mamujoco"): "baselines/matd3_bc.py",
}
# algorithm -> (the algorithm whose script and budget it uses, extra flags). The OMSD scripts name their
# record's algorithm from these flags (osd_common.omsd_algorithm_name), so a variant run by hand lands in the same column.
VARIANTS = {
    "omsd": ("omsd", []),
    "omsd-independent": ("omsd", ["--decomposition", "independent"]),
    "omsd-beta0": ("omsd", ["--beta", "0"]),  # no Q term: the behavior regularizer alone, same everything else
    "bc": ("bc", []),
    "matd3-bc": ("matd3-bc", []),
}
# Budget flags per algorithm. `default` is the budget of the reference runs in docs/results.md: OMSD's
# default preset (50k phase-1 steps of behavior model and critics, 20k actor steps), MATD3+BC 50k critic
# steps (as many critic updates as OMSD), BC 20k steps; 10 evaluation episodes, about 10 evaluations
# per run. `smoke` checks in seconds that every cell runs end to end; its scores mean nothing.
BUDGETS = {
    "smoke": {
        "omsd": {"pretrain-steps": 200, "critic-steps": 200, "policy-steps": 200, "eval-every": 100, "eval-episodes": 2,
                 "final-eval-episodes": 2, "value-weighted-steps": 20},  # phase 1b runs on every tier, briefly
        "bc": {"total-steps": 200, "eval-every": 100, "eval-episodes": 2, "final-eval-episodes": 2},
        "matd3-bc": {"total-steps": 200, "eval-every": 100, "eval-episodes": 2, "final-eval-episodes": 2},
    },
    # `short`: the budget the measured tables in docs/ were run at on 2 CPU cores within one working
    # session (OMSD: 10k phase-1 steps, 5k actor steps, about 8 minutes per run on one core).
    "short": {
        "omsd": {"pretrain-steps": 10_000, "critic-steps": 10_000, "policy-steps": 5_000, "eval-every": 1_000,
                 "eval-episodes": 10},
        "bc": {"total-steps": 5_000, "eval-every": 1_000, "eval-episodes": 10},
        "matd3-bc": {"total-steps": 10_000, "eval-every": 2_000, "eval-episodes": 10},
    },
    "default": {
        "omsd": {"pretrain-steps": 50_000, "critic-steps": 50_000, "policy-steps": 20_000, "eval-every": 2_000,
                 "eval-episodes": 10},
        "bc": {"total-steps": 20_000, "eval-every": 2_000, "eval-episodes": 10},
        "matd3-bc": {"total-steps": 50_000, "eval-every": 5_000, "eval-episodes": 10},
    },
}
DEFAULT_SEEDS = (1, 2, 3, 4, 5)
MANIFEST = "grid_manifest.json"


def task_family(task: str) -> str:
    return task.split("/", 1)[0]


def record_name(algorithm: str, task: str, tier: str, seed: int) -> str:
    return f"{algorithm}__{task.replace('/', '_')}__{tier}__{seed}.json"


def records_suffix(extra: list[str]) -> str:
    """The folder suffix naming --extra's overrides: `--policy-steps 20000 --beta 0` -> `policy-steps20000_beta0`."""
    parts, i = [], 0
    while i < len(extra):
        flag = extra[i]
        if not flag.startswith("--"):
            raise ValueError(f"grid: --extra '{shlex.join(extra)}': '{flag}' is not a --flag (flags and their values "
                             "only, e.g. --extra '--beta 0.05')")
        name, _, value = flag[2:].partition("=")
        if not value and i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            value, i = extra[i + 1], i + 1
        parts.append(name + value)
        i += 1
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]", "-", part) for part in parts)


def default_records_dir(budget: str, extra: list[str] | None = None) -> pathlib.Path:
    """benchmarks/records/<budget>, plus `_<overrides>` when --extra changes flags (records_suffix)."""
    suffix = records_suffix(list(extra or []))
    return REPO / "benchmarks" / "records" / (f"{budget}_{suffix}" if suffix else budget)


def build_command(algorithm: str, task: str, tier: str, seed: int, budget: str, record: pathlib.Path,
                  python: str = "python", torch_threads: int = 1, extra: list[str] | None = None) -> list[str]:
    """The command line of one run (paths relative to the repo root, where it runs)."""
    base, variant_flags = VARIANTS[algorithm]
    script = SCRIPTS[(base, task_family(task))]
    command = [python, script, "--task", task, "--tier", tier, "--seed", str(seed), *variant_flags,
               "--exp-name", algorithm.replace("-", "_")]
    for flag, value in BUDGETS[budget][base].items():
        command += [f"--{flag}", str(value)]
    if torch_threads > 0:
        command += ["--torch-threads", str(torch_threads)]
    try:
        record = record.resolve().relative_to(REPO)
    except ValueError:
        record = record.resolve()
    return command + list(extra or []) + ["--record", str(record)]


def plan(algorithms, tasks, tiers, seeds, budget: str, records_dir: pathlib.Path, python: str = "python",
         torch_threads: int = 1, extra: list[str] | None = None) -> list[dict]:
    """Every run of the grid, in order: its name, record path, command and whether it is done already."""
    runs = []
    for task in tasks:  # every algorithm of a cell and seed together, so a partial grid compares them
        for tier in tiers:
            for seed in seeds:
                for algorithm in algorithms:
                    record = records_dir / record_name(algorithm, task, tier, seed)
                    runs.append({
                        "name": record.stem, "record": record, "task": task, "tier": tier,
                        "done": record_is_complete(record, dict(algorithm=algorithm, task=task, tier=tier, seed=seed)),
                        "command": build_command(algorithm, task, tier, seed, budget, record, python,
                                                 torch_threads, extra),
                    })
    return runs


def record_is_complete(path: pathlib.Path, expect: dict | None = None) -> bool:
    """A record counts only if it reads back as a full, valid record (a partial file never does) of the
    run its name says (`expect`: algorithm, task, tier, seed)."""
    if not path.exists():
        return False
    try:
        record = osd_common.load_record(path)
    except osd_common.RecordError as err:
        print(f"grid: {err}; the run will be redone")
        return False
    wrong = {key: record[key] for key, value in (expect or {}).items() if record[key] != value}
    if wrong:
        print(f"grid: {path} records {wrong}, not the run its name says; the run will be redone")
        return False
    return True


def build_missing_datasets(runs: list[dict]) -> list[str]:
    """Generate, one at a time, each cached dataset the runs read and the cache lacks, before the pool
    starts: otherwise every worker that needs it builds the same file at once. Runs given their own file
    (--dataset) or --no-build-dataset are left alone. Returns the datasets built."""
    built = []
    for task, tier in sorted({(run["task"], run["tier"]) for run in runs
                              if not {"--dataset", "--no-build-dataset"} & {arg.split("=")[0] for arg in run["command"]}}):
        if osd_common.dataset_path(task, tier).exists():
            continue
        print(f"grid: {task}/{tier} is not in the cache: building it once before the runs start")
        osd_common.load_dataset(f"{task}/{tier}", build_if_missing=True)
        built.append(f"{task}/{tier}")
    return built


def run_one(command: list[str], log_path: str, nice: int) -> tuple[int, float]:
    """Run one command line from the repo root, its output in `log_path`. Returns (exit code, seconds)."""
    # one thread per run; tqdm redraws its bar at most every 30 s, so logs stay small
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_MININTERVAL="30")
    start = time.time()
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(command) + "\n")
        log.flush()
        process = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env,
                                 preexec_fn=(lambda: os.nice(nice)) if nice > 0 else None)
    return process.returncode, time.time() - start


def run_local(runs: list[dict], workers: int, logs_dir: pathlib.Path, nice: int = 0) -> list[dict]:
    """Run the commands in a pool of `workers` processes; returns the runs that failed."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    failed = []
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(run_one, run["command"], str(logs_dir / f"{run['name']}.log"), nice): run
                   for run in runs}
        try:
            for count, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                run = futures[future]
                returncode, seconds = future.result()
                log = logs_dir / f"{run['name']}.log"
                if returncode == 0 and record_is_complete(run["record"]):
                    score = osd_common.load_record(run["record"])["final_normalized_score"]
                    print(f"[{count}/{len(runs)}] done {run['name']}: normalized score {score:.1f} ({seconds:.0f}s)")
                else:
                    why = f"exit code {returncode}" if returncode != 0 else "no valid record written"
                    print(f"[{count}/{len(runs)}] FAILED {run['name']}: {why} ({seconds:.0f}s); log {log}")
                    failed.append(run)
        except KeyboardInterrupt:
            print("grid: interrupted; finished runs keep their records, rerun the same command to resume")
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return failed


def run_submitit(runs: list[dict], args) -> list[str]:
    """Hand the same command lines to submitit: a Slurm job array, or with `--submitit-cluster local`
    processes on this machine through submitit's LocalExecutor (the same engine path, no cluster; the
    grid then waits for them). Returns the names of the runs whose job failed (local only)."""
    try:
        import submitit
    except ImportError:
        raise SystemExit("grid: --submitit needs the `submitit` package (in requirements.txt): "
                         "`pip install -r requirements.txt`, or run locally without --submitit") from None
    folder = args.records_dir / "submitit" / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster=args.submitit_cluster)
    parameters = dict(name="osd-grid", timeout_min=args.timeout_min, cpus_per_task=args.torch_threads or 1)
    if args.submitit_cluster == "slurm":
        parameters["slurm_array_parallelism"] = args.workers
        if args.slurm_partition:
            parameters["slurm_partition"] = args.slurm_partition
        if args.slurm_gpus:
            parameters["gpus_per_node"] = args.slurm_gpus
    executor.update_parameters(**parameters)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    jobs = []
    with executor.batch():
        for run in runs:
            jobs.append(executor.submit(submitit.helpers.CommandFunction(run["command"], cwd=str(REPO), env=env)))
    print(f"grid: submitted {len(jobs)} jobs to {executor.cluster} (logs in {args.records_dir / 'submitit'})")
    for job, run in zip(jobs, runs):
        print(f"  {job.job_id}  {run['name']}")
    if args.submitit_cluster == "slurm":
        print("rerun this command after they finish: runs with a record are skipped, failed ones are resubmitted")
        return []
    failed = []
    for job, run in zip(jobs, runs):  # local: wait, so the command ends when its runs do
        try:
            job.result()
        except Exception as error:  # submitit re-raises the run's failure; its log is in the job folder
            print(f"grid: {run['name']} failed ({type(error).__name__}); log: {job.paths.stderr}")
            failed.append(run["name"])
    return failed


def write_manifest(records_dir: pathlib.Path, entry: dict) -> None:
    """Append this invocation to <records>/grid_manifest.json (read by report.py), atomically.

    Two grids started together on one folder would each read the manifest, append, and write it back,
    and the later write would drop the earlier entry: the read-modify-write holds a lock file. A manifest
    that does not parse stops the grid rather than being replaced, since it is the folder's only list of
    how its records were made.
    """
    path = records_dir / MANIFEST
    records_dir.mkdir(parents=True, exist_ok=True)
    with open(records_dir / f".{MANIFEST}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        invocations = []
        if path.exists():
            try:
                invocations = json.loads(path.read_text())["invocations"]
                if not isinstance(invocations, list):
                    raise TypeError("'invocations' is not a list")
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise SystemExit(f"grid: {path} is not a grid manifest ({error}). It lists how the records in "
                                 f"{records_dir} were made, so the grid does not replace it: repair it, or move it "
                                 "aside, and run again") from None
        invocations.append(entry)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"invocations": invocations}, indent=1) + "\n")
        os.replace(tmp, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=list(DEFAULT_ALGORITHMS), choices=ALGORITHMS,
                        help=f"algorithms to run (default: {' '.join(DEFAULT_ALGORITHMS)}; omsd-beta0 only when named)")
    parser.add_argument("--tasks", nargs="+", default=list(osd_common.MPE_TASKS),
                        help="tasks (default: the MPE tasks; team sizes as mpe/simple_spread-N4 or mpe/simple_tag-N4; "
                             "mamujoco/HalfCheetah-2x3 runs its tiers random, medium, medium-replay, expert, medium-expert)")
    parser.add_argument("--tiers", nargs="+", default=list(osd_common.TIERS), choices=osd_common.TIERS,
                        help="dataset tiers (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEFAULT_SEEDS), help="training seeds")
    parser.add_argument("--budget", default="default", choices=sorted(BUDGETS), help="budget of every run (BUDGETS)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs at once (local processes, or the Slurm array's parallelism)")
    parser.add_argument("--records-dir", type=pathlib.Path, default=None,
                        help="where records go (default: benchmarks/records/<budget>, with _<overrides> "
                             "appended for --extra: '--beta 0' -> <budget>_beta0)")
    parser.add_argument("--torch-threads", type=int, default=1, help="--torch-threads of every run (0: leave unset)")
    parser.add_argument("--nice", type=int, default=0, help="niceness of the local runs")
    parser.add_argument("--python", default=None, help="interpreter of the runs (default: this one)")
    parser.add_argument("--extra", default="", help="more flags for every run, as one quoted string")
    parser.add_argument("--dry-run", action="store_true", help="print the command lines of the runs to do, run nothing")
    parser.add_argument("--submitit", action="store_true", help="hand the runs to submitit (Slurm by default)")
    parser.add_argument("--submitit-cluster", default="slurm", choices=("slurm", "local"),
                        help="with --submitit: a Slurm job array, or local processes through submitit's "
                             "LocalExecutor (waits for them)")
    parser.add_argument("--slurm-partition", default=None, help="with --submitit: the Slurm partition")
    parser.add_argument("--slurm-gpus", type=int, default=0, help="with --submitit: GPUs per job")
    parser.add_argument("--timeout-min", type=int, default=240, help="with --submitit: time limit of each job")
    args = parser.parse_args(argv)
    for task in args.tasks:
        try:
            osd_common.check_task(task)
        except osd_common.TaskError as err:
            parser.error(str(err))
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.records_dir is None:
        try:
            args.records_dir = default_records_dir(args.budget, shlex.split(args.extra))
        except ValueError as err:
            parser.error(str(err))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    python = args.python or ("python" if args.dry_run else sys.executable)
    runs = plan(args.algos, args.tasks, args.tiers, args.seeds, args.budget, args.records_dir, python,
                args.torch_threads, shlex.split(args.extra))
    todo = [run for run in runs if not run["done"]]
    print(f"grid: {len(runs)} runs ({len(args.algos)} algorithms x {len(args.tasks)} tasks x {len(args.tiers)} "
          f"tiers x {len(args.seeds)} seeds), budget {args.budget}; {len(runs) - len(todo)} have a record in "
          f"{args.records_dir}, {len(todo)} to run")
    if args.dry_run:
        for run in todo:
            print(shlex.join(run["command"]))
        return 0
    missing = sorted({run["command"][1] for run in todo if not (REPO / run["command"][1]).exists()})
    if missing:
        raise SystemExit(f"grid: {', '.join(missing)} not found in {REPO}; drop the algorithms or tasks that need "
                         "them (--algos/--tasks)")
    if not todo:
        return 0
    commit, dirty = osd_common.git_commit()
    write_manifest(args.records_dir, {
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(["python", "benchmarks/grid.py", *argv]),
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget": args.budget,
        "budget_flags": BUDGETS[args.budget], "runs": len(runs), "to_run": len(todo), "workers": args.workers,
        "backend": "submitit" if args.submitit else "local", "git_commit": commit, "git_dirty": dirty,
        "machine": osd_common.machine_info(),
    })
    if args.submitit:
        failed = run_submitit(todo, args)
        return 1 if failed else 0
    start = time.time()
    build_missing_datasets(todo)
    failed = run_local(todo, args.workers, args.records_dir / "logs", args.nice)
    print(f"grid: {len(todo) - len(failed)} of {len(todo)} runs finished in {(time.time() - start) / 60:.1f} min"
          + (f"; {len(failed)} failed (logs in {args.records_dir / 'logs'}): rerun to retry them" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
