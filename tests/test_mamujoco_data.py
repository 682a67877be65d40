"""HalfCheetah-2x3: the wrapper, the TD3 behavior-policy script, and datasets/mamujoco_data.py (fast)."""

import dataclasses
import json
import pathlib
import sys

import numpy as np
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))

import osd_common  # noqa: E402
import mamujoco_data  # noqa: E402  (datasets/mamujoco_data.py)
import train_mamujoco_td3  # noqa: E402

TASK = "mamujoco/HalfCheetah-2x3"
REFS = (-300.0, 5000.0)  # fixed references for the tiny test files (the real ones need the measurement)
HAVE_POLICIES = (mamujoco_data.POLICY_DIR / "training_log.json").exists()

torch.set_num_threads(1)


def test_wrapper_shapes_state_and_timeout():
    env = osd_common.make_env(TASK)
    assert (env.n_agents, env.obs_dims, env.act_dims, env.state_dim, env.agent_obsk) == (2, [11, 11], [3, 3], 17, 0)
    obs, state = env.reset(seed=0)
    assert [o.shape for o in obs] == [(11,), (11,)] and state.shape == (17,)
    # with agent_obsk=0 the two observations together hold every number of the global state
    assert set(np.round(state, 6)) <= set(np.round(np.concatenate(obs), 6))
    env.close()


def test_short_dataset_format_timeouts_and_determinism(tmp_path):
    paths = [mamujoco_data.generate_mamujoco(TASK, "random", out=tmp_path / f"r{k}.npz", episodes=2, seed=3,
                                             progress=False, episode_steps=20, refs=REFS) for k in range(2)]
    other = mamujoco_data.generate_mamujoco(TASK, "random", out=tmp_path / "s4.npz", episodes=2, seed=4,
                                            progress=False, episode_steps=20, refs=REFS)
    data = osd_common.load_dataset(paths[0])
    assert len(data) == 40 and data.observations.shape == (40, 2, 11) and data.actions.shape == (40, 2, 3)
    assert data.states.shape == (40, 17) and data.next_states.shape == (40, 17)
    assert data.terminals.sum() == 0 and np.flatnonzero(data.timeouts).tolist() == [19, 39]
    # consecutive steps chain: next state of step t is the state of step t + 1 inside an episode
    np.testing.assert_array_equal(data.next_states[:19], data.states[1:20])
    np.testing.assert_array_equal(data.next_observations[:19], data.observations[1:20])
    m = data.meta
    assert m["agent_obsk"] == 0 and m["tier"] == "random" and m["behavior_policies"] == ["uniform-random"]
    assert "mujoco" in m["packages"] and m["generator_version"] == mamujoco_data.GENERATOR_VERSION
    assert osd_common.load_dataset(paths[1]).meta["sha256"] == m["sha256"]  # same seed, same file
    assert osd_common.load_dataset(other).meta["sha256"] != m["sha256"]


def test_td3_script_smoke(tmp_path):
    """The training script runs end to end with tiny settings and writes a checkpoint, the log and the
    ordered replay buffer."""
    args = train_mamujoco_td3.Args(total_timesteps=300, learning_starts=200, batch_size=32, hidden=32,
                                   eval_every=300, eval_episodes=1, policy_dir=str(tmp_path / "p"),
                                   replay_out=str(tmp_path / "replay.npz"), progress=False)
    train_mamujoco_td3.main(args)
    log = json.loads((tmp_path / "p" / "training_log.json").read_text())
    assert [e["step"] for e in log["evaluations"]] == [300]
    actor = train_mamujoco_td3.load_actor(tmp_path / "p" / "actor_step0000300.pt")
    assert actor(torch.zeros(1, 22)).shape == (1, 6)
    with np.load(tmp_path / "replay.npz") as replay:
        assert replay["observations"].shape == (300, 22) and replay["actions"].shape == (300, 6)
        assert replay["timeouts"].sum() == 0 and np.abs(replay["actions"]).max() <= 1.0

    # a second run into the same places stops before touching them, and says how to go on
    log_before = (tmp_path / "p" / "training_log.json").read_bytes()
    replay_before = (tmp_path / "replay.npz").read_bytes()
    with pytest.raises(SystemExit, match="training_log.json.*replay.npz.*--overwrite"):
        train_mamujoco_td3.main(dataclasses.replace(args, total_timesteps=250, eval_every=250))
    assert (tmp_path / "p" / "training_log.json").read_bytes() == log_before
    assert (tmp_path / "replay.npz").read_bytes() == replay_before
    assert not (tmp_path / "p" / "actor_step0000250.pt").exists()


