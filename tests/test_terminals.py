"""Terminal states vs timeouts on MaMuJoCo splits whose body falls (Hopper), end to end and fast: the env wrapper,
the TD3 behavior-policy script, datasets/mamujoco_data.py's files, and the critic targets of osd_mamujoco.py,
baselines/matd3_bc.py and the TD3 script. A fall is a terminal (terminals = 1, no bootstrap); the time limit is a
timeout (timeouts = 1, the target bootstraps); a step is never both. HalfCheetah never falls."""

import ast
import json
import pathlib
import sys

import numpy as np
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))
sys.path.insert(0, str(REPO / "baselines"))

import osd_common  # noqa: E402
import mamujoco_data  # noqa: E402  (datasets/mamujoco_data.py)
import train_mamujoco_td3  # noqa: E402
import matd3_bc  # noqa: E402  (baselines/matd3_bc.py: its training runs under `if __name__ == "__main__"`)
from osd_mamujoco import ValueNet, q_loss  # noqa: E402

HOPPER = "mamujoco/Hopper-3x1"
REFS = (0.0, 1000.0)  # fixed references for the tiny test files

torch.set_num_threads(1)


def run_until_done(env, actions, seed: int, limit: int = 1000) -> list[tuple[bool, bool]]:
    """(terminated, truncated) of every step of one episode under fixed `actions` (at most `limit` steps)."""
    env.reset(seed=seed)
    flags = []
    while len(flags) < limit:
        *_, terminated, truncated = env.step(actions)
        flags.append((terminated, truncated))
        if terminated or truncated:
            break
    return flags


# ---------------------------------------------------------------------------------------------------
# (a) the env: a fall is `terminated`, the time limit `truncated`
# ---------------------------------------------------------------------------------------------------
def test_hopper_fall_is_terminated_not_truncated():
    env = osd_common.make_env(HOPPER)
    assert (env.n_agents, env.obs_dims, env.act_dims, env.state_dim) == (3, [7, 7, 7], [1, 1, 1], 11)
    flags = run_until_done(env, [-np.ones(1)] * 3, seed=0)  # every joint at full reverse torque: it falls
    env.close()
    assert len(flags) < 100  # about 6 steps with mujoco 4.0.0; far below the 1000-step limit
    assert flags[-1] == (True, False)  # the fall: terminated, and not truncated
    assert not any(terminated or truncated for terminated, truncated in flags[:-1])


def test_halfcheetah_time_limit_is_truncated_not_terminated():
    env = osd_common.make_env("mamujoco/HalfCheetah-2x3")
    flags = run_until_done(env, [-np.ones(3)] * 2, seed=0)  # the same extreme actions: HalfCheetah cannot fall
    env.close()
    assert len(flags) == env.max_episode_steps == 1000
    assert flags[-1] == (False, True)
    assert not any(terminated or truncated for terminated, truncated in flags[:-1])


# ---------------------------------------------------------------------------------------------------
# (b) the data: the generator's files and the TD3 script's replay buffer
# ---------------------------------------------------------------------------------------------------
def episodes_of(terminals: np.ndarray, timeouts: np.ndarray) -> list[tuple[int, int]]:
    """(first row, last row) of every episode of a flat transition array."""
    ends = np.flatnonzero((terminals > 0) | (timeouts > 0))
    return list(zip(np.concatenate([[0], ends[:-1] + 1]).tolist(), ends.tolist()))


def replay_flags(data, start: int, end: int, reset_seed: int) -> list[tuple[bool, bool]]:
    """The real env's (terminated, truncated) when the episode's recorded actions are replayed from its reset seed."""
    env = osd_common.make_env(data.meta["task"])
    _, state = env.reset(seed=reset_seed)
    np.testing.assert_array_equal(state, data.states[start])  # the right episode
    flags = []
    for t in range(start, end + 1):
        actions = [data.actions[t, i, :d] for i, d in enumerate(env.act_dims)]
        _, next_state, reward, terminated, truncated = env.step(actions)
        np.testing.assert_array_equal(next_state, data.next_states[t])
        assert reward == pytest.approx(float(data.rewards[t]), rel=1e-6, abs=1e-6)
        flags.append((terminated, truncated))
    env.close()
    return flags


