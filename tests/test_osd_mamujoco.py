"""osd_mamujoco.py end to end on a tiny HalfCheetah-2x3 dataset: training, TensorBoard tags, checkpoint,
run record, --eval-only, --capture-video, error messages, NaN guard, determinism.

CPU only, one torch thread; the whole file runs in about 40 seconds on 2 shared cores. Evaluation runs
full 1000-step episodes (osd_common.evaluate has no episode cap), one per evaluation here.
"""

from __future__ import annotations

import json
import re
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))
sys.path.insert(0, str(REPO / "benchmarks"))

import osd_common  # noqa: E402
from osd_mamujoco import ValueNet, q_loss  # noqa: E402

torch.set_num_threads(1)

TASK = "mamujoco/HalfCheetah-2x3"
REFS = (-300.0, 5000.0)  # fixed references for the tiny file (the real ones are measured by the generator)
SCALAR_TAGS = {"losses/behavior", "losses/q", "losses/v", "losses/actor_q", "losses/actor_score",
               "charts/episodic_return", "charts/normalized_score", "charts/SPS",
               # the actor diagnostics, per agent (HalfCheetah 2x3 has 2)
               *(f"{tag}_agent{i}" for i in range(2)
                 for tag in ("losses/score_push_rms", "losses/q_push_rms", "charts/action_at_bounds"))}
TINY_FLAGS = ("--pretrain-steps", "20", "--critic-steps", "20", "--policy-steps", "20", "--eval-every", "10",
              "--eval-episodes", "1", "--final-eval-episodes", "2", "--log-every", "5", "--behavior-batch-size", "32", "--critic-batch-size", "32",
              "--actor-batch-size", "32", "--score-width", "64", "--hidden-dim", "64")


