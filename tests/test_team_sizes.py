"""MPE team sizes chosen by task name (mpe/simple_spread-N4, mpe/simple_tag-N4): the env, the scripted
conventions, the generator, the reference returns, OMSD's script and the grid/report on an N-agent task."""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))
sys.path.insert(0, str(REPO / "benchmarks"))

import osd_common  # noqa: E402
import generate  # noqa: E402  (datasets/generate.py)
from behavior_policies import PERMUTATIONS_3, ScriptedTeam, convention_order  # noqa: E402

N4 = "mpe/simple_spread-N4"


@pytest.mark.parametrize("task, n_agents, obs_dim", [(N4, 4, 24), ("mpe/simple_spread-N6", 6, 36),
                                                     ("mpe/simple_tag-N4", 4, 18), ("mpe/simple_spread", 3, 18)])
def test_make_env_builds_the_named_team_size(task, n_agents, obs_dim):
    env = osd_common.make_env(task)
    assert (env.n_agents, env.obs_dims, env.act_dims, env.state_dim) == (
        n_agents, [obs_dim] * n_agents, [5] * n_agents, obs_dim * n_agents)
    assert len(env.world.landmarks) == (n_agents if "spread" in task else 2)  # tag: 2 obstacles at any size
    obs, state = env.reset(seed=0)
    obs, state, reward, terminated, truncated = env.step([np.zeros(5, np.float32)] * n_agents)
    assert [o.shape for o in obs] == [(obs_dim,)] * n_agents and np.isfinite(reward)
    if task.startswith("mpe/simple_tag"):  # the predators are the team; the one prey stays scripted inside
        assert env.agent_names == [f"adversary_{i}" for i in range(4)]
        assert sum(not a.adversary for a in env.world.agents) == 1
    env.close()


@pytest.mark.parametrize("task, message", [
    ("mpe/simple_spread-N1", "at least 2 agents"),
    ("mpe/simple_spread-Nfour", "not a whole number"),
    ("mpe/simple_spread-N", "not a whole number"),
    ("mpe/simple_world_comm-N4", "has no selectable team size"),
    ("mpe/simple_spred-N4", "has no selectable team size"),
    ("mpe/simple_spread-N3", "default size, named plain mpe/simple_spread"),
])
def test_bad_team_sizes_name_the_flag_and_the_fix(task, message):
    with pytest.raises(osd_common.TaskError, match=message) as error:
        osd_common.check_task(task)
    assert "--task mpe/simple_spread" in str(error.value)  # says what to pass instead
    args = types.SimpleNamespace(dataset=None, task=task, tier="mixed", build_dataset=False)
    with pytest.raises(SystemExit, match=f"osd_mpe.py: --task: .*{message}"):
        osd_common.load_training_data("osd_mpe.py", args, osd_common.MPE_TASKS)


def test_a_size_without_references_says_how_to_measure_them():
    with pytest.raises(osd_common.DatasetError, match="generate.py --measure-references --task mpe/simple_spread-N5"):
        osd_common.reference_returns("mpe/simple_spread-N5")


def test_conventions_generalize_the_three_agent_ones():
    assert [convention_order(k, 3) for k in range(6)] == PERMUTATIONS_3  # the shipped conventions, unchanged
    orders = [convention_order(k, 4) for k in range(24)]
    assert len(set(orders)) == 24 and sorted(orders) == orders and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    with pytest.raises(ValueError, match=r"\[0, 24\)"):
        ScriptedTeam(N4, 24)


def test_scripted_n4_spread_expert_covers_every_landmark_in_its_convention():
    """Each landmark has an agent on it (within mpe2's capture radius 0.1) at the end of most episodes, and
    agent i ends nearest landmark convention_order(c, 4)[i]; a uniform random team covers them almost never."""
    env = osd_common.make_env(N4)
    rng = np.random.default_rng(0)

    def final_distances(policy, seed):  # [agents, landmarks] at the episode's last step
        generate.rollout(env, policy, rng, seed)
        return np.array([[np.linalg.norm(a.state.p_pos - l.state.p_pos) for l in env.world.landmarks]
                         for a in env.world.agents])

    covered, in_convention = [], []
    for convention in (0, 5):
        for seed in range(6):
            distances = final_distances(generate.expert_policy(N4, convention), 100 + seed)
            covered.append((distances.min(0) < 0.1).all())
            in_convention.append(tuple(distances.argmin(1)) == convention_order(convention, 4))
    random_covered = [(final_distances(generate.UniformRandomTeam(), 100 + s).min(0) < 0.1).all() for s in range(6)]
    env.close()
    assert np.mean(covered) >= 0.6, covered
    assert np.mean(in_convention) >= 0.8, in_convention
    assert np.mean(random_covered) < 0.2