def test_generated_hopper_data_marks_falls_as_terminals_and_cuts_as_timeouts(tmp_path):
    """Random-tier episodes cut at 30 steps (the test's stand-in for the 1000-step limit): the hoppers that fall
    sooner end in a terminal, the others in a timeout; replaying the recorded actions on the real env finds
    each terminal exactly where the env terminated, and nowhere else."""
    cut, seed = 30, 0
    path = mamujoco_data.generate_mamujoco(HOPPER, "random", out=tmp_path / "r.npz", episodes=6, seed=seed,
                                           progress=False, episode_steps=cut, refs=REFS,
                                           policy_dir=tmp_path / "no_policies_needed")
    data = osd_common.load_dataset(path)  # the loader validates the file (shapes, ends, sha256)
    assert not np.any((data.terminals > 0) & (data.timeouts > 0))  # never both
    episodes = episodes_of(data.terminals, data.timeouts)
    assert len(episodes) == 6 == data.meta["episodes"]
    lengths = [end - start + 1 for start, end in episodes]
    kinds = ["terminal" if data.terminals[end] else "timeout" for _, end in episodes]
    assert "terminal" in kinds and "timeout" in kinds  # this seed has both, so both checks below bite
    for k, (start, end) in enumerate(episodes):
        reset_seed = mamujoco_data.DATA_RESET_SEED_OFFSET + seed * 1_000_000 + k
        flags = replay_flags(data, start, end, reset_seed)
        terminated = [f[0] for f in flags]
        assert data.terminals[start:end + 1].tolist() == [float(x) for x in terminated]
        assert not any(f[1] for f in flags)  # the env's own limit (1000) is never reached here
        if kinds[k] == "timeout":
            assert lengths[k] == cut and not any(terminated)
        else:
            assert lengths[k] <= cut and terminated[-1]
    # every episode's return, split at terminals and timeouts alike
    expected = [float(data.rewards[start:end + 1].sum()) for start, end in episodes]
    np.testing.assert_allclose(osd_common.episode_returns(data.rewards, data.terminals, data.timeouts), expected)
    assert data.meta["return_mean"] == pytest.approx(np.mean(expected))
    # states chain inside an episode, and a new episode starts from a reset, not from the fall
    start, end = episodes[kinds.index("terminal")]
    np.testing.assert_array_equal(data.next_states[start:end], data.states[start + 1:end + 1])
    if end + 1 < len(data):
        assert not np.array_equal(data.next_states[end], data.states[end + 1])


def write_policies(folder: pathlib.Path, task: str, returns=(10.0, 40.0, 80.0), hidden: int = 16) -> None:
    """Untrained actor checkpoints and a training log in the TD3 script's formats (one per entry of `returns`)."""
    env = osd_common.make_env(task)
    obs_dim, act_dim = sum(env.obs_dims), sum(env.act_dims)
    env.close()
    folder.mkdir(parents=True)
    evaluations = []
    for k, value in enumerate(returns):
        torch.manual_seed(k)
        name = f"actor_step{100 * (k + 1):07d}.pt"
        torch.save({"actor": train_mamujoco_td3.Actor(obs_dim, act_dim, hidden).state_dict(), "obs_dim": obs_dim,
                    "act_dim": act_dim, "hidden": hidden, "task": task, "step": 100 * (k + 1)}, folder / name)
        evaluations.append({"step": 100 * (k + 1), "eval_return_mean": value, "checkpoint": name})
    (folder / "training_log.json").write_text(json.dumps({"evaluations": evaluations}))


