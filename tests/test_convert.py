"""datasets/convert.py: og-marl Vaults and OMAR's files into osd datasets, osd datasets out as Vaults, and
the env following the data's agent_obsk end to end.

The files are small and written in exactly the field's layouts: Vaults by convert.write_vault (the
layout flashbax writes) and, where `flashbax` is importable, by flashbax itself as a cross-check
(skipped otherwise: flashbax needs JAX, which requirements.txt does not install); OMAR folders as
per-agent .npy files. HalfCheetah-2x3 transitions are real ones, recorded from
gymnasium_robotics.mamujoco_v1 with agent_obsk=1 as og-marl's recorder stores them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))

import convert  # noqa: E402  datasets/convert.py
import osd_common  # noqa: E402

TASK = "mamujoco/HalfCheetah-2x3"
# og-marl-style episodes: (how the episode ends, its length); the last one is cut by the end of the data
PLAN = (("truncated", 20), ("terminal", 15), ("unfinished", 12))
TINY_FLAGS = ("--pretrain-steps", "20", "--critic-steps", "20", "--policy-steps", "20", "--eval-every", "20",
              "--eval-episodes", "1", "--final-eval-episodes", "1", "--log-every", "10", "--behavior-batch-size", "32",
              "--critic-batch-size", "32", "--actor-batch-size", "32", "--score-width", "32", "--hidden-dim", "32",
              "--torch-threads", "1")


def convert_cli(*argv: str) -> None:
    convert.main([str(a) for a in argv])


def convert_error(*argv: str) -> str:
    """The message convert.py stops with."""
    with pytest.raises(SystemExit) as stop:
        convert_cli(*argv)
    return str(stop.value.code)


def record_ogmarl_steps(plan=PLAN, agent_obsk: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """HalfCheetah-2x3 steps as og-marl's recorder stores them, [T, ...]: the observation and state
    before each step, the actions, per-agent rewards, terminals and truncations; episodes back to back.
    HalfCheetah never terminates: the plan's terminal and truncation flags are set on its episodes' last
    steps, to exercise both rules."""
    from gymnasium_robotics import mamujoco_v1

    env = mamujoco_v1.parallel_env("HalfCheetah", "2x3", agent_obsk=agent_obsk)
    agents = list(env.possible_agents)
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "truncations", "state")}
    for k, (end, length) in enumerate(plan):
        obs, _ = env.reset(seed=seed + k)
        for t in range(length):
            state = env.state()
            actions = {a: rng.uniform(-1, 1, size=env.action_space(a).shape).astype(np.float32) for a in agents}
            next_obs, rewards, _, _, _ = env.step(actions)
            last = t == length - 1
            rows["observations"].append(np.stack([obs[a] for a in agents]))
            rows["actions"].append(np.stack([actions[a] for a in agents]))
            rows["rewards"].append([rewards[a] for a in agents])
            rows["terminals"].append([float(last and end == "terminal")] * len(agents))
            rows["truncations"].append([float(last and end == "truncated")] * len(agents))
            rows["state"].append(state)
            obs = next_obs
    env.close()
    return {k: np.asarray(v, dtype=np.float32) for k, v in rows.items()}


def vault_leaves(steps: dict, rows: int = 1) -> dict[str, np.ndarray]:
    """[T, ...] steps -> og-marl Vault leaves [B, T, ...] (the same stream in every batch row)."""
    names = {"state": "infos.state"}
    return {names.get(k, k): np.repeat(v[None], rows, axis=0) for k, v in steps.items()}


def write_flashbax_vault(vault: pathlib.Path, uid: str, steps: dict) -> None:
    """Write `steps` with flashbax itself, as og-marl does: a trajectory buffer state, then Vault.write."""
    import flashbax as fbx
    import jax
    import jax.numpy as jnp
    from flashbax.vault import Vault

    experience = {k: v for k, v in steps.items() if k != "state"} | {"infos": {"state": steps["state"]}}
    T = len(steps["rewards"])
    buffer = fbx.make_trajectory_buffer(add_batch_size=1, sample_batch_size=1, sample_sequence_length=1, period=1,
                                        min_length_time_axis=1, max_size=T + 1)
    state = buffer.init(jax.tree.map(lambda x: jnp.asarray(x[0]), experience))
    state = buffer.add(state, jax.tree.map(lambda x: jnp.asarray(x[None]), experience))
    written = Vault(vault_name=vault.name, experience_structure=state.experience, rel_dir=str(vault.parent.resolve()),
                    vault_uid=uid).write(state)
    assert written == T


@pytest.fixture(scope="module")
def steps():
    return record_ogmarl_steps()


@pytest.fixture(scope="module")
def ogmarl_dataset(steps, tmp_path_factory):
    """og-marl's layout of `steps`, written by convert.write_vault, converted with the issue's command."""
    root = tmp_path_factory.mktemp("ogmarl")
    convert.write_vault(root / "2halfcheetah.vlt", "Good", vault_leaves(steps), {})
    convert_cli("og-marl", "--vault", root / "2halfcheetah.vlt", "--uid", "Good", "--task", TASK, "--out", root / "good.npz")
    return root


def test_ogmarl_vault_of_halfcheetah_obsk1_becomes_transitions(steps, ogmarl_dataset):
    data = osd_common.load_dataset(str(ogmarl_dataset / "good.npz"))
    m = data.meta
    assert (m["task"], m["tier"], m["agent_obsk"], m["obs_dims"], m["act_dims"], m["state_dim"]) == (TASK, "Good", 1, [12, 12], [3, 3], 17)
    assert m["references"] == "ours" and (m["ref_random"], m["ref_expert"]) == osd_common.reference_returns(TASK)
    # the truncated episode and the unfinished last one each lose their last step (no next observation there)
    kept = np.array([t for t in range(47) if t not in (19, 46)])
    assert m["dropped_steps"] == 2 and len(data) == 45 and m["episodes"] == 3
    for key, raw in (("observations", steps["observations"]), ("actions", steps["actions"]), ("states", steps["state"])):
        np.testing.assert_array_equal(getattr(data, key), raw[kept], err_msg=key)
    np.testing.assert_array_equal(data.rewards, steps["rewards"][kept, 0])
    assert np.flatnonzero(data.terminals).tolist() == [33] and np.flatnonzero(data.timeouts).tolist() == [18, 44]
    # next = the following recorded step, inside episodes (also after the last kept step of a truncated one)
    inside = np.setdiff1d(np.arange(45), [33, 44])
    np.testing.assert_array_equal(data.next_observations[inside], steps["observations"][kept[inside] + 1])
    np.testing.assert_array_equal(data.next_states[inside], steps["state"][kept[inside] + 1])
    np.testing.assert_array_equal(data.next_observations[33], data.observations[33])  # terminal: placeholder


def test_vault_batch_rows_are_streams_of_their_own(steps, tmp_path):
    convert.write_vault(tmp_path / "2halfcheetah.vlt", "Good", vault_leaves(steps, rows=2), {})
    arrays, meta = convert.vault_to_arrays(tmp_path / "2halfcheetah.vlt", "Good", TASK)
    assert len(arrays["rewards"]) == 90 and meta["dropped_steps"] == 4
    np.testing.assert_array_equal(arrays["observations"][:45], arrays["observations"][45:])
    assert np.flatnonzero(arrays["timeouts"]).tolist() == [18, 44, 63, 89]


def test_ogmarl_vault_of_mpe2_maps_the_env_action_box(tmp_path):
    """A Vault of mpe2 spread holds the env's actions, in its [0, 1] box: they come back in [-1, 1]."""
    import generate  # datasets/generate.py

    ours = osd_common.load_dataset(str(generate.generate("mpe/simple_spread", "expert", out=tmp_path / "s.npz",
                                                         episodes=2, progress=False)))
    team = np.repeat(ours.rewards[:, None], 3, axis=1)
    steps = {"observations": ours.observations, "actions": (ours.actions + 1) / 2, "rewards": team,
             "terminals": np.zeros_like(team), "truncations": np.repeat(ours.timeouts[:, None], 3, axis=1),
             "state": ours.states}
    convert.write_vault(tmp_path / "spread.vlt", "expert", vault_leaves(steps), {})
    arrays, meta = convert.vault_to_arrays(tmp_path / "spread.vlt", "expert", "mpe/simple_spread")
    kept = np.array([t for t in range(50) if t not in (24, 49)])
    np.testing.assert_allclose(arrays["actions"], ours.actions[kept], atol=1e-6)
    np.testing.assert_array_equal(arrays["observations"], ours.observations[kept])
    assert "agent_obsk" not in meta and meta["references"] == "ours" and meta["dropped_steps"] == 2
    assert np.flatnonzero(arrays["timeouts"]).tolist() == [23, 47]


