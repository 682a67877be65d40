"""Baselines (BC, MATD3+BC) end to end on a tiny dataset, the benchmark grid, the report, the throughput
script. The scripts run as real command lines with tiny budgets, as a user would run them."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))
sys.path.insert(0, str(REPO / "benchmarks"))

import osd_common  # noqa: E402

BASELINES = {"bc": "baselines/bc.py", "matd3-bc": "baselines/matd3_bc.py"}
SCALARS = {
    "bc": {"losses/bc", "charts/SPS", "charts/episodic_return", "charts/normalized_score"},
    "matd3-bc": {"losses/q", "losses/actor", "losses/actor_bc", "losses/actor_q", "charts/SPS",
                 "charts/episodic_return", "charts/normalized_score"},
}
EXTRA = {"bc": ["--lr", "3e-3"], "matd3-bc": []}  # a larger step size, so BC's loss falls within 60 steps
CHECKPOINT_NETS = {"bc": {"actors"}, "matd3-bc": {"q_net", "q_target", "actors", "actor_targets"}}
TINY = ["--total-steps", "60", "--eval-every", "30", "--eval-episodes", "1", "--final-eval-episodes", "2",
        "--batch-size", "32", "--hidden-dim", "32", "--log-every", "10", "--torch-threads", "1"]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    import generate  # datasets/generate.py

    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    generate.generate("mpe/simple_spread", "mixed", out=path, episodes=8, progress=False)
    return path


def run_script(script: str, *argv: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / script), *argv], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def read_scalars(run_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def load_module(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"baseline_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train(tiny_dataset, tmp_path_factory):
    """train(algorithm) -> (algorithm, working dir, record path): one tiny run per algorithm and module."""
    done = {}

    def run(algorithm: str):
        if algorithm not in done:
            workdir = tmp_path_factory.mktemp(algorithm)
            record = workdir / "records" / f"{algorithm}.json"
            process = run_script(BASELINES[algorithm], "--dataset", str(tiny_dataset), "--seed", "3", *TINY,
                                 *EXTRA[algorithm], "--record", str(record), cwd=workdir)
            assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
            done[algorithm] = (algorithm, workdir, record)
        return done[algorithm]

    return run


@pytest.fixture(params=sorted(BASELINES))
def trained(request, train):
    return train(request.param)


def test_baseline_writes_checkpoint_events_and_a_valid_record(trained, tiny_dataset):
    import torch

    algorithm, workdir, record_path = trained
    record = osd_common.load_record(record_path)  # raises if any field is missing or ill-typed
    assert record["algorithm"] == algorithm and record["task"] == "mpe/simple_spread" and record["tier"] == "mixed"
    assert record["seed"] == 3 and record["updates"] == 60 and record["eval_episodes"] == 2  # the last evaluation: --final-eval-episodes
    assert [step for step, _ in record["eval_curve"]] == [30, 60]
    assert record["final_normalized_score"] == record["eval_curve"][-1][1]
    assert record["best_normalized_score"] == max(score for _, score in record["eval_curve"])
    data_meta = osd_common.load_dataset(str(tiny_dataset)).meta
    assert record["dataset"]["sha256"] == data_meta["sha256"]
    assert record["dataset"]["normalized_score"] == data_meta["normalized_score"]  # the data's own level
    assert record["updates_per_s"] > 0 and record["wall_time_s"] >= record["train_time_s"] > 0
    assert "--record" in record["command"] and record["machine"]["torch_threads"] == 1
    assert [p.name for p in record_path.parent.iterdir()] == [record_path.name]  # no temporary file left

    checkpoints = list((workdir / "checkpoints").glob("*.pt"))
    assert len(checkpoints) == 1 and record["checkpoint"].endswith(checkpoints[0].name)
    checkpoint = torch.load(checkpoints[0], weights_only=False)
    assert CHECKPOINT_NETS[algorithm] <= set(checkpoint)
    assert checkpoint["algorithm"] == algorithm and checkpoint["args"]["total_steps"] == 60
    assert {"obs_mean", "obs_std"} <= set(checkpoint["normalizers"])
    assert checkpoint["meta"]["task"] == "mpe/simple_spread" and checkpoint["meta"]["n_agents"] == 3

    (run_dir,) = list((workdir / "runs").iterdir())
    assert run_dir.name.startswith(f"mpe_simple_spread__{algorithm.replace('-', '_')}__3__")
    scalars = read_scalars(run_dir)
    assert SCALARS[algorithm] <= set(scalars), set(scalars)
    assert [v for _, v in scalars["charts/normalized_score"]] == pytest.approx([s for _, s in record["eval_curve"]])


def test_eval_only_reproduces_the_final_score(trained):
    algorithm, workdir, record_path = trained
    record = osd_common.load_record(record_path)
    process = run_script(BASELINES[algorithm], "--eval-only", "--checkpoint", record["checkpoint"], "--seed", "3",
                         "--final-eval-episodes", "2", "--torch-threads", "1", cwd=workdir)
    assert process.returncode == 0, process.stderr[-3000:]
    assert f"normalized score {record['final_normalized_score']:.1f} over 2 episodes" in process.stdout


def test_bc_loss_falls(train):
    _, workdir, _ = train("bc")
    (run_dir,) = list((workdir / "runs").iterdir())
    losses = [v for _, v in read_scalars(run_dir)["losses/bc"]]
    assert len(losses) >= 5 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_same_seed_same_run(train, tiny_dataset, tmp_path):
    """MATD3+BC (critic, delayed actor, target smoothing noise; every source of randomness BC has) again
    with the same seed: the same record."""
    algorithm, _, record_path = train("matd3-bc")
    again = tmp_path / "again.json"
    process = run_script(BASELINES[algorithm], "--dataset", str(tiny_dataset), "--seed", "3", *TINY,
                         *EXTRA[algorithm], "--no-save-model", "--record", str(again), cwd=tmp_path)
    assert process.returncode == 0, process.stderr[-3000:]
    first, second = osd_common.load_record(record_path), osd_common.load_record(again)
    assert first["eval_curve"] == second["eval_curve"]
    assert first["final_return_mean"] == second["final_return_mean"]


@pytest.mark.parametrize("algorithm", sorted(BASELINES))
def test_nan_guard_stops_with_a_clear_message(algorithm):
    module = load_module(REPO / BASELINES[algorithm])  # the script's program name, in osd_common's guard
    osd_common.check_finite(module.PROGRAM, {"ok": 1.0}, 3)
    with pytest.raises(SystemExit, match=rf"{module.PROGRAM}: loss 'q' is nan at step 7\. Training stopped"):
        osd_common.check_finite(module.PROGRAM, {"ok": 1.0, "q": float("nan")}, 7)


@pytest.mark.parametrize("script, flag, value", [
    ("osd_mpe.py", "eval_every", 0), ("osd_mamujoco.py", "policy_steps", 0), ("osd_mpe.py", "critic_steps", -1),
    ("baselines/bc.py", "final_eval_episodes", 0), ("baselines/matd3_bc.py", "batch_size", -4),
    ("osd_mpe.py", "seed", -5), ("baselines/bc.py", "seed", -1), ("osd_mamujoco.py", "beta", -0.1),
    ("osd_mpe.py", "value_weighted_steps", -1)])
def test_a_budget_below_its_minimum_is_refused_naming_its_flag(script, flag, value):
    module = load_module(REPO / script)

    def resolve(args):
        return osd_common.resolve_budgets(module.PROGRAM, args, module.PRESETS)

    filled = resolve(module.Args())  # the preset's own values pass
    assert getattr(filled, flag) is None or getattr(filled, flag) >= osd_common.FLAG_MINIMUMS.get(flag, 1)
    if script.startswith("osd_"):  # phase 1 may be skipped (0 steps), as --pretrained does
        assert resolve(module.Args(pretrain_steps=0, critic_steps=0)).pretrain_steps == 0
    low = osd_common.FLAG_MINIMUMS.get(flag, 1)
    with pytest.raises(SystemExit, match=f"{module.PROGRAM}: --{flag.replace('_', '-')} is {value}; it must be at least {low}"):
        resolve(module.Args(**{flag: value}))


@pytest.mark.parametrize("script", ["osd_mpe.py", "osd_mamujoco.py"])
def test_a_zero_or_negative_value_weighted_temperature_is_refused(script):
    """Phase 1b divides by T: 0 would make its weights NaN, so it stops before any work, naming the flag."""
    module = load_module(REPO / script)
    assert osd_common.resolve_budgets(module.PROGRAM, module.Args(value_weighted_temperature=0.5), module.PRESETS)
    for value in (0.0, -0.1):
        with pytest.raises(SystemExit, match=f"{module.PROGRAM}: --value-weighted-temperature is {value}; it must be above 0.0"):
            osd_common.resolve_budgets(module.PROGRAM, module.Args(value_weighted_temperature=value), module.PRESETS)


@pytest.mark.parametrize("script", ["osd_mpe.py", "osd_mamujoco.py"])
def test_an_expectile_outside_zero_one_is_refused(script):
    """IQL's expectile weights residuals by tau and 1 - tau: outside (0, 1) one side gets a negative weight."""
    module = load_module(REPO / script)
    assert osd_common.resolve_budgets(module.PROGRAM, module.Args(expectile=0.9), module.PRESETS)
    for value in (0.0, 1.0, 1.5):
        with pytest.raises(SystemExit, match=f"{module.PROGRAM}: --expectile is {value}; it must be between 0 and 1"):
            osd_common.resolve_budgets(module.PROGRAM, module.Args(expectile=value), module.PRESETS)