@pytest.mark.skipif(not HAVE_POLICIES, reason="no committed HalfCheetah-2x3 checkpoints yet")
def test_expert_checkpoint_beats_random_and_expert_data(tmp_path):
    expert = mamujoco_data.expert_checkpoint()
    actor = train_mamujoco_td3.load_actor(mamujoco_data.POLICY_DIR / expert["checkpoint"])
    assert (mamujoco_data.POLICY_DIR / expert["checkpoint"]).stat().st_size < 1_000_000
    expert_return = train_mamujoco_td3.evaluate_actor(actor, TASK, episodes=1)[0]
    assert expert_return > 2000.0  # a uniform random team scores about -300 per 1000-step episode
    path = mamujoco_data.generate_mamujoco(TASK, "medium-expert", out=tmp_path / "me.npz", episodes=2,
                                           progress=False, episode_steps=10, refs=REFS)
    meta = osd_common.load_dataset(path).meta
    assert meta["episode_labels"] == {"expert": 1, "medium": 1} and len(meta["behavior_policies"]) == 2


def test_medium_replay_is_the_ordered_buffer_prefix_up_to_the_medium_checkpoint(tmp_path):
    """With a stand-in training log and replay cache: the prefix ends at the medium checkpoint's step
    (the checkpoint closest to half the final return), agents' slices land in the right rows."""
    policy_dir = tmp_path / "policies"
    policy_dir.mkdir()
    evaluations = [{"step": s, "eval_return_mean": r, "checkpoint": f"actor_step{s:07d}.pt"}
                   for s, r in ((10, 5.0), (20, 45.0), (30, 70.0), (40, 100.0))]
    (policy_dir / "training_log.json").write_text(json.dumps({"evaluations": evaluations}))
    T, rng = 40, np.random.default_rng(0)
    replay = {"observations": rng.normal(size=(T, 22)), "next_observations": rng.normal(size=(T, 22)),
              "actions": rng.uniform(-1, 1, (T, 6)), "rewards": rng.normal(size=T),
              "states": rng.normal(size=(T, 17)), "next_states": rng.normal(size=(T, 17)),
              "terminals": np.zeros(T), "timeouts": (np.arange(T) % 10 == 9).astype(float)}
    replay = {k: v.astype(np.float32) for k, v in replay.items()}
    np.savez(tmp_path / "replay.npz", obs_dims=np.array([11, 11]), act_dims=np.array([3, 3]), seed=np.array(1),
             **replay)
    path = mamujoco_data.generate_mamujoco(TASK, "medium-replay", out=tmp_path / "mr.npz", progress=False,
                                           policy_dir=policy_dir, replay_file=tmp_path / "replay.npz", refs=REFS)
    data = osd_common.load_dataset(path)
    assert len(data) == 20 and data.meta["episodes"] == 2
    assert data.meta["replay_source"]["medium_checkpoint"] == "actor_step0000020.pt"
    np.testing.assert_array_equal(data.observations[:, 1], replay["observations"][:20, 11:])
    np.testing.assert_array_equal(data.actions[:, 0], replay["actions"][:20, :3])
    np.testing.assert_array_equal(data.next_states, replay["next_states"][:20])