def synthetic_dataset(path: pathlib.Path) -> pathlib.Path:
    """An osd dataset with agents of different sizes (padding, masks) and both episode ends."""
    rng = np.random.default_rng(1)
    T, obs_dims, act_dims, state_dim = 40, [5, 7, 4], [1, 2, 1], 9
    masks = osd_common.agent_masks(obs_dims, act_dims)
    obs = rng.normal(size=(T + 1, 3, 7)).astype(np.float32) * masks["obs_mask"]
    states = rng.normal(size=(T + 1, state_dim)).astype(np.float32)
    terminals, timeouts = np.zeros(T, np.float32), np.zeros(T, np.float32)
    timeouts[19], terminals[39] = 1, 1
    arrays = {"observations": obs[:-1], "next_observations": obs[1:], "states": states[:-1], "next_states": states[1:],
              "actions": rng.uniform(-1, 1, size=(T, 3, 2)).astype(np.float32) * masks["act_mask"],
              "rewards": rng.normal(size=T).astype(np.float32), "terminals": terminals, "timeouts": timeouts, **masks}
    meta = {"task": "mamujoco/Hopper-3x1", "tier": "medium", "n_agents": 3, "obs_dims": obs_dims, "act_dims": act_dims,
            "state_dim": state_dim, "ref_random": -10.0, "ref_expert": 90.0, "agent_obsk": 1, "seed": 7}
    return osd_common.save_dataset(path, arrays, meta)