def test_unknown_task_is_refused(tmp_path):
    process = run_script(BASELINES["bc"], "--task", "mpe/simple_nothing", cwd=tmp_path)
    assert process.returncode != 0 and "unknown task 'mpe/simple_nothing'" in process.stderr


# ---------------------------------------------------------------------------------------------------
# benchmarks/grid.py and benchmarks/report.py
# ---------------------------------------------------------------------------------------------------


def fake_record(algorithm="bc", task="mpe/simple_spread", tier="expert", seed=1, final=50.0, best=60.0) -> dict:
    record = {
        "record_version": osd_common.RECORD_VERSION, "algorithm": algorithm, "task": task, "tier": tier,
        "seed": seed, "dataset": {"path": "x.npz", "sha256": "abc", "transitions": 10},
        "final_normalized_score": final, "final_return_mean": -10.0, "final_return_std": 1.0,
        "best_normalized_score": best, "eval_episodes": 10, "eval_curve": [[100, best], [200, final]],
        "updates": 200, "train_time_s": 2.0, "updates_per_s": 100.0, "wall_time_s": 3.0,
        "git_commit": None, "git_dirty": None,
        "machine": {"platform": "test", "python": "3", "cpu_count": 2, "torch": "2", "torch_threads": 1,
                    "device": "cpu", "device_name": "x"},
        "command": f"python baselines/bc.py --seed {seed}", "args": {}, "run_name": "r", "checkpoint": None,
        "finished_at": "2025-01-01T00:00:00+00:00",
    }
    return osd_common.check_record(record)


