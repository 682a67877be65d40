"""osd_common and datasets/: environments, dataset generation, the loader's errors, reference returns."""

import collections
import json
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))
sys.path.insert(0, str(REPO / "benchmarks"))

import osd_common  # noqa: E402
import generate  # noqa: E402  (datasets/generate.py)
from behavior_policies import ScriptedTeam  # noqa: E402

EXPECTED_SHAPES = {  # n_agents, obs_dims, act_dims, state_dim
    "mpe/simple_spread": (3, [18, 18, 18], [5, 5, 5], 54),
    "mpe/simple_tag": (3, [16, 16, 16], [5, 5, 5], 48),
    "mpe/simple_world_comm": (4, [34, 34, 34, 34], [9, 5, 5, 5], 136),
    "mamujoco/HalfCheetah-2x3": (2, [11, 11], [3, 3], 17),
    "mamujoco/Hopper-3x1": (3, [7, 7, 7], [1, 1, 1], 11),
    "mamujoco/Ant-2x4": (2, [61, 61], [4, 4], 105),
}


@pytest.mark.parametrize("task", osd_common.TASKS)
def test_wrapper_shapes_bounds_and_seeded_reset(task):
    env = osd_common.make_env(task)
    n_agents, obs_dims, act_dims, state_dim = EXPECTED_SHAPES[task]
    assert (env.n_agents, env.obs_dims, env.act_dims, env.state_dim) == (n_agents, obs_dims, act_dims, state_dim)
    obs, state = env.reset(seed=3)
    assert [o.shape[0] for o in obs] == obs_dims and state.shape == (state_dim,)
    assert all(o.dtype == np.float32 for o in obs)
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, d) for d in act_dims]
    first = env.step(actions)
    # the same seed and actions replay the same transition
    obs2, state2 = env.reset(seed=3)
    np.testing.assert_array_equal(state, state2)
    second = env.step(actions)
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]
    # a different seed gives a different start
    _, state3 = env.reset(seed=4)
    assert not np.array_equal(state, state3)
    env.close()


@pytest.mark.parametrize("task", osd_common.MPE_TASKS)
def test_mpe_episode_is_25_steps_and_team_reward_is_mean_of_controlled(task):
    """The wrapper's reward equals the mean of the controlled agents' rewards in a raw mpe2 env fed the
    same actions (opponents included); episodes end by truncation after exactly 25 steps."""
    from mpe2 import simple_spread_v3, simple_tag_v3, simple_world_comm_v3

    module = {"mpe/simple_spread": simple_spread_v3, "mpe/simple_tag": simple_tag_v3,
              "mpe/simple_world_comm": simple_world_comm_v3}[task]
    raw = module.parallel_env(continuous_actions=True, max_cycles=25)
    env = osd_common.make_env(task)
    env.reset(seed=7)
    raw.reset(seed=7)
    rng = np.random.default_rng(1)
    steps, done = 0, False
    while not done:
        actions = [rng.uniform(-1, 1, d).astype(np.float32) for d in env.act_dims]
        raw_actions = {name: (a + 1) / 2 for name, a in zip(env.agent_names, actions)}
        if env._opponent_policy is not None:
            raw_actions.update(env._opponent_policy(raw.unwrapped.world))
        _, raw_rewards, _, _, _ = raw.step(raw_actions)
        obs, state, reward, terminated, truncated = env.step(actions)
        assert reward == pytest.approx(np.mean([raw_rewards[a] for a in env.agent_names]))
        np.testing.assert_allclose(state, np.concatenate(obs))
        steps += 1
        done = terminated or truncated
    assert steps == 25 and truncated and not terminated


def test_actions_outside_bounds_are_clipped_into_the_env_box():
    env = osd_common.make_env("mpe/simple_spread")
    env.reset(seed=0)
    a = osd_common._to_env_action(np.array([-5.0, -1.0, 0.0, 1.0, 7.0]), np.zeros(5), np.ones(5))
    np.testing.assert_allclose(a, [0.0, 0.0, 0.5, 1.0, 1.0])


def test_unknown_task_is_a_clear_error():
    with pytest.raises(osd_common.TaskError, match="unknown task 'mpe/simple_spred'.*mpe/simple_spread"):
        osd_common.make_env("mpe/simple_spred")


def _small_dataset(path, seed=0, episodes=6, tier="mixed", force=False):
    return generate.generate("mpe/simple_spread", tier, out=path, episodes=episodes, seed=seed,
                             force=force, progress=False)