def test_hopper_tiers_from_checkpoints_and_the_stops_without_them(tmp_path):
    """medium-expert from (untrained) TD3 checkpoints: whole episodes that end in falls. Without the task's
    policies, or with another task's, generation stops and says what to do."""
    policies = tmp_path / "hopper-3x1"
    write_policies(policies, HOPPER)
    path = mamujoco_data.generate_mamujoco(HOPPER, "medium-expert", out=tmp_path / "me.npz", episodes=2,
                                           progress=False, policy_dir=policies, refs=REFS)
    data = osd_common.load_dataset(path)
    episodes = episodes_of(data.terminals, data.timeouts)
    assert len(episodes) == 2 and data.meta["episode_labels"] == {"expert": 1, "medium": 1}
    assert data.terminals.sum() == 2 and data.timeouts.sum() == 0  # untrained actors fall, well before 1000 steps
    assert len(data) < 2 * 1000 and data.meta["episode_steps"] == 1000  # the limit; these episodes are shorter
    assert data.meta["behavior_policies"] == ["td3-joint:hopper-3x1/actor_step0000200.pt:noise0.1",
                                              "td3-joint:hopper-3x1/actor_step0000300.pt:noise0.1"]

    with pytest.raises(SystemExit, match=r"nothing_here.*missing.*Hopper-3x1.*python datasets/train_mamujoco_td3.py "
                                         r"--task mamujoco/Hopper-3x1"):
        mamujoco_data.generate_mamujoco(HOPPER, "expert", out=tmp_path / "x.npz", episodes=1, progress=False,
                                        policy_dir=tmp_path / "nothing_here", refs=REFS)
    (policies / "actor_step0000300.pt").unlink()  # the log names a checkpoint that is not there
    with pytest.raises(SystemExit, match=r"actor_step0000300.pt: missing.*train_mamujoco_td3.py --task"):
        mamujoco_data.generate_mamujoco(HOPPER, "expert", out=tmp_path / "x.npz", episodes=1, progress=False,
                                        policy_dir=policies, refs=REFS)
    # no references and no policies: the stop names the missing folder, not only the reference measurement
    with pytest.raises(SystemExit, match=r"nothing_here: missing.*train_mamujoco_td3.py --task mamujoco/Hopper-3x1"):
        mamujoco_data.references(HOPPER, tmp_path / "nothing_here")
    walker = tmp_path / "walker"
    write_policies(walker, "mamujoco/Walker2d-2x3")
    with pytest.raises(SystemExit, match="trained on mamujoco/Walker2d-2x3, not mamujoco/Hopper-3x1"):
        mamujoco_data.generate_mamujoco(HOPPER, "expert", out=tmp_path / "x.npz", episodes=1, progress=False,
                                        policy_dir=walker, refs=REFS)