def test_record_checks_refuse_incomplete_records(tmp_path):
    record = fake_record()
    for broken in ({k: v for k, v in record.items() if k != "eval_curve"}, {**record, "final_normalized_score": None},
                   {**record, "seed": "1"}, {**record, "eval_curve": []}):
        with pytest.raises(osd_common.RecordError):
            osd_common.check_record(broken)
    path = osd_common.write_record(tmp_path / "r.json", record)
    assert osd_common.load_record(path) == record
    path.write_text(path.read_text()[:-40])  # a truncated file never counts
    with pytest.raises(osd_common.RecordError, match="cannot be read"):
        osd_common.load_record(path)


def test_record_optional_actor_diagnostics_are_checked_when_present():
    """OMSD records carry per-agent actor diagnostics; records written before them (fake_record) still load."""
    record = fake_record("omsd")
    assert not set(osd_common.OPTIONAL_RECORD_SCHEMA) & set(record)
    with_diagnostics = {**record, "score_push_rms": [1.5, 2.0], "q_push_rms": [0.3, 0.3], "action_at_bounds": [0, 0.25]}
    assert osd_common.check_record(with_diagnostics) is with_diagnostics
    for broken in ([1.0, float("nan")], "0.3", [True]):
        with pytest.raises(osd_common.RecordError, match="'q_push_rms' .* not a list of finite numbers"):
            osd_common.check_record({**record, "q_push_rms": broken})