@pytest.fixture(scope="module")
def tiny_n4_mixed(tmp_path_factory):
    path = tmp_path_factory.mktemp("n4") / "mixed.npz"
    return generate.generate(N4, "mixed", out=path, episodes=10, progress=False)


def test_generator_builds_a_valid_n4_mixed(tiny_n4_mixed):
    data = osd_common.load_dataset(tiny_n4_mixed)  # validates every field and the sha256
    assert data.task == N4 and data.n_agents == 4 and data.observations.shape == (250, 4, 24)
    # no MATD3 run at this size: mixed's medium fifth is expert-noisy
    assert data.meta["episode_labels"] == {"expert-convention0": 2, "expert-convention1": 2, "expert-convention2": 2,
                                           "expert-noisy": 2, "random": 2}
    assert (data.meta["ref_random"], data.meta["ref_expert"]) == osd_common.reference_returns(N4)
    assert set(generate.spread_assignment_shares(data)) <= {"overlap"} | {"".join(map(str, convention_order(k, 4)))
                                                                         for k in range(24)}
    assert generate.tier_episodes(N4, "mixed") == 4000 and generate.tier_episodes(N4, "medium-replay") == 1000


def test_osd_mpe_trains_and_records_on_n4_data(tiny_n4_mixed, tmp_path):
    flags = ["--pretrain-steps", "10", "--critic-steps", "10", "--policy-steps", "10", "--eval-every", "10",
             "--eval-episodes", "1", "--final-eval-episodes", "2", "--log-every", "5", "--behavior-batch-size", "16",
             "--critic-batch-size", "16", "--actor-batch-size", "16", "--score-width", "32", "--hidden-dim", "32"]
    result = subprocess.run([sys.executable, str(REPO / "osd_mpe.py"), "--torch-threads", "1", "--dataset",
                             str(tiny_n4_mixed), "--record", "record.json", *flags], cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = osd_common.load_record(tmp_path / "record.json")
    assert record["task"] == N4 and record["tier"] == "mixed" and len(record["score_push_rms"]) == 4


def test_measuring_one_task_leaves_the_other_references_alone(tmp_path, monkeypatch):
    table = tmp_path / "reference_returns.json"
    table.write_text(osd_common.REFERENCE_RETURNS_FILE.read_text())
    before = json.loads(table.read_text())
    monkeypatch.setattr(osd_common, "REFERENCE_RETURNS_FILE", table)
    generate.measure_references(episodes=2, tasks=("mpe/simple_tag-N4",))
    after = json.loads(table.read_text())
    assert {k: v for k, v in after.items() if k != "mpe/simple_tag-N4"} == {
        k: v for k, v in before.items() if k != "mpe/simple_tag-N4"}
    assert after["mpe/simple_tag-N4"]["command"].endswith("--measure-references --task mpe/simple_tag-N4")


def test_grid_and_report_take_team_sizes():
    import grid
    import report

    args = grid.parse_args(["--tasks", N4, "--tiers", "mixed", "--seeds", "1", "--dry-run"])
    runs = grid.plan(args.algos, args.tasks, args.tiers, args.seeds, "smoke", args.records_dir)
    assert all(run["command"][run["command"].index("--task") + 1] == N4 for run in runs)
    with pytest.raises(SystemExit):
        grid.parse_args(["--tasks", "mpe/simple_spread-N1"])
    assert report.task_label(N4) == "spread (CN), 4 agents"
    assert report.task_label("mpe/simple_tag-N4") == "tag (PP), 4 predators"
    tasks = ["mpe/simple_tag", "mpe/simple_spread-N10", N4, "mpe/simple_spread"]
    assert sorted(tasks, key=report.task_order) == ["mpe/simple_spread", N4, "mpe/simple_spread-N10", "mpe/simple_tag"]