def test_round_trip_ours_vault_ours_is_bit_identical(tmp_path):
    ours = synthetic_dataset(tmp_path / "ours.npz")
    convert_cli("to-vault", "--dataset", ours, "--out", tmp_path / "vaults" / "hopper.vlt", "--uid", "medium")
    base = tmp_path / "vaults" / "hopper.vlt" / "medium"
    metadata = json.loads((base / "metadata.json").read_text())
    assert metadata["version"] == 1.2 and metadata["structure_shape"]["infos"]["state"] == "(1, 40, 9)"
    assert metadata["structure_shape"]["rewards"] == "(1, 40, 3)" and metadata["structure_dtype"]["observations"] == "float32"
    import tensorstore as ts

    store = ts.open(convert._store_spec(base, "observations."), open=True).result()
    assert store.shape == (1, convert.TIME_AXIS_MAX_LENGTH, 3, 7)  # allocated far longer, as flashbax does
    convert_cli("og-marl", "--vault", tmp_path / "vaults" / "hopper.vlt", "--uid", "medium", "--out", tmp_path / "back.npz")
    a, b = osd_common.load_dataset(str(ours)), osd_common.load_dataset(str(tmp_path / "back.npz"))
    assert a.meta == b.meta  # the same metadata, sha256 of the arrays included
    for key in osd_common.TRANSITION_FIELDS + ("obs_mask", "act_mask"):
        assert getattr(a, key).tobytes() == getattr(b, key).tobytes(), key


def omar_folder(root: pathlib.Path, seed: int, episodes, obs_dims, act_dims, state_dim=None, dones_at=()) -> None:
    """OMAR's layout: root/<tier>/seed_<k>_data/{obs,acs,rews,next_obs,dones}_<i>.npy (+ states with
    `state_dim`); episodes of the given lengths, observations a random walk inside each."""
    rng = np.random.default_rng(seed)
    folder = root / f"seed_{seed}_data"
    folder.mkdir(parents=True)
    T = sum(episodes)
    per_agent = {"obs": [], "next_obs": []}
    for dim in obs_dims:
        obs, nxt = [], []
        for length in episodes:
            walk = np.cumsum(rng.normal(size=(length + 1, dim)), axis=0).astype(np.float32)
            obs.append(walk[:-1])
            nxt.append(walk[1:])
        per_agent["obs"].append(np.concatenate(obs))
        per_agent["next_obs"].append(np.concatenate(nxt))
    rewards = rng.normal(size=(T, 1)).astype(np.float32)
    dones = np.zeros(T, dtype=np.float32)
    dones[list(dones_at)] = 1
    states = rng.normal(size=(T + 1, state_dim or 1)).astype(np.float32)
    for i, (o, a) in enumerate(zip(obs_dims, act_dims)):
        np.save(folder / f"obs_{i}.npy", per_agent["obs"][i])
        np.save(folder / f"next_obs_{i}.npy", per_agent["next_obs"][i])
        np.save(folder / f"acs_{i}.npy", rng.uniform(-1, 1, size=(T, a)).astype(np.float32))
        np.save(folder / f"rews_{i}.npy", rewards)
        np.save(folder / f"dones_{i}.npy", dones)
        if state_dim:
            np.save(folder / f"states_{i}.npy", states[:-1])
            np.save(folder / f"next_states_{i}.npy", states[1:])