def test_grid_dry_run_lists_the_commands_and_skips_finished_runs(tmp_path, capsys):
    import grid

    argv = ["--algos", "omsd", "omsd-independent", "omsd-beta0", "bc", "matd3-bc", "--tasks", "mpe/simple_spread",
            "mamujoco/HalfCheetah-2x3", "--tiers", "expert", "random", "--seeds", "1", "2", "--budget", "smoke",
            "--records-dir", str(tmp_path), "--dry-run"]
    assert grid.main(argv) == 0
    commands = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("python ")]
    assert len(commands) == 5 * 2 * 2 * 2
    for command in commands:
        flags = dict(zip(command[2::2], command[3::2]))
        record = pathlib.Path(flags["--record"])
        algorithm, task, tier, seed = record.stem.split("__")
        assert record.parent == tmp_path.resolve() and (task, tier, seed) == (flags["--task"].replace("/", "_"),
                                                                     flags["--tier"], flags["--seed"])
        family = flags["--task"].split("/")[0]
        if algorithm.startswith("omsd"):
            assert command[1] == {"mpe": "osd_mpe.py", "mamujoco": "osd_mamujoco.py"}[family], command
        else:
            assert command[1] == BASELINES[algorithm], command
        assert (flags.get("--decomposition") == "independent") == (algorithm == "omsd-independent")
        assert (flags.get("--beta") == "0") == (algorithm == "omsd-beta0")
        budget = grid.BUDGETS["smoke"][grid.VARIANTS[algorithm][0]]
        assert all(flags[f"--{k}"] == str(v) for k, v in budget.items())
        assert flags["--torch-threads"] == "1"

    done = tmp_path.resolve() / "bc__mpe_simple_spread__expert__1.json"
    osd_common.write_record(done, fake_record("bc", "mpe/simple_spread", "expert", 1))
    partial = tmp_path.resolve() / "matd3-bc__mpe_simple_spread__expert__1.json"
    partial.write_text(json.dumps(fake_record("matd3-bc"))[:100])  # half written: must not count
    other = tmp_path.resolve() / "bc__mpe_simple_spread__expert__2.json"
    osd_common.write_record(other, fake_record("bc", "mpe/simple_spread", "expert", 1))  # another run's record
    assert grid.main(argv) == 0
    out = capsys.readouterr().out
    assert "1 have a record" in out and f"--record {done}" not in out
    assert f"--record {partial}" in out and f"--record {other}" in out
    assert len([line for line in out.splitlines() if line.startswith("python ")]) == 5 * 2 * 2 * 2 - 1


def test_grid_pool_runs_commands_and_reports_failures(tmp_path):
    import grid

    writer = ("import sys, json; sys.path.insert(0, %r); import osd_common; "
              "osd_common.write_record(sys.argv[1], json.loads(sys.argv[2]))" % str(REPO))
    runs = []
    for seed in (1, 2):
        record = tmp_path / f"bc__mpe_simple_spread__expert__{seed}.json"
        runs.append({"name": record.stem, "record": record, "done": False,
                     "command": [sys.executable, "-c", writer, str(record), json.dumps(fake_record(seed=seed))]})
    bad = tmp_path / "bc__mpe_simple_spread__expert__3.json"
    runs.append({"name": bad.stem, "record": bad, "done": False, "command": [sys.executable, "-c", "raise SystemExit(3)"]})
    failed = grid.run_local(runs, workers=2, logs_dir=tmp_path / "logs")
    assert [run["name"] for run in failed] == [bad.stem]
    assert all(grid.record_is_complete(run["record"]) for run in runs[:2]) and not bad.exists()
    assert (tmp_path / "logs" / f"{bad.stem}.log").read_text().startswith("$ ")