def test_generation_is_deterministic(tmp_path):
    a = osd_common.load_dataset(_small_dataset(tmp_path / "a.npz", seed=5))
    b = osd_common.load_dataset(_small_dataset(tmp_path / "b.npz", seed=5))
    c = osd_common.load_dataset(_small_dataset(tmp_path / "c.npz", seed=6))
    assert a.meta["sha256"] == b.meta["sha256"]
    assert a.meta["sha256"] != c.meta["sha256"]
    assert len(a) == 6 * 25 and a.meta["episodes"] == 6
    assert a.timeouts.sum() == 6 and a.terminals.sum() == 0  # MPE episodes are pure time limits
    assert np.abs(a.actions).max() <= 1.0


def test_generation_never_overwrites_without_force(tmp_path):
    path = _small_dataset(tmp_path / "d.npz", episodes=2)
    before = path.read_bytes()
    with pytest.raises(SystemExit, match="exists already: pass --force"):
        _small_dataset(path, seed=1, episodes=2)
    assert path.read_bytes() == before
    _small_dataset(path, seed=1, episodes=2, force=True)
    assert path.read_bytes() != before


def _rewrite(path, out, mutate):
    with np.load(path) as archive:
        contents = {k: archive[k] for k in archive.files}
    mutate(contents)
    np.savez(out, **contents)
    return out


@pytest.fixture(scope="module")
def good_dataset(tmp_path_factory):
    return _small_dataset(tmp_path_factory.mktemp("data") / "good.npz", episodes=4)