def test_omar_mpe_folder_trains_as_omar_mpe_with_unknown_references(tmp_path):
    omar_folder(tmp_path / "simple_spread" / "medium", 0, [25, 25, 25], [18, 18, 18], [5, 5, 5])
    convert_cli("omar", "--dir", tmp_path / "simple_spread", "--task", "omar-mpe/simple_spread", "--tier", "medium",
                "--out", tmp_path / "spread.npz")
    data = osd_common.load_dataset(str(tmp_path / "spread.npz"))
    m = data.meta
    assert (m["task"], m["n_agents"], m["state_dim"], m["episodes"], len(data)) == ("omar-mpe/simple_spread", 3, 54, 3, 75)
    assert m["references"] == "unknown" and m["normalized_score"] == pytest.approx(m["return_mean"])
    # MPE never terminates: every episode ends in a timeout, found where next_obs[t] is not obs[t + 1]
    assert np.flatnonzero(data.timeouts).tolist() == [24, 49, 74] and not data.terminals.any()
    folder = tmp_path / "simple_spread" / "medium" / "seed_0_data"
    np.testing.assert_array_equal(data.next_observations[:, 1], np.load(folder / "next_obs_1.npy"))
    np.testing.assert_array_equal(data.states, np.concatenate([np.load(folder / f"obs_{i}.npy") for i in range(3)], axis=1))
    assert not osd_common.can_evaluate(m["task"])
    with pytest.raises(osd_common.TaskError, match="not built here"):
        osd_common.make_env(m["task"])
    # several seeds: one must be chosen, or all pooled
    omar_folder(tmp_path / "simple_spread" / "medium", 1, [25, 25], [18, 18, 18], [5, 5, 5])
    message = convert_error("omar", "--dir", tmp_path / "simple_spread", "--task", "omar-mpe/simple_spread",
                            "--tier", "medium", "--out", tmp_path / "two.npz")
    assert "holds seeds 0, 1; pass --seed K" in message
    convert_cli("omar", "--dir", tmp_path / "simple_spread", "--task", "omar-mpe/simple_spread", "--tier", "medium",
                "--seed", "all", "--out", tmp_path / "two.npz")
    assert osd_common.load_dataset(str(tmp_path / "two.npz")).meta["transitions"] == 125


def test_omar_mamujoco_folder_tells_terminals_from_time_limits(tmp_path):
    # a done on an episode's 10th step (--episode-steps 10) is the time limit; one on the 6th a terminal
    omar_folder(tmp_path / "halfcheetah" / "expert", 3, [10, 6, 10], [11, 11], [3, 3], state_dim=17,
                dones_at=(9, 15, 25))
    convert_cli("omar", "--dir", tmp_path / "halfcheetah", "--task", TASK, "--tier", "expert", "--agent-obsk", "0",
                "--episode-steps", "10", "--out", tmp_path / "hc.npz")
    data = osd_common.load_dataset(str(tmp_path / "hc.npz"))
    assert np.flatnonzero(data.terminals).tolist() == [15] and np.flatnonzero(data.timeouts).tolist() == [9, 25]
    np.testing.assert_array_equal(data.next_states, np.load(tmp_path / "halfcheetah/expert/seed_3_data/next_states_1.npy"))
    assert data.meta["agent_obsk"] == 0 and data.meta["references"] == "ours"


@pytest.mark.skipif(importlib.util.find_spec("flashbax") is None,
                    reason="flashbax (and JAX) not installed: the cross-check with flashbax itself is optional")
def test_flashbax_cross_check(steps, ogmarl_dataset, tmp_path):
    """A Vault written by flashbax converts to the same dataset as ours; flashbax reads what to-vault writes."""
    write_flashbax_vault(tmp_path / "2halfcheetah.vlt", "Good", steps)
    convert_cli("og-marl", "--vault", tmp_path / "2halfcheetah.vlt", "--uid", "Good", "--task", TASK,
                "--out", tmp_path / "fbx.npz")
    ours = osd_common.load_dataset(str(ogmarl_dataset / "good.npz"))
    theirs = osd_common.load_dataset(str(tmp_path / "fbx.npz"))
    assert theirs.meta["sha256"] == ours.meta["sha256"]

    from flashbax.vault import Vault

    convert_cli("to-vault", "--dataset", ogmarl_dataset / "good.npz", "--out", tmp_path / "ours.vlt", "--uid", "Good")
    read = Vault(vault_name="ours.vlt", rel_dir=str(tmp_path), vault_uid="Good").read().experience
    np.testing.assert_array_equal(np.asarray(read["observations"][0]), ours.observations)
    np.testing.assert_array_equal(np.asarray(read["infos"]["state"][0]), ours.states)
    np.testing.assert_array_equal(np.asarray(read["truncations"][0, :, 1]), ours.timeouts)