def test_hopper_medium_replay_keeps_variable_length_episodes(tmp_path):
    """A stand-in replay buffer whose episodes end in falls of different lengths and one timeout: the prefix
    up to the medium checkpoint keeps whole episodes, with its terminals and timeouts as they were."""
    policies = tmp_path / "p"
    policies.mkdir()
    evaluations = [{"step": s, "eval_return_mean": r, "checkpoint": f"actor_step{s:07d}.pt"}
                   for s, r in ((20, 40.0), (40, 100.0))]
    (policies / "training_log.json").write_text(json.dumps({"evaluations": evaluations}))
    T, rng = 40, np.random.default_rng(0)
    terminals, timeouts = np.zeros(T, np.float32), np.zeros(T, np.float32)
    terminals[[4, 11, 25]] = 1  # falls after 5, 7 and 14 steps ...
    timeouts[17] = 1  # ... and one episode cut by the time limit (6 steps here)
    replay = {"observations": rng.normal(size=(T, 21)), "next_observations": rng.normal(size=(T, 21)),
              "actions": rng.uniform(-1, 1, (T, 3)), "rewards": rng.normal(size=T),
              "states": rng.normal(size=(T, 11)), "next_states": rng.normal(size=(T, 11))}
    replay = {k: v.astype(np.float32) for k, v in replay.items()}
    np.savez(tmp_path / "replay.npz", obs_dims=np.array([7, 7, 7]), act_dims=np.array([1, 1, 1]), seed=np.array(1),
             terminals=terminals, timeouts=timeouts, **replay)
    path = mamujoco_data.generate_mamujoco(HOPPER, "medium-replay", out=tmp_path / "mr.npz", progress=False,
                                           policy_dir=policies, replay_file=tmp_path / "replay.npz", refs=REFS)
    data = osd_common.load_dataset(path)
    assert len(data) == 18  # the medium checkpoint is at step 20; the last whole episode ends at row 17
    assert data.meta["episodes"] == 3 and data.meta["episode_labels"] == {"td3-replay-steps0-18": 3}
    np.testing.assert_array_equal(data.terminals, terminals[:18])
    np.testing.assert_array_equal(data.timeouts, timeouts[:18])
    np.testing.assert_allclose(osd_common.episode_returns(data.rewards, data.terminals, data.timeouts),
                               [replay["rewards"][s:e + 1].sum() for s, e in ((0, 4), (5, 11), (12, 17))], rtol=1e-6)


def test_td3_script_on_hopper_stores_falls_as_terminals(tmp_path, monkeypatch):
    """The training script's defaults follow --task, and its replay buffer records each fall as a terminal,
    never as a timeout, with the next row starting a new episode from a reset. (Its evaluation is stubbed out:
    an untrained deterministic hopper may stand for hundreds of steps, too slow for this test.)"""
    args = train_mamujoco_td3.resolve_paths(train_mamujoco_td3.Args(task=HOPPER))
    assert pathlib.Path(args.policy_dir) == REPO / "datasets" / "policies" / "hopper-3x1"
    assert pathlib.Path(args.replay_out) == osd_common.DATASET_CACHE / "mamujoco" / "Hopper-3x1" / "td3_replay.npz"
    cheetah = train_mamujoco_td3.resolve_paths(train_mamujoco_td3.Args())  # HalfCheetah's paths, as they were
    assert pathlib.Path(cheetah.policy_dir) == REPO / "datasets" / "policies" / "halfcheetah-2x3"
    assert (pathlib.Path(cheetah.replay_out)
            == osd_common.DATASET_CACHE / "mamujoco" / "HalfCheetah-2x3" / "td3_replay.npz")

    args = train_mamujoco_td3.Args(task=HOPPER, total_timesteps=120, learning_starts=100, batch_size=16, hidden=16,
                                   eval_every=120, eval_episodes=1, policy_dir=str(tmp_path / "p"),
                                   replay_out=str(tmp_path / "replay.npz"), progress=False)
    monkeypatch.setattr(train_mamujoco_td3, "evaluate_actor", lambda actor, task, episodes: [0.0] * episodes)
    train_mamujoco_td3.main(args)
    with np.load(tmp_path / "replay.npz") as replay:
        terminals, timeouts = replay["terminals"], replay["timeouts"]
        states, next_states = replay["states"], replay["next_states"]
        assert replay["observations"].shape == (120, 21) and replay["actions"].shape == (120, 3)
    assert terminals.sum() >= 2 and timeouts.sum() == 0  # uniform random hoppers fall within tens of steps
    for end in np.flatnonzero(terminals):
        if end + 1 < len(terminals):
            assert not np.array_equal(next_states[end], states[end + 1])  # a reset follows the fall
    inside = np.flatnonzero(terminals[:-1] == 0)
    np.testing.assert_array_equal(next_states[inside], states[inside + 1])
    log = json.loads((tmp_path / "p" / "training_log.json").read_text())
    assert log["args"]["task"] == HOPPER and log["evaluations"][0]["step"] == 120
    assert train_mamujoco_td3.load_actor(tmp_path / "p" / "actor_step0000120.pt").task == HOPPER