def run_script(cwd: pathlib.Path, *flags: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, str(REPO / "osd_mamujoco.py"), "--torch-threads", "1", *flags],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def scalars(run_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny random-tier HalfCheetah-2x3 file from the data generator: 2 episodes cut to 50 steps, each
    ending in a timeout (never a terminal)."""
    import mamujoco_data  # datasets/mamujoco_data.py

    root = tmp_path_factory.mktemp("osd_mamujoco")
    mamujoco_data.generate_mamujoco(TASK, "random", out=root / "tiny.npz", episodes=2, seed=0, progress=False,
                                    episode_steps=50, refs=REFS)
    return root


@pytest.fixture(scope="module")
def trained_run(workdir):
    """Two training runs with the same seed (names differ only by --exp-name), both writing a record."""
    results = [run_script(workdir, "--dataset", "tiny.npz", "--seed", "3", "--exp-name", name,
                          "--record", f"records/{name}.json", *TINY_FLAGS) for name in ("first", "second")]
    for name, result in zip(("first", "second"), results):
        assert result.returncode == 0, result.stderr[-3000:]
        (workdir / f"stdout_{name}.txt").write_text(result.stdout)
    return workdir


def run_dirs(workdir: pathlib.Path, exp_name: str) -> list[pathlib.Path]:
    return sorted((workdir / "runs").glob(f"mamujoco_HalfCheetah-2x3__{exp_name}__3__*"))


def test_training_writes_tensorboard_scalars_checkpoint_and_record(trained_run):
    (run_dir,) = run_dirs(trained_run, "first")
    logged = scalars(run_dir)
    assert SCALAR_TAGS <= set(logged), f"missing tags: {SCALAR_TAGS - set(logged)}"
    assert all(np.isfinite(value) for series in logged.values() for _, value in series)
    assert [step for step, _ in logged["charts/normalized_score"]] == [9, 19]  # every --eval-every actor steps

    (checkpoint_path,) = (trained_run / "checkpoints").glob("mamujoco_HalfCheetah-2x3__first__3__*.pt")
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    for key in ("score_net", "q_net", "q_target", "v_net", "actors", "normalizers", "args", "meta"):
        assert key in checkpoint
    assert checkpoint["normalizers"]["obs_mean"].shape == (2, 11)
    assert checkpoint["normalizers"]["state_std"].shape == (17,)  # env.state(), not the stacked observations
    assert checkpoint["args"]["seed"] == 3 and checkpoint["args"]["policy_steps"] == 20
    assert checkpoint["args"]["beta"] == 0.05  # no --beta: the random tier's default (BETA_BY_TIER leaves it out)
    assert checkpoint["meta"]["task"] == TASK and checkpoint["meta"]["obs_dims"] == [11, 11]

    record = osd_common.load_record(trained_run / "records" / "first.json")  # checks the whole schema
    assert (record["algorithm"], record["task"], record["tier"], record["seed"]) == ("omsd", TASK, "random", 3)
    assert record["updates"] == 40 and record["eval_episodes"] == 2  # the last evaluation: --final-eval-episodes
    assert [step for step, _ in record["eval_curve"]] == [10, 20]
    assert record["checkpoint"] is not None and pathlib.Path(trained_run / record["checkpoint"]).exists()
    final_return = logged["charts/episodic_return"][-1][1]
    assert record["final_return_mean"] == pytest.approx(final_return, rel=1e-5)
    # the actor diagnostics of the last actor step, per agent, as logged
    for name, section in (("score_push_rms", "losses"), ("q_push_rms", "losses"), ("action_at_bounds", "charts")):
        assert record[name] == pytest.approx([logged[f"{section}/{name}_agent{i}"][-1][1] for i in range(2)])
    assert record["q_push_rms"] == pytest.approx([0.05, 0.05], rel=1e-4)  # beta x a unit-RMS (batch-normalized) g


def test_same_seed_gives_identical_losses_and_weights(trained_run):
    first, second = scalars(run_dirs(trained_run, "first")[0]), scalars(run_dirs(trained_run, "second")[0])
    for tag in ("losses/behavior", "losses/q", "losses/v", "losses/actor", "losses/actor_score",
                "charts/episodic_return"):
        assert first[tag] == second[tag], tag
    checkpoints = [torch.load(next((trained_run / "checkpoints").glob(f"*__{name}__3__*.pt")), weights_only=False)
                   for name in ("first", "second")]
    for key, tensor in checkpoints[0]["actors"].items():
        assert torch.equal(tensor, checkpoints[1]["actors"][key]), key


def test_eval_only_reloads_checkpoint_without_training(trained_run):
    checkpoint = next((trained_run / "checkpoints").glob("*__first__3__*.pt"))
    result = run_script(trained_run, "--eval-only", "--checkpoint", str(checkpoint), "--final-eval-episodes", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval-only" in result.stdout and "normalized score" in result.stdout and "over 1 episodes" in result.stdout
    assert "phase 1" not in result.stdout + result.stderr  # no training happened


def test_capture_video_renders_a_gif(trained_run, tmp_path):
    """The renderer of --capture-video on a short frame skip budget (all 1000 steps, 3 frames), in a fresh
    process because MUJOCO_GL is read when mujoco is first imported. Skipped without an OpenGL backend."""
    checkpoint = next((trained_run / "checkpoints").glob("*__first__3__*.pt"))
    code = f"""
import os, sys
os.environ.setdefault("MUJOCO_GL", "egl")
sys.path.insert(0, {str(REPO)!r})
import torch
import osd_common as c
import osd_mamujoco as m
ckpt = torch.load({str(checkpoint)!r}, weights_only=False)
nets = m.build_networks(ckpt["meta"], m.Args(**ckpt["args"]), torch.device("cpu"))
nets["actors"].load_state_dict(ckpt["actors"])
norm = c.Normalizer(ckpt["normalizers"]["obs_mean"], ckpt["normalizers"]["obs_std"])
frames = c.render_episode("test", c.make_act_fn(nets["actors"], norm, "cpu"), {TASK!r}, seed=0, frame_skip=500)
c.save_gif(frames, {str(tmp_path / "episode.gif")!r}, scale=0.5)
print(len(frames), frames[0].shape)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if "could not render" in result.stderr:
        pytest.skip(f"no OpenGL backend for MuJoCo here: {result.stderr.strip().splitlines()[-1][:200]}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[0] == "3"  # t = 0, 500, 1000
    assert (tmp_path / "episode.gif").stat().st_size > 0


def test_critic_check_reads_a_mamujoco_checkpoint(trained_run, monkeypatch):
    """benchmarks/critic_check.py rebuilds the networks with the script that wrote the checkpoint."""
    import critic_check

    monkeypatch.chdir(trained_run)  # the runs name their dataset relative to it
    (path,) = (trained_run / "checkpoints").glob("mamujoco_HalfCheetah-2x3__first__3__*.pt")
    result = critic_check.check(str(path), n_states=20)
    assert result["task"] == TASK and result["episodes"] == 2 and result["states"] == 20
    assert all(np.isfinite(result[key]) for key in ("mean_q_data", "mean_q_actor", "mean_v", "actor_minus_data"))
    assert "| (c) mean V(s) - Q(s, a_data) |" in critic_check.format_table(result)


def test_independent_variant_records_its_algorithm(workdir, trained_run):
    result = run_script(workdir, "--dataset", "tiny.npz", "--exp-name", "variant", "--decomposition", "independent",
                        "--random-order", "--no-save-model", "--record", "records/variant.json", "--beta", "0.3",
                        *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    record = osd_common.load_record(workdir / "records" / "variant.json")
    assert record["algorithm"] == "omsd-independent" and record["checkpoint"] is None
    assert record["args"]["decomposition"] == "independent" and record["args"]["beta"] == 0.3
    # a large beta on a critic far from converged is flagged; the default beta of the tiny runs is not
    assert "note: beta 0.3 with 20 critic steps" in result.stdout
    assert "note: beta" not in (trained_run / "stdout_first.txt").read_text()


def test_bad_task_tier_and_missing_dataset_give_clear_errors(workdir, tmp_path):
    result = run_script(workdir, "--task", "mpe/simple_spread")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--task 'mpe/simple_spread' is not a MaMuJoCo task (MPE tasks run with osd_mpe.py)" in result.stderr
    assert "mamujoco/Ant-2x4" in result.stderr  # the message says what would work

    result = run_script(workdir, "--task", "mamujoco/Foo-2x3")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "--task 'mamujoco/Foo-2x3' cannot be built by gymnasium_robotics" in result.stderr

    result = run_script(workdir, "--tier", "legendary")
    assert result.returncode != 0
    assert ("--tier 'legendary' is not a tier; valid tiers: random, medium, medium-replay, expert, medium-expert"
            in result.stderr)

    # an empty cache and --no-build-dataset: the message names the command that makes the dataset
    empty_cache = {"OSD_DATA_DIR": str(tmp_path / "empty_cache")}
    result = run_script(workdir, "--tier", "expert", "--no-build-dataset", env_extra=empty_cache)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "python datasets/generate.py --task mamujoco/HalfCheetah-2x3 --tier expert" in result.stderr

    # a split osd has no data for: bring your own
    result = run_script(workdir, "--task", "mamujoco/Walker2d-2x3", env_extra=empty_cache)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ("osd generates datasets for mamujoco/HalfCheetah-2x3, mamujoco/Hopper-3x1, mamujoco/Ant-2x4 only; pass "
            "your own file with --dataset") in result.stderr


def test_nan_guard_names_the_loss_and_step(workdir):
    """Rewards of 1e30 are finite in the file, but their squared TD error overflows float32."""
    data = osd_common.load_dataset(workdir / "tiny.npz")
    arrays = {key: getattr(data, key) for key in osd_common.TRANSITION_FIELDS + ("obs_mask", "act_mask")}
    arrays["rewards"] = arrays["rewards"] * 1e30
    meta = {key: data.meta[key] for key in osd_common.REQUIRED_META}
    osd_common.save_dataset(workdir / "huge.npz", arrays, meta)
    result = run_script(workdir, "--dataset", "huge.npz", *TINY_FLAGS)
    assert result.returncode != 0
    # losses are read when logged (--log-every 5): the first read is after step 4
    assert re.search(r"loss 'q' is (inf|nan) at phase-1 step 4\. Training stopped", result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_timeouts_bootstrap_and_terminals_do_not():
    """§4: the TD target is r + gamma (1 - terminal) V(s'); a timeout is not a terminal, and the
    generated HalfCheetah data mark the 1000-step limit as a timeout only."""
    torch.manual_seed(0)
    v_net = ValueNet(17, 32)
    state, next_state = torch.randn(2, 17), torch.randn(2, 17)
    reward, terminal = torch.tensor([1.0, 1.0]), torch.tensor([0.0, 1.0])  # row 0: timeout, row 1: terminal

    class ConstantQ(torch.nn.Module):
        def forward(self, s, a):
            return torch.zeros(len(s)), torch.zeros(len(s))

    with torch.no_grad():
        v_next = v_net(next_state)
    loss = q_loss(ConstantQ(), v_net, state, torch.zeros(2, 2, 3), reward, next_state, terminal, 0.99)
    expected = 2 * ((1 + 0.99 * v_next[0]) ** 2 + 1.0) / 2  # both twins predict 0
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