def _delete_store(base: pathlib.Path, name: str) -> None:
    """Remove one store's keys from a Vault's OCDBT database: a Vault copied incompletely."""
    import tensorstore as ts

    kv = ts.KvStore.open({"driver": "ocdbt", "base": f"file://{base.resolve()}"}).result()
    kv.delete_range(ts.KvStore.KeyRange(f"{name}/".encode(), f"{name}0".encode())).result()


def _patch_metadata(base: pathlib.Path, change) -> None:
    metadata = json.loads((base / "metadata.json").read_text())
    change(metadata)
    (base / "metadata.json").write_text(json.dumps(metadata))


VAULT_CASES = {
    "store missing": (lambda base, _: _delete_store(base, "infos.state."), (),
                      "store 'infos.state.' is missing from the Vault's database"),
    "vault_index absent": (lambda base, _: _delete_store(base, "vault_index"), (),
                           "store 'vault_index' is absent, so the number of valid time steps is unknown"),
    "metadata lacks a leaf": (lambda base, _: _patch_metadata(base, lambda m: m["structure_shape"].pop("truncations")), (),
                              "field 'structure_shape' has no leaf 'truncations'"),
    "store disagrees with metadata.json": (
        lambda base, _: _patch_metadata(base, lambda m: m["structure_shape"].update(observations="(1, 47, 2, 13)")), (),
        "store 'observations.' has shape (B, T, ...) = (1, 10000000000000, 2, 12) but metadata.json declares (1, 47, 2, 13)"),
    "rewards for another team": (None, (), "store 'rewards.' has shape (1, 47, 3), expected it to start with (1, 47, 2)"),
    "wrong agent_obsk": (None, ("--agent-obsk", "0"), "store 'observations.' has width 12 but mamujoco/HalfCheetah-2x3 "
                         "with agent_obsk=0 has per-agent sizes [11, 11]; the shapes disagree"),
    "no such uid": (None, ("--uid", "Poor"), "has no uid 'Poor'; its uids: Good"),
}


@pytest.mark.parametrize("case", sorted(VAULT_CASES))
def test_malformed_vault_gives_its_specific_error(case, steps, tmp_path):
    damage, flags, expected = VAULT_CASES[case]
    leaves = vault_leaves(steps)
    if case == "rewards for another team":
        leaves["rewards"] = np.repeat(leaves["rewards"][..., :1], 3, axis=2)
    base = convert.write_vault(tmp_path / "2halfcheetah.vlt", "Good", leaves, {})
    if damage is not None:
        damage(base, leaves)
    args = ["og-marl", "--vault", tmp_path / "2halfcheetah.vlt", "--uid", "Good", "--task", TASK, "--out", tmp_path / "x.npz"]
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    message = convert_error(*args)
    assert expected in message, message
    assert not (tmp_path / "x.npz").exists()


OMAR_CASES = {
    "file missing": (lambda folder: (folder / "dones_1.npy").unlink(), (), "dones_1.npy: is missing"),
    "shape disagrees": (lambda folder: np.save(folder / "acs_0.npy", np.zeros((7, 5), np.float32)), (),
                        "acs_0.npy: has shape (7, 5), expected (50, size) as obs_0.npy has 50 steps; the shapes disagree"),
    "not a .npy": (lambda folder: (folder / "rews_2.npy").write_text("no"), (), "rews_2.npy: cannot be read as a .npy"),
    "mpe2 task": (None, ("--task", "mpe/simple_spread"), "not mpe2's; use --task omar-mpe/simple_spread"),
    "no such tier": (None, ("--tier", "expert"), "expert: no such folder; --dir is OMAR's <env> folder and --tier "
                     "one of its sub-folders (medium)"),
    "actions off the box": (lambda folder: np.save(folder / "acs_1.npy", np.full((50, 5), 1.5, np.float32)), (),
                            "acs_1.npy leave the env's action box (max |a| = 1.500"),
}