# ---------------------------------------------------------------------------------------------------
# (c) the critic targets: a terminal does not bootstrap, a timeout does
# ---------------------------------------------------------------------------------------------------
class FixedQ(torch.nn.Module):
    """Twin Q heads that both answer `value` (one number per row), whatever the input."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.value = value

    def forward(self, state, joint_actions):
        return self.value.clone(), self.value.clone()


def test_osd_mamujoco_q_target_stops_at_terminals_and_bootstraps_timeouts():
    torch.manual_seed(0)
    gamma, v_net = 0.99, ValueNet(11, 16)
    state, next_state = torch.randn(1, 11), torch.randn(1, 11)
    reward, actions = torch.tensor([1.0]), torch.zeros(1, 3, 1)
    with torch.no_grad():
        v_next = v_net(next_state)
    assert abs(v_next.item()) > 1e-3  # bootstrapping makes a visible difference

    def loss(q_value, terminal):
        return q_loss(FixedQ(q_value), v_net, state, actions, reward, next_state, torch.tensor([terminal]), gamma).item()

    # a fall: the target is the reward alone
    assert loss(reward, 1.0) == pytest.approx(0.0, abs=1e-10)
    assert loss(reward + gamma * v_next, 1.0) > 1e-6
    # a timeout (terminal 0): the target bootstraps from V(s')
    assert loss(reward + gamma * v_next, 0.0) == pytest.approx(0.0, abs=1e-10)
    assert loss(reward, 0.0) > 1e-6


def test_matd3_bc_and_td3_targets_stop_at_terminals_and_bootstrap_timeouts():
    torch.manual_seed(0)
    gamma, next_q = 0.99, torch.tensor([5.0, 5.0])
    reward, terminal = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0])  # row 0: a fall, row 1: a timeout
    expected = torch.tensor([1.0, 1.0 + gamma * 5.0])
    torch.testing.assert_close(train_mamujoco_td3.td_target(reward, terminal, next_q, gamma), expected)

    actor_targets = torch.nn.ModuleList([matd3_bc.Actor(7, 1, 8) for _ in range(3)])
    state, next_state = torch.randn(2, 11), torch.randn(2, 11)
    actions, next_obs, act_mask = torch.zeros(2, 3, 1), torch.randn(2, 3, 7), torch.ones(3, 1)

    def loss(q_value):
        return matd3_bc.critic_loss(FixedQ(q_value), FixedQ(next_q), actor_targets, state, actions, reward, next_state,
                                    next_obs, terminal, act_mask, gamma, 0.2, 0.5).item()

    assert loss(expected) == pytest.approx(0.0, abs=1e-10)
    assert loss(torch.tensor([1.0 + gamma * 5.0, 1.0 + gamma * 5.0])) > 1.0  # had the fall bootstrapped
    assert loss(torch.tensor([1.0, 1.0])) > 1.0  # had the timeout been a terminal


def test_training_scripts_never_read_timeouts():
    """The critics see `terminals` only: a script that read `timeouts` (e.g. 1 - terminals - timeouts) would stop
    bootstrapping at the time limit. Docstrings and comments may name them; code may not."""
    for script in ("osd_mamujoco.py", "osd_mpe.py", "baselines/matd3_bc.py"):
        tree = ast.parse((REPO / script).read_text())
        names = [node for node in ast.walk(tree)
                 if (isinstance(node, ast.Attribute) and node.attr in ("timeouts", "terminals"))
                 or (isinstance(node, ast.Name) and node.id in ("timeouts", "terminals"))
                 or (isinstance(node, ast.Constant) and node.value in ("timeouts", "terminals"))]
        read = {getattr(node, "attr", getattr(node, "id", getattr(node, "value", None))) for node in names}
        assert "terminals" in read and "timeouts" not in read, f"{script} reads {sorted(read)}"