def test_loader_rejects_truncated_file(good_dataset, tmp_path):
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(good_dataset.read_bytes()[: good_dataset.stat().st_size // 2])
    with pytest.raises(osd_common.DatasetError, match=r"truncated\.npz: cannot be read.*regenerate"):
        osd_common.load_dataset(bad)


def test_loader_rejects_wrong_shape(good_dataset, tmp_path):
    def drop_agent(c):
        c["actions"] = c["actions"][:, :2]
    bad = _rewrite(good_dataset, tmp_path / "shape.npz", drop_agent)
    with pytest.raises(osd_common.DatasetError, match=r"shape\.npz: field 'actions' has shape \(100, 2, 5\), expected \(100, 3, 5\)"):
        osd_common.load_dataset(bad)


def test_loader_rejects_nan(good_dataset, tmp_path):
    def poison(c):
        c["rewards"] = c["rewards"].copy()
        c["rewards"][17] = np.nan
    bad = _rewrite(good_dataset, tmp_path / "nan.npz", poison)
    with pytest.raises(osd_common.DatasetError, match=r"field 'rewards' holds NaN or inf values \(first at row 17\)"):
        osd_common.load_dataset(bad)


def test_loader_rejects_unknown_task(good_dataset, tmp_path):
    def rename(c):
        meta = json.loads(str(c["metadata"]))
        meta["task"] = "mpe/simple_chess"
        c["metadata"] = np.array(json.dumps(meta))
    bad = _rewrite(good_dataset, tmp_path / "task.npz", rename)
    with pytest.raises(osd_common.DatasetError, match=r"field 'metadata.task' unknown task 'mpe/simple_chess'"):
        osd_common.load_dataset(bad)


def test_loader_rejects_modified_arrays_and_missing_files(good_dataset, tmp_path):
    def tamper(c):
        c["rewards"] = c["rewards"] + 1.0
    bad = _rewrite(good_dataset, tmp_path / "tampered.npz", tamper)
    with pytest.raises(osd_common.DatasetError, match="sha256.*does not match"):
        osd_common.load_dataset(bad)
    with pytest.raises(osd_common.DatasetError, match=r"missing\.npz: no such dataset file.*generate\.py"):
        osd_common.load_dataset(tmp_path / "missing.npz")
    with pytest.raises(osd_common.DatasetError, match="'best' is no tier"):
        osd_common.load_dataset("mpe/simple_spread/best")


@pytest.mark.parametrize("task", osd_common.MPE_TASKS)
def test_shipped_expert_reproduces_reference_return(task):
    """The expert behavior policy, on 100 episodes unseen by the reference measurement, lands within
    three standard errors (of the difference of the two means) of the card's R_expert."""
    table = json.loads(osd_common.REFERENCE_RETURNS_FILE.read_text())[task]
    env = osd_common.make_env(task)
    rng = np.random.default_rng(99)
    policy = generate.expert_policy(task)
    returns = [np.sum(generate.rollout(env, policy, rng, 50_000 + k)["rewards"]) for k in range(100)]
    stderr = np.hypot(np.std(returns) / np.sqrt(len(returns)), table["R_expert_stderr"])
    assert abs(np.mean(returns) - table["R_expert"]) < 3 * stderr
    # and the expert is far better than random: the normalized scale is meaningful
    assert table["R_expert"] - table["R_random"] > 10 * stderr


def test_evaluate_is_decentralized_and_scores_the_expert_near_100():
    """evaluate() hands each agent its own observation; a policy that reproduces the expert's clean
    actions from the world scores about 100 normalized, a do-nothing team far less."""
    task = "mpe/simple_spread"
    seen_sizes = []

    def idle(observations):
        seen_sizes.append([o.shape[0] for o in observations])
        return [-np.ones(5, dtype=np.float32)] * 3

    idle_result = osd_common.evaluate(idle, task, episodes=3, seed=0)
    assert seen_sizes[0] == [18, 18, 18] and len(seen_sizes) == 3 * 25
    assert set(idle_result) >= {"return_mean", "return_std", "normalized_score", "returns"}
    # spread obs: vel(2), pos(2), landmark rel (3x2): agent i steers to landmark i with the expert's PD law
    def expert_from_obs(observations):
        actions = []
        for i, o in enumerate(observations):
            direction = 4.0 * o[4 + 2 * i: 6 + 2 * i] - 1.0 * o[0:2]
            dx, dy = np.clip(direction, -1, 1)
            actions.append(2 * np.array([0, max(-dx, 0), max(dx, 0), max(-dy, 0), max(dy, 0)], dtype=np.float32) - 1)
        return actions

    expert_result = osd_common.evaluate(expert_from_obs, task, episodes=20, seed=0)
    assert expert_result["normalized_score"] > 85
    assert idle_result["normalized_score"] < expert_result["normalized_score"] - 30


def test_scripted_conventions_are_distinct_modes():
    """Different conventions send agents to different landmarks: the data is multimodal by design."""
    env = osd_common.make_env("mpe/simple_spread")
    finals = []
    for convention in (0, 1):
        env.reset(seed=11)
        policy = ScriptedTeam("mpe/simple_spread", convention)
        rng = np.random.default_rng(0)
        done = False
        while not done:
            obs, state, reward, terminated, truncated = env.step(policy(env, rng))
            done = terminated or truncated
        finals.append(np.stack([obs[i][4:10].reshape(3, 2) for i in range(3)]))
    nearest = [np.linalg.norm(f, axis=-1).argmin(-1) for f in finals]
    assert sorted(nearest[0]) == [0, 1, 2] and sorted(nearest[1]) == [0, 1, 2]
    assert not np.array_equal(nearest[0], nearest[1])


def test_balanced_tiers_hold_every_convention_in_equal_shares(tmp_path):
    """`balanced`: the three expert conventions in equal numbers, interleaved, nothing else;
    `mixed-balanced`: a fifth each of experts 0, 1, 2, expert-noisy (cycling the conventions) and random."""
    plan = [label for label, _ in generate.episode_plan("mpe/simple_spread", "balanced", 9)]
    assert plan == ["expert-convention0", "expert-convention1", "expert-convention2"] * 3
    counts = collections.Counter(label for label, _ in generate.episode_plan("mpe/simple_spread", "mixed-balanced", 15))
    assert counts == {"expert-convention0": 3, "expert-convention1": 3, "expert-convention2": 3, "random": 3,
                      "expert-noisy-convention0": 1, "expert-noisy-convention1": 1, "expert-noisy-convention2": 1}
    with pytest.raises(ValueError, match="equal conventions"):
        generate.episode_plan("mpe/simple_spread", "balanced", 10)
    data = osd_common.load_dataset(_small_dataset(tmp_path / "balanced.npz", episodes=30, tier="balanced"))
    shares = generate.spread_assignment_shares(data)
    for assignment in ("012", "021", "102"):  # PERMUTATIONS_3[0], [1], [2]
        assert 0.2 <= shares.get(assignment, 0.0) <= 0.47, shares


def test_spread_conventions_reads_the_data_s_first_step_choice(tmp_path):
    """benchmarks/spread_conventions.py classifies the expert data's first-step joint actions as its
    conventions (no clash), and a team whose agents 1 and 2 copy agent 0 as clashes."""
    from spread_conventions import classify, headings

    data = osd_common.load_dataset(_small_dataset(tmp_path / "b.npz", episodes=60, tier="balanced"))
    starts = np.arange(0, len(data), 25)
    heading, ambiguous, weak = headings(data.observations[starts], data.actions[starts])
    clear = ~ambiguous.any(-1)
    shares = classify(heading[clear], weak[clear])
    assert shares["clash"] == 0.0 and shares["other"] == 0.0 and shares["weak agents"] == 0.0, shares
    assert min(shares[f"convention{c}"] for c in range(3)) > 0.1, shares
    copied = data.actions[starts].copy()
    copied[:, 1:] = copied[:, :1]  # everybody does what agent 0 does
    assert classify(*headings(data.observations[starts], copied)[::2])["clash"] > 0.5