@pytest.mark.parametrize("case", sorted(OMAR_CASES))
def test_malformed_omar_folder_gives_its_specific_error(case, tmp_path):
    damage, flags, expected = OMAR_CASES[case]
    omar_folder(tmp_path / "simple_spread" / "medium", 0, [25, 25], [18, 18, 18], [5, 5, 5])
    if damage is not None:
        damage(tmp_path / "simple_spread" / "medium" / "seed_0_data")
    args = ["omar", "--dir", tmp_path / "simple_spread", "--task", "omar-mpe/simple_spread", "--tier", "medium",
            "--out", tmp_path / "x.npz"]
    for flag, value in zip(flags[::2], flags[1::2]):
        args[args.index(flag) + 1] = value
    message = convert_error(*args)
    assert expected in message, message


def test_existing_outputs_are_refused_without_force(ogmarl_dataset, tmp_path):
    good = ogmarl_dataset / "good.npz"
    before = good.read_bytes()
    message = convert_error("og-marl", "--vault", ogmarl_dataset / "2halfcheetah.vlt", "--uid", "Good", "--task", TASK,
                            "--out", good)
    assert "exists already; pass --force" in message and good.read_bytes() == before
    convert_cli("to-vault", "--dataset", good, "--out", tmp_path / "hc.vlt", "--uid", "Good")
    assert "exists already; pass --force" in convert_error("to-vault", "--dataset", good, "--out", tmp_path / "hc.vlt",
                                                           "--uid", "Good")
    convert_cli("to-vault", "--dataset", good, "--out", tmp_path / "hc.vlt", "--uid", "Good", "--force")


def test_metadata_checks_of_references_and_agent_obsk(tmp_path):
    ours = osd_common.load_dataset(str(synthetic_dataset(tmp_path / "ours.npz")))
    arrays = {k: getattr(ours, k) for k in osd_common.TRANSITION_FIELDS + ("obs_mask", "act_mask")}
    for change, expected in (({"references": "unknown"}, "references are 'unknown', which needs (0.0, 100.0)"),
                             ({"agent_obsk": -1}, "metadata.agent_obsk' is -1"),
                             ({"task": "mpe/simple_spread"}, "only MaMuJoCo has it")):
        with pytest.raises(osd_common.DatasetError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            osd_common.save_dataset(tmp_path / "bad.npz", arrays, {**ours.meta, **change}, force=True)
    assert osd_common.dataset_agent_obsk({"task": TASK}) == 0  # osd's own datasets: agent_obsk=0, as before


def run(script: str, cwd: pathlib.Path, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *map(str, flags)], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_osd_mamujoco_trains_and_evaluates_on_an_obsk1_vault(ogmarl_dataset, tmp_path):
    """The env follows the data: built with agent_obsk=1 in training, evaluation and --eval-only."""
    result = run("osd_mamujoco.py", tmp_path, "--dataset", ogmarl_dataset / "good.npz", "--seed", "1", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "actor step 20: return" in result.stdout
    import torch

    checkpoint, = (tmp_path / "checkpoints").glob("*.pt")
    assert torch.load(checkpoint, weights_only=False)["meta"]["agent_obsk"] == 1
    again = run("osd_mamujoco.py", tmp_path, "--eval-only", "--checkpoint", checkpoint, "--final-eval-episodes", "1",
                "--torch-threads", "1")
    assert again.returncode == 0 and "eval-only" in again.stdout, again.stderr[-3000:]


def test_omar_mpe_data_trains_without_evaluation(tmp_path):
    omar_folder(tmp_path / "simple_tag" / "medium", 0, [25, 25], [16, 16, 16], [5, 5, 5])
    convert_cli("omar", "--dir", tmp_path / "simple_tag", "--task", "omar-mpe/simple_tag", "--tier", "medium",
                "--out", tmp_path / "tag.npz")
    result = run("osd_mpe.py", tmp_path, "--dataset", tmp_path / "tag.npz", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training without evaluation" in result.stdout and "not evaluated" in result.stdout
    assert "return" not in result.stdout.split("phase 2")[-1].split("saved checkpoint")[0]
    refused = run("osd_mpe.py", tmp_path, "--dataset", tmp_path / "tag.npz", "--record", "r.json", *TINY_FLAGS)
    assert refused.returncode != 0 and "cannot be evaluated here" in refused.stderr