def test_grid_runs_through_submitit_local_executor(tmp_path, monkeypatch):
    """The engine path for real: two smoke-budget runs handed to submitit (its LocalExecutor, the same
    command lines a Slurm array would get) both write their records."""
    import generate  # datasets/generate.py
    import grid

    cache = tmp_path / "cache"  # the runs read their dataset from this cache (OSD_DATA_DIR reaches the jobs)
    generate.generate("mpe/simple_spread", "expert", out=cache / "mpe" / "simple_spread" / "expert.npz",
                      episodes=8, progress=False)
    monkeypatch.setenv("OSD_DATA_DIR", str(cache))
    argv = ["--budget", "smoke", "--algos", "bc", "--tasks", "mpe/simple_spread", "--tiers", "expert",
            "--seeds", "1", "2", "--records-dir", str(tmp_path), "--submitit", "--submitit-cluster", "local",
            "--extra=--no-save-model"]
    assert grid.main(argv) == 0
    for seed in (1, 2):
        record = tmp_path / grid.record_name("bc", "mpe/simple_spread", "expert", seed)
        assert grid.record_is_complete(record, dict(algorithm="bc", task="mpe/simple_spread", tier="expert", seed=seed))
    manifest = json.loads((tmp_path / grid.MANIFEST).read_text())["invocations"]
    assert manifest[-1]["backend"] == "submitit"


def _append_manifest_entries(records_dir: str, worker: int, count: int) -> None:
    import grid

    for i in range(count):
        grid.write_manifest(pathlib.Path(records_dir), {"worker": worker, "i": i})


def test_concurrent_grids_keep_every_manifest_entry(tmp_path):
    """Grids started together on one folder once dropped each other's manifest entry (read, append, write)."""
    import multiprocessing

    import grid

    processes = [multiprocessing.get_context("fork").Process(target=_append_manifest_entries,
                                                             args=(str(tmp_path), worker, 40))
                 for worker in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert all(process.exitcode == 0 for process in processes)
    entries = json.loads((tmp_path / grid.MANIFEST).read_text())["invocations"]
    assert sorted((e["worker"], e["i"]) for e in entries) == [(w, i) for w in range(4) for i in range(40)]


def test_unreadable_manifest_stops_the_grid_and_is_kept(tmp_path):
    import grid

    manifest = tmp_path / grid.MANIFEST
    manifest.write_text('{"invocations": [{"command": "an earlier grid"}')  # cut off
    with pytest.raises(SystemExit, match="grid_manifest.json is not a grid manifest"):
        grid.main(["--budget", "smoke", "--algos", "bc", "--tasks", "mpe/simple_spread", "--tiers", "expert",
                   "--seeds", "1", "--records-dir", str(tmp_path)])
    assert manifest.read_text() == '{"invocations": [{"command": "an earlier grid"}'
    assert not list(tmp_path.glob("*__*.json"))  # no run started


def test_git_dirty_counts_code_not_records(tmp_path, monkeypatch):
    """A grid writes its manifest and records while its runs go: those must not mark the runs dirty."""
    def git(*argv):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *argv], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "benchmarks" / "records").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "benchmarks" / "records" / "grid_manifest.json").write_text("{}\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "first")
    monkeypatch.setattr(osd_common, "REPO_ROOT", tmp_path)
    commit, dirty = osd_common.git_commit()
    assert len(commit) == 40 and dirty is False
    (tmp_path / "benchmarks" / "records" / "grid_manifest.json").write_text('{"invocations": []}\n')
    assert osd_common.git_commit() == (commit, False)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert osd_common.git_commit() == (commit, True)


def test_report_table_mean_std_and_figures(tmp_path):
    import report

    records = tmp_path / "records"
    for seed, final, best in ((1, 10.0, 30.0), (2, 20.0, 40.0)):
        record = fake_record("bc", "mpe/simple_spread", "expert", seed, final, best)
        record["dataset"]["normalized_score"] = 100.25  # the data's own average, as scripts now record it
        osd_common.write_record(records / f"bc__mpe_simple_spread__expert__{seed}.json", record)
    random_record = fake_record("omsd", "mpe/simple_spread", "random", 1, 70.0, 75.0)
    random_record["dataset"]["sha256"] = "abc-random"  # another file than the expert runs'
    osd_common.write_record(records / "omsd__mpe_simple_spread__random__1.json", random_record)
    beta0_record = fake_record("omsd-beta0", "mpe/simple_spread", "random", 1, 60.0, 65.0)
    beta0_record["dataset"]["sha256"] = "abc-random"
    osd_common.write_record(records / "omsd-beta0__mpe_simple_spread__random__1.json", beta0_record)
    (records / "matd3-bc__mpe_simple_spread__expert__1.json").write_text("{")  # broken: left out
    out, figures = tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures"
    assert report.main(["--records", str(records), "--out", str(out), "--figures-dir", str(figures),
                        "--throughput", str(tmp_path / "absent.json")]) == 0
    text = out.read_text()
    table = text.split("## Final normalized score")[1].split("## Best")[0]
    header = next(line for line in table.splitlines() if line.startswith("| task"))
    assert header.split(" | ")[2:5] == ["OMSD", "OMSD (beta 0)", "BC"] and "comparable in shape only" in header
    expert_row = next(line for line in table.splitlines() if "| expert |" in line)
    assert header.split(" | ")[5] == "the data's own episodes"
    assert "15.0 ± 7.1 (n=2) | 100.2 | 102.3 |" in expert_row  # BC, the data's own score, the paper's number
    random_row = next(line for line in table.splitlines() if "| random |" in line)
    # a record without the data's score, whose dataset file no record and no cached file knows: unknown
    assert "70.0 (n=1) | 60.0 (n=1) | — | — | 69.8 |" in random_row
    best = text.split("## Best")[1].split("##")[0]
    assert "35.0 ± 7.1 (n=2)" in best
    assert "MATD3+BC" not in header and "(4 runs)" in text  # the broken record is not counted
    assert "python baselines/bc.py --seed" in text and "2 CPUs" in text
    assert (figures / "curves_mpe_simple_spread.png").stat().st_size > 1000


def test_grid_names_the_records_folder_by_budget_and_overrides(tmp_path, capsys):
    import grid

    records = grid.REPO / "benchmarks" / "records"
    assert grid.default_records_dir("short") == records / "short"
    assert grid.default_records_dir("short", ["--policy-steps", "20000", "--beta=0"]) == \
        records / "short_policy-steps20000_beta0"
    assert grid.default_records_dir("default", ["--weighting", "sigma2", "--subtract-noise"]) == \
        records / "default_weightingsigma2_subtract-noise"
    argv = ["--algos", "bc", "--tasks", "mpe/simple_spread", "--tiers", "expert", "--seeds", "1", "--budget", "smoke",
            "--dry-run", "--extra", "--total-steps 30"]
    assert grid.main(argv) == 0
    assert "--record benchmarks/records/smoke_total-steps30/bc__mpe_simple_spread__expert__1.json" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        grid.parse_args(argv[:-1] + ["0.3 --beta"])  # a value without its flag
    assert "is not a --flag" in capsys.readouterr().err


def test_report_one_section_per_record_folder(tmp_path):
    import report

    root = tmp_path / "records"
    osd_common.write_record(root / "omsd__mpe_simple_spread__mixed__1.json",
                            fake_record("omsd", "mpe/simple_spread", "mixed", 1, 80.0, 82.0))
    osd_common.write_record(root / "short" / "omsd__mpe_simple_spread__mixed__1.json",
                            fake_record("omsd", "mpe/simple_spread", "mixed", 1, 50.0, 55.0))
    osd_common.write_record(root / "smoke" / "omsd__mpe_simple_spread__mixed__1.json",
                            fake_record("omsd", "mpe/simple_spread", "mixed", 1, 1.0, 1.0))
    (root / "short" / "grid_manifest.json").write_text(json.dumps({"invocations": [{"budget": "short"}]}))
    (root / "short" / "ABOUT.md").write_text("The short budget, for a quick look.")
    dirs = report.default_record_dirs(root)
    assert dirs == [root, root / "short"]  # smoke runs never reach the report
    out, figures = tmp_path / "results.md", tmp_path / "figures"
    report.build_report(dirs, out, figures, "python benchmarks/report.py")
    text = out.read_text()
    records_part, short_part = text.split("## `short`: ")
    assert "## `records`: " in records_part and "80.0 (n=1)" in records_part and "50.0" not in records_part
    assert "50.0 (n=1)" in short_part and "80.0" not in short_part
    assert "The short budget, for a quick look." in short_part and "quick look" not in records_part
    assert (figures / "curves_short_mpe_simple_spread.png").exists()
    assert (figures / "curves_records_mpe_simple_spread.png").exists()


def test_report_takes_the_data_score_from_any_record_of_the_same_file(tmp_path):
    import report

    root = tmp_path / "records"
    with_score = fake_record("omsd", "mpe/simple_spread", "mixed", 1, 80.0, 82.0)
    with_score["dataset"]["normalized_score"] = 72.6
    osd_common.write_record(root / "omsd__mpe_simple_spread__mixed__1.json", with_score)
    osd_common.write_record(root / "short" / "omsd__mpe_simple_spread__mixed__1.json",  # same sha256, no score
                            fake_record("omsd", "mpe/simple_spread", "mixed", 1, 50.0, 55.0))
    other_file = fake_record("omsd", "mpe/simple_spread", "random", 1, 20.0, 25.0)
    other_file["dataset"]["sha256"] = "another file"
    osd_common.write_record(root / "short" / "omsd__mpe_simple_spread__random__1.json", other_file)
    out = tmp_path / "results.md"
    report.build_report([root, root / "short"], out, None, "python benchmarks/report.py")
    short_part = out.read_text().split("## `short`: ")[1]
    assert "| spread (CN) | mixed | 50.0 (n=1) | 72.6 |" in short_part
    assert "| spread (CN) | random | 20.0 (n=1) | — |" in short_part  # no record knows that file's score


def test_report_names_an_unreadable_manifest_and_labels_by_folder(tmp_path, capsys):
    import report

    (tmp_path / "short").mkdir()
    (tmp_path / "short" / "grid_manifest.json").write_text(json.dumps({"invocations": [{"budget": "default"}]}))
    assert report.budget_of(tmp_path / "short") == "default"  # the manifest wins over the folder's name
    (tmp_path / "short" / "grid_manifest.json").write_text("{ truncated")
    assert report.budget_of(tmp_path / "short") == "short"
    assert "grid_manifest.json is unreadable" in capsys.readouterr().err


def test_spread_coordination_classifies_final_assignments(train, tmp_path, monkeypatch):
    import shutil

    import spread_coordination

    def obs_nearest(landmark: int) -> np.ndarray:
        obs = np.zeros(18, dtype=np.float32)
        obs[4:10] = 1.0  # every landmark at (1, 1) from the agent ...
        obs[4 + 2 * landmark: 6 + 2 * landmark] = (0.1, 0.0)  # ... except the one it sits next to
        return obs

    assert spread_coordination.assignment([obs_nearest(0), obs_nearest(1), obs_nearest(2)]) == "012"
    assert spread_coordination.assignment([obs_nearest(2), obs_nearest(0), obs_nearest(1)]) == "201"
    assert spread_coordination.assignment([obs_nearest(1), obs_nearest(1), obs_nearest(0)]) == "overlap"

    def obs_nearest_of_4(landmark: int) -> np.ndarray:  # spread-N4: 4 landmarks, 3 others, 3 comm channels
        obs = np.zeros(4 + 8 + 6 + 6, dtype=np.float32)
        obs[4:12] = 1.0
        obs[4 + 2 * landmark: 6 + 2 * landmark] = (0.1, 0.0)
        return obs

    assert spread_coordination.assignment([obs_nearest_of_4(k) for k in (3, 1, 0, 2)]) == "3102"
    assert spread_coordination.assignment([obs_nearest_of_4(k) for k in (3, 1, 0, 3)]) == "overlap"
    for task in ("mpe/simple_tag", "mpe/spread"):
        with pytest.raises(SystemExit, match="--task"):
            spread_coordination.main(["--records", str(tmp_path), "--task", task])

    _, workdir, record = train("bc")  # a real checkpoint, rebuilt by the script that wrote it
    records = tmp_path / "records"
    records.mkdir()
    shutil.copy(record, records / "bc__mpe_simple_spread__mixed__3.json")
    monkeypatch.chdir(workdir)  # records name their checkpoint relative to where the run ran
    out = tmp_path / "coordination.json"
    assert spread_coordination.main(["--records", str(records), "--episodes", "3", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["bc"]
    assert result["seed"] == 3 and abs(sum(result["shares"].values()) - 1.0) < 1e-9
    assert result["overlap"] == result["shares"].get("overlap", 0.0)
    # the split scores make up the whole: share of each kind times its score (the score is linear in return)
    parts = [(1 - result["overlap"], result["score_clean"]), (result["overlap"], result["score_overlap"])]
    assert sum(share * score for share, score in parts if score is not None) == pytest.approx(result["normalized_score"])
    assert (result["final_distance_clean"] is None) == (result["overlap"] == 1.0)
    near = spread_coordination.final_distance([obs_nearest(0), obs_nearest(1), obs_nearest(1)])
    assert near == pytest.approx(0.1)  # each agent 0.1 from its nearest landmark


def test_throughput_runs_the_scripts_and_reads_their_records(tiny_dataset, tmp_path):
    """benchmarks/throughput.py runs osd_mpe.py as command lines (phase 1, then phase 2 on phase 1's
    checkpoint with --pretrained) and reports the updates/s of their run records, which it keeps whole."""
    import throughput

    out = tmp_path / "throughput.json"
    assert throughput.main(["--dataset", str(tiny_dataset), "--steps", "5", "--actor-steps", "4", "--batch-sizes", "8",
                            "--devices", "cpu", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    first, second = report["runs"]
    assert (first["phase"], second["phase"]) == ("phase 1 (behavior + critics)", "phase 2 (actors)")
    assert first["updates"] == 5 + 1 and second["updates"] == 4  # phase 1 ends with one actor step
    assert second["record"]["args"]["pretrained"] == first["record"]["checkpoint"]
    assert all(r["updates_per_s"] > 0 and r["record"]["args"]["actor_batch_size"] == 8 for r in report["runs"])
    assert first["command"].startswith("python osd_mpe.py --dataset")
    assert "| mpe/simple_spread | cpu | 1 | 8 |" in throughput.format_throughput(report)
    with pytest.raises(SystemExit, match="--dataset and --tier both name the data"):
        throughput.main(["--dataset", str(tiny_dataset), "--tier", "random", "--out", str(out)])


def test_grid_builds_each_missing_dataset_once_before_the_pool(tmp_path, monkeypatch):
    """Two seeds of a cell whose dataset is missing: one build, not one per worker; a cell already in the
    cache and runs given their own file (--dataset, also as --dataset=PATH) are not built."""
    import grid

    monkeypatch.setattr(osd_common, "DATASET_CACHE", tmp_path / "cache")
    present = osd_common.dataset_path("mpe/simple_spread", "expert")
    present.parent.mkdir(parents=True)
    present.write_bytes(b"")
    builds = []

    def fake_load_dataset(name, build_if_missing=False):
        assert build_if_missing
        builds.append(name)
        osd_common.dataset_path(*name.rsplit("/", 1)).write_bytes(b"")

    monkeypatch.setattr(osd_common, "load_dataset", fake_load_dataset)
    runs = grid.plan(["bc", "omsd"], ["mpe/simple_spread"], ["expert", "mixed"], [1, 2], "smoke", tmp_path)
    own_file = grid.plan(["bc"], ["mpe/simple_tag"], ["random"], [1], "smoke", tmp_path, extra=["--dataset", "x.npz"])
    own_file_eq = grid.plan(["bc"], ["mpe/simple_tag"], ["medium"], [1], "smoke", tmp_path, extra=["--dataset=x.npz"])
    assert grid.build_missing_datasets(runs + own_file + own_file_eq) == ["mpe/simple_spread/mixed"]
    assert builds == ["mpe/simple_spread/mixed"]
    assert grid.build_missing_datasets(runs) == []  # built: nothing more to do
