"""Shared, non-algorithmic code of osd: environments, the dataset format, and evaluation.

Everything the algorithm scripts (`osd_mpe.py`, `osd_mamujoco.py`) and the baselines need that is not
the algorithm itself lives here, so that each script can stay a single readable file:

* `make_env(task, agent_obsk=...)`: one multi-agent interface over `mpe2` (PettingZoo) and
  `gymnasium_robotics.mamujoco_v1`: controlled agents only, actions in [-1, 1], one team reward, a global
  state. Fixed opponents (the prey of predator-prey, the good agents of world) are hidden inside. A
  dataset says which env it comes from: its task and, on MaMuJoCo, its `agent_obsk`
  (`dataset_agent_obsk(meta)`); training scripts build and evaluate exactly that env.
* `save_dataset` / `load_dataset`: one `.npz` file per dataset, holding the transitions and a JSON
  metadata record. Loading validates every field and raises one `DatasetError` that names the file,
  the field and what to do.
* `evaluate(act_fn, task, episodes, seed)`: decentralized rollouts on the real env, mean/std team return
  and the D4RL-style normalized score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import os
import pathlib
import platform
import random
import shlex
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from typing import Callable

import numpy as np
import torch

REPO_ROOT = pathlib.Path(__file__).resolve().parent
# Generated datasets live in a git-ignored cache; OSD_DATA_DIR moves it (e.g. to a shared disk).
DATASET_CACHE = pathlib.Path(os.environ.get("OSD_DATA_DIR", REPO_ROOT / "datasets" / "cache"))
REFERENCE_RETURNS_FILE = REPO_ROOT / "datasets" / "reference_returns.json"
DATASET_FORMAT_VERSION = 1

MPE_TASKS = ("mpe/simple_spread", "mpe/simple_tag", "mpe/simple_world_comm")
# MPE tasks whose team size the task name selects, "<task>-N<k>": mpe/simple_spread-N4 is spread with 4 agents
# and 4 landmarks, mpe/simple_tag-N4 tag with 4 predators (1 prey and 2 obstacles, as always). The plain name is
# the default size, so it has no -N name (one name per env, dataset and reference entry).
# base task -> (mpe2's keyword for the size, default size)
MPE_TEAM_SIZE_ARGS = {"mpe/simple_spread": ("N", 3), "mpe/simple_tag": ("num_adversaries", 3)}
# MaMuJoCo splits that datasets/mamujoco_data.py makes tiers for, each from TD3 behavior policies committed under
# datasets/policies/<split, lower case>/ (datasets/train_mamujoco_td3.py --task trains them; MAMUJOCO.md). Any other
# gymnasium_robotics split ('mamujoco/<Scenario>-<conf>') trains and evaluates on your own data.
MAMUJOCO_TASKS = ("mamujoco/HalfCheetah-2x3", "mamujoco/Hopper-3x1", "mamujoco/Ant-2x4")
TASKS = MPE_TASKS + MAMUJOCO_TASKS
# MPE tiers: expert, medium, medium-replay, random, mixed, the balanced multimodal balanced and
# mixed-balanced, and expert-noisy, expert-noisy-replay, mixed-expert-noisy (the scripted expert with random
# team steps: MPE's medium, medium-replay and mixed until issue 14); MaMuJoCo: expert, medium,
# medium-replay, random, plus medium-expert
TIERS = ("expert", "medium", "medium-replay", "random", "mixed", "medium-expert", "balanced", "mixed-balanced",
         "expert-noisy", "expert-noisy-replay", "mixed-expert-noisy")
MPE_EPISODE_STEPS = 25
# OMAR's MPE data (datasets/convert.py omar) comes from OMAR's own modified particle world, with its own
# rewards and action scaling: not mpe2's. Its tasks are named omar-mpe/<scenario>: they train, but no env
# here can evaluate them, and none is evaluated in their place.
OMAR_MPE_PREFIX = "omar-mpe/"
# (ref_random, ref_expert) of a dataset whose task has no reference returns here (metadata
# `references: "unknown"`): the "normalized score" 100 * (R - 0) / (100 - 0) is then the return itself.
REFERENCES_UNKNOWN = (0.0, 100.0)


class DatasetError(ValueError):
    """A dataset file is missing or malformed. The message names the file, the field and the fix."""


class TaskError(ValueError):
    """An unknown task name. The message lists the valid ones."""


# ---------------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------------
def split_team_size(task: str) -> tuple[str, int | None]:
    """An MPE task name -> (base task, team size): 'mpe/simple_spread-N4' -> ('mpe/simple_spread', 4), a plain
    name of MPE_TEAM_SIZE_ARGS -> its default size, any other name -> (task, None). A malformed '-N' name
    raises TaskError saying what to pass instead."""
    base, separator, size = task.partition("-N")
    if not (task.startswith("mpe/") and separator):
        return task, MPE_TEAM_SIZE_ARGS.get(task, (None, None))[1]
    usage = ("name a team size as <task>-N<k> with a whole number k >= 2, e.g. --task mpe/simple_spread-N4 "
             "(4 agents, 4 landmarks) or --task mpe/simple_tag-N4 (4 predators)")
    if base not in MPE_TEAM_SIZE_ARGS:
        raise TaskError(f"task {task!r}: {base!r} has no selectable team size (only "
                        f"{', '.join(MPE_TEAM_SIZE_ARGS)} have); {usage}")
    if not (size.isascii() and size.isdigit()) or size.startswith("0"):
        raise TaskError(f"task {task!r}: the team size {size!r} is not a whole number (digits, no leading 0); {usage}")
    if int(size) < 2:
        raise TaskError(f"task {task!r}: a team needs at least 2 agents, not {size}; {usage}")
    if int(size) == MPE_TEAM_SIZE_ARGS[base][1]:
        raise TaskError(f"task {task!r}: {size} agents is the default size, named plain {base}: pass --task {base}")
    return base, int(size)


def check_task(task: str) -> str:
    """Return `task` if we can build it, else raise TaskError listing the valid names."""
    if task in TASKS or split_team_size(task)[0] != task:  # a plain task, or a well-formed team size
        return task
    if task.startswith("mamujoco/") and "-" in task.split("/", 1)[1]:
        return task  # any gymnasium_robotics agent split, e.g. mamujoco/Ant-2x4, for users' own data
    if task.startswith(OMAR_MPE_PREFIX) and task[len(OMAR_MPE_PREFIX):].isidentifier():
        return task  # OMAR's particle world: trains, never evaluated (see OMAR_MPE_PREFIX)
    raise TaskError(
        f"unknown task {task!r}: use one of {', '.join(TASKS)}, '<task>-N<k>' for a team of k >= 2 on "
        f"{' or '.join(MPE_TEAM_SIZE_ARGS)} (e.g. mpe/simple_spread-N4), 'mamujoco/<Scenario>-<agent_conf>' "
        "(e.g. mamujoco/Ant-2x4) for another MaMuJoCo split, or 'omar-mpe/<scenario>' for OMAR's MPE data"
    )


def can_evaluate(task: str) -> bool:
    """Whether an env of `task` can be built here to evaluate policies: every task but OMAR's MPE."""
    return not check_task(task).startswith(OMAR_MPE_PREFIX)


def _to_env_action(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map an action in [-1, 1] affinely onto the env's box [low, high] (docs/algorithm.md §1)."""
    action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
    return (low + (action + 1.0) * 0.5 * (high - low)).astype(np.float32)


def _move_action(direction: np.ndarray) -> np.ndarray:
    """An mpe2 5-D continuous move action in [0, 1] whose force points along `direction` (2-D, |d|<=1).

    mpe2 computes the force as (a[2] - a[1], a[4] - a[3]) * accel, so each axis uses one of its pair.
    """
    dx, dy = np.clip(direction, -1.0, 1.0)
    return np.array([0.0, max(-dx, 0.0), max(dx, 0.0), max(-dy, 0.0), max(dy, 0.0)], dtype=np.float32)


def _flee_direction(me, chasers, world_radius: float = 0.9) -> np.ndarray:
    """Scripted evasion: away from the chasers (closer ones weigh more), back toward the centre when
    near the edge of the arena. Shared by the prey of predator-prey and the good agents of world."""
    push = np.zeros(2)
    for chaser in chasers:
        delta = me.state.p_pos - chaser.state.p_pos
        dist = np.linalg.norm(delta) + 1e-6
        push += delta / dist**3
    direction = push / (np.linalg.norm(push) + 1e-6)
    radius = np.linalg.norm(me.state.p_pos)
    if radius > world_radius * 0.7:  # the arena has no walls: leaving it is penalised, so turn back
        inward = -me.state.p_pos / radius
        weight = min((radius - world_radius * 0.7) / (world_radius * 0.3), 1.0)
        direction = (1.0 - weight) * direction + weight * inward
    return direction / (np.linalg.norm(direction) + 1e-6)


def _prey_policy(world) -> dict[str, np.ndarray]:
    """Fixed prey of mpe/simple_tag: a scripted flee heuristic (deterministic, no parameters to ship)."""
    chasers = [a for a in world.agents if a.adversary]
    return {a.name: _move_action(_flee_direction(a, chasers)) for a in world.agents if not a.adversary}


def _world_good_agents_policy(world) -> dict[str, np.ndarray]:
    """Fixed good agents of mpe/simple_world_comm: flee adversaries that come within 0.5, otherwise go
    to the nearest food (their reward). Scripted, deterministic."""
    chasers = [a for a in world.agents if a.adversary]
    actions = {}
    for agent in world.agents:
        if agent.adversary:
            continue
        threats = [c for c in chasers if np.linalg.norm(c.state.p_pos - agent.state.p_pos) < 0.5]
        if threats:
            direction = _flee_direction(agent, threats)
        else:
            food = min(world.food, key=lambda f: np.linalg.norm(f.state.p_pos - agent.state.p_pos))
            delta = food.state.p_pos - agent.state.p_pos
            direction = 3.0 * delta - 0.5 * agent.state.p_vel
        actions[agent.name] = _move_action(direction)
    return actions


class MultiAgentEnv:
    """One interface for every task: the controlled agents, per-agent obs/action sizes, a global state,
    one team reward, actions in [-1, 1]. Fixed opponents act inside `step` and are never seen.

    Team reward: the mean of the controlled agents' rewards. In predator-prey and world the predators'
    rewards are identical, so this is each one's reward; in spread it is the shared coverage term plus
    the mean collision penalty; in MaMuJoCo all agents get the same reward.
    """

    task: str
    n_agents: int
    agent_names: list[str]
    obs_dims: list[int]
    act_dims: list[int]
    state_dim: int
    max_episode_steps: int

    def reset(self, seed: int | None = None) -> tuple[list[np.ndarray], np.ndarray]:
        raise NotImplementedError

    def step(self, actions) -> tuple[list[np.ndarray], np.ndarray, float, bool, bool]:
        raise NotImplementedError

    def render(self) -> np.ndarray | None:
        return self._env.render()

    def close(self) -> None:
        self._env.close()


class MPEEnv(MultiAgentEnv):
    """mpe2 scenario, continuous actions, 25 steps. The global state is the concatenation of the
    controlled agents' observations (docs/algorithm.md §1)."""

    def __init__(self, task: str, render_mode: str | None = None):
        from mpe2 import simple_spread_v3, simple_tag_v3, simple_world_comm_v3

        base, size = split_team_size(task)
        module = {"mpe/simple_spread": simple_spread_v3, "mpe/simple_tag": simple_tag_v3,
                  "mpe/simple_world_comm": simple_world_comm_v3}[base]
        # a -N<k> name passes its size to mpe2 (N= or num_adversaries=); a plain name passes none, as always
        size_kwargs = {} if task == base else {MPE_TEAM_SIZE_ARGS[base][0]: size}
        # curriculum=True is broken in mpe2 1.1.1: never pass it.
        self._env = module.parallel_env(continuous_actions=True, max_cycles=MPE_EPISODE_STEPS,
                                        render_mode=render_mode, **size_kwargs)
        self.task = task
        self._opponent_policy = {"mpe/simple_spread": None, "mpe/simple_tag": _prey_policy,
                                 "mpe/simple_world_comm": _world_good_agents_policy}[base]
        all_agents = list(self._env.possible_agents)
        if base == "mpe/simple_spread":
            self.agent_names = all_agents
        else:  # the learners are the adversaries (predators, incl. world's leader)
            self.agent_names = [a for a in all_agents if "adversary" in a]
        self.n_agents = len(self.agent_names)
        self.obs_dims = [int(self._env.observation_space(a).shape[0]) for a in self.agent_names]
        self.act_dims = [int(self._env.action_space(a).shape[0]) for a in self.agent_names]
        self._act_low = [self._env.action_space(a).low for a in self.agent_names]
        self._act_high = [self._env.action_space(a).high for a in self.agent_names]
        self.state_dim = sum(self.obs_dims)
        self.max_episode_steps = MPE_EPISODE_STEPS

    @property
    def world(self):
        """The mpe2 world (positions of every entity): for scripted behavior policies and opponents."""
        return self._env.unwrapped.world

    def _observe(self, obs_dict) -> tuple[list[np.ndarray], np.ndarray]:
        obs = [np.asarray(obs_dict[a], dtype=np.float32) for a in self.agent_names]
        return obs, np.concatenate(obs)

    def reset(self, seed: int | None = None):
        obs_dict, _ = self._env.reset(seed=seed)
        self._last_obs = obs_dict
        return self._observe(obs_dict)

    def step(self, actions):
        if len(actions) != self.n_agents:
            raise ValueError(f"{self.task}: expected {self.n_agents} actions, got {len(actions)}")
        env_actions = {name: _to_env_action(a, lo, hi)
                       for name, a, lo, hi in zip(self.agent_names, actions, self._act_low, self._act_high)}
        if self._opponent_policy is not None:
            env_actions.update(self._opponent_policy(self.world))
        obs_dict, rewards, terminations, truncations, _ = self._env.step(env_actions)
        team_reward = float(np.mean([rewards[a] for a in self.agent_names]))
        terminated = any(terminations[a] for a in self.agent_names)
        truncated = (not terminated) and (any(truncations[a] for a in self.agent_names) or not self._env.agents)
        obs, state = self._observe(obs_dict)
        return obs, state, team_reward, terminated, truncated


class MaMuJoCoEnv(MultiAgentEnv):
    """gymnasium_robotics.mamujoco_v1, e.g. HalfCheetah split into 2 agents of 3 joints. The global state
    is `env.state()`. The 1000-step limit is a timeout (truncated), never a terminal; a body that falls
    (Hopper, Walker2d, Ant: the env's unhealthy check) ends its episode as a terminal (terminated, not
    truncated), HalfCheetah never does. A step is never both."""

    def __init__(self, task: str, render_mode: str | None = None, agent_obsk: int = 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from gymnasium_robotics import mamujoco_v1

            scenario, agent_conf = task.split("/", 1)[1].split("-", 1)
            self._env = mamujoco_v1.parallel_env(scenario, agent_conf, agent_obsk=agent_obsk,
                                                 render_mode=render_mode)
        self.task = task
        self.agent_obsk = agent_obsk
        self.agent_names = list(self._env.possible_agents)
        self.n_agents = len(self.agent_names)
        self.obs_dims = [int(self._env.observation_space(a).shape[0]) for a in self.agent_names]
        self.act_dims = [int(self._env.action_space(a).shape[0]) for a in self.agent_names]
        self._act_low = [self._env.action_space(a).low for a in self.agent_names]
        self._act_high = [self._env.action_space(a).high for a in self.agent_names]
        self.state_dim = int(self._env.state().shape[0]) if hasattr(self._env, "state") else 0
        self.max_episode_steps = 1000

    def reset(self, seed: int | None = None):
        obs_dict, _ = self._env.reset(seed=seed)
        obs = [np.asarray(obs_dict[a], dtype=np.float32) for a in self.agent_names]
        return obs, np.asarray(self._env.state(), dtype=np.float32)

    def step(self, actions):
        if len(actions) != self.n_agents:
            raise ValueError(f"{self.task}: expected {self.n_agents} actions, got {len(actions)}")
        env_actions = {name: _to_env_action(a, lo, hi)
                       for name, a, lo, hi in zip(self.agent_names, actions, self._act_low, self._act_high)}
        obs_dict, rewards, terminations, truncations, _ = self._env.step(env_actions)
        team_reward = float(np.mean([rewards[a] for a in self.agent_names]))
        terminated = any(bool(terminations[a]) for a in self.agent_names)
        truncated = (not terminated) and any(bool(truncations[a]) for a in self.agent_names)
        obs = [np.asarray(obs_dict[a], dtype=np.float32) for a in self.agent_names]
        return obs, np.asarray(self._env.state(), dtype=np.float32), team_reward, terminated, truncated


def make_env(task: str, render_mode: str | None = None, agent_obsk: int = 0) -> MultiAgentEnv:
    """Build `task` (see TASKS; MPE team sizes as mpe/simple_spread-N4: MPE_TEAM_SIZE_ARGS) behind the uniform
    multi-agent interface. `agent_obsk` is MaMuJoCo's observation depth (0: each agent sees its own joints;
    1: also its neighbours'): it must be the one the data was recorded with, `dataset_agent_obsk(meta)`."""
    check_task(task)
    if not can_evaluate(task):
        raise TaskError(f"{task}: OMAR's modified particle world (its own rewards and action scaling) is not "
                        "built here: its data trains, but policies trained on it cannot be evaluated, and mpe2 "
                        "is not evaluated in its place")
    if task.startswith("mpe/"):
        if agent_obsk != 0:
            raise TaskError(f"{task}: agent_obsk={agent_obsk} is a MaMuJoCo setting; MPE envs take none")
        return MPEEnv(task, render_mode=render_mode)
    return MaMuJoCoEnv(task, render_mode=render_mode, agent_obsk=agent_obsk)


def dataset_agent_obsk(meta: dict) -> int:
    """The MaMuJoCo observation depth a dataset was recorded with, which its env and evaluation must use.
    A dataset without the field means 0, as every osd dataset made before the field existed."""
    return int(meta.get("agent_obsk", 0))


def check_env_fits_data(program: str, data, task: str, record: bool) -> bool:
    """Before training on `data`: whether its policies can be evaluated here. Stops with a message when the
    env of `task` (built with the dataset's agent_obsk) disagrees with the data's sizes, or when a run
    record (`record`) is asked of data whose env is not built here (OMAR's particle world: the run would
    have no score). `program` names the script in the messages."""
    meta = data.meta
    if not can_evaluate(task):
        if record:
            raise SystemExit(f"{program}: --record: {task} cannot be evaluated here (OMAR's particle world), so the "
                             "run would have no score to record; drop --record")
        print(f"{program}: {task} is OMAR's particle world, not built here: training without evaluation")
        return False
    agent_obsk = dataset_agent_obsk(meta)
    try:
        env = make_env(task, agent_obsk=agent_obsk)
    except Exception as error:  # an unknown MaMuJoCo scenario or split: gymnasium_robotics raises plain exceptions
        raise SystemExit(f"{program}: --task {task!r} (of dataset {data.path}) cannot be built by gymnasium_robotics "
                         f"({type(error).__name__}: {error})") from None
    sizes = (list(env.obs_dims), list(env.act_dims), env.state_dim)
    env.close()
    if sizes != (list(meta["obs_dims"]), list(meta["act_dims"]), meta["state_dim"]):
        raise SystemExit(f"{program}: dataset {data.path} has obs dims {list(meta['obs_dims'])} / action dims "
                         f"{list(meta['act_dims'])} / state dim {meta['state_dim']}, but the {task} env "
                         f"(agent_obsk={agent_obsk}, from the dataset) has {sizes[0]} / {sizes[1]} / {sizes[2]}")
    if meta.get("references") == "unknown":
        print(f"{program}: {task} has no reference returns here: every 'normalized score' below is the return")
    return True


# ---------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------
TRANSITION_FIELDS = ("observations", "actions", "rewards", "next_observations", "states", "next_states",
                     "terminals", "timeouts")
REQUIRED_META = ("task", "tier", "n_agents", "obs_dims", "act_dims", "state_dim", "ref_random", "ref_expert")


@dataclasses.dataclass
class Dataset:
    """Transitions of a cooperative team. Agents with smaller obs/action sizes are zero-padded to the
    largest; `obs_mask`/`act_mask` say which entries are real."""

    path: pathlib.Path
    meta: dict
    observations: np.ndarray  # float32 [T, N, max_obs_dim]
    actions: np.ndarray  # float32 [T, N, max_act_dim], in [-1, 1]
    rewards: np.ndarray  # float32 [T], team reward
    next_observations: np.ndarray  # float32 [T, N, max_obs_dim]
    states: np.ndarray  # float32 [T, state_dim]
    next_states: np.ndarray  # float32 [T, state_dim]
    terminals: np.ndarray  # float32 [T]; 1 only where the env terminated (timeouts are not terminals)
    timeouts: np.ndarray  # float32 [T]; 1 on the last step of a time-limited episode
    obs_mask: np.ndarray  # float32 [N, max_obs_dim]
    act_mask: np.ndarray  # float32 [N, max_act_dim]

    def __len__(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def task(self) -> str:
        return self.meta["task"]

    @property
    def n_agents(self) -> int:
        return int(self.meta["n_agents"])


def dataset_path(task: str, tier: str) -> pathlib.Path:
    """Where the cache keeps the dataset of `task` and `tier`."""
    return DATASET_CACHE / check_task(task) / f"{tier}.npz"


def arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """A content hash of the transition arrays (dtype, shape and bytes, in a fixed order)."""
    digest = hashlib.sha256()
    for key in TRANSITION_FIELDS + ("obs_mask", "act_mask"):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{value.dtype.str}:{value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def agent_masks(obs_dims, act_dims) -> dict[str, np.ndarray]:
    """`obs_mask`/`act_mask` [N, max dim]: 1 on each agent's real entries, 0 on its zero padding."""
    return {"obs_mask": (np.arange(max(obs_dims))[None] < np.array(obs_dims)[:, None]).astype(np.float32),
            "act_mask": (np.arange(max(act_dims))[None] < np.array(act_dims)[:, None]).astype(np.float32)}


def episode_returns(rewards: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Undiscounted team return of every complete episode of a flat transition array."""
    ends = np.flatnonzero((terminals > 0) | (timeouts > 0))
    starts = np.concatenate([[0], ends[:-1] + 1])
    return np.array([rewards[s:e + 1].sum() for s, e in zip(starts, ends)], dtype=np.float64)


def default_final_eval_episodes(task: str) -> int:
    """Episodes of a run's last evaluation (its recorded final score) when no flag says: 100 on MPE, whose
    25-step episodes vary so much that 10 leave about +-7 normalized points of noise, 20 on MaMuJoCo."""
    return 100 if task.startswith("mpe/") else 20


def normalized_score(episode_return: float, ref_random: float, ref_expert: float) -> float:
    """D4RL convention: 0 is the random policy, 100 the expert (docs/algorithm.md §6)."""
    return 100.0 * (episode_return - ref_random) / (ref_expert - ref_random)


def save_dataset(path, arrays: dict[str, np.ndarray], meta: dict, force: bool = False) -> pathlib.Path:
    """Write one dataset file (`.npz` with the arrays and a JSON `metadata` record). Completes the
    metadata with sizes, return statistics, the content hash and the format version; validates the
    result by loading it back. Refuses to overwrite an existing file unless `force`."""
    path = pathlib.Path(path)
    if path.suffix != ".npz":
        raise DatasetError(f"{path}: dataset files end in .npz; choose a name like {path.with_suffix('.npz').name}")
    if path.exists() and not force:
        raise DatasetError(f"{path}: exists already; pass --force (force=True) to overwrite it")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise DatasetError(f"{path}: metadata lacks {', '.join(missing)}; add them before saving")
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
    returns = episode_returns(arrays["rewards"], arrays["terminals"], arrays["timeouts"])
    meta = dict(meta)
    meta.update(
        version=DATASET_FORMAT_VERSION,
        transitions=int(arrays["rewards"].shape[0]),
        episodes=int(returns.shape[0]),
        return_mean=float(returns.mean()) if returns.size else float("nan"),
        return_std=float(returns.std()) if returns.size else float("nan"),
        sha256=arrays_sha256(arrays),
    )
    meta["normalized_score"] = normalized_score(meta["return_mean"], meta["ref_random"], meta["ref_expert"])
    path.parent.mkdir(parents=True, exist_ok=True)
    # written whole, then renamed: never half a file; the process id keeps two runs that build the same
    # missing dataset at once (a grid's workers) from renaming each other's partial file
    tmp = path.with_name(f"{path.stem}.partial-{os.getpid()}.npz")
    np.savez(tmp, metadata=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, path)
    load_dataset(path)
    return path


def _generator_module():
    """datasets/generate.py, loaded by path (datasets/ is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("osd_datasets_generate", REPO_ROOT / "datasets" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def resolve_dataset_path(name_or_path: str) -> pathlib.Path:
    """'mpe/simple_spread/expert' -> the cache file; anything ending in .npz -> that file."""
    name = str(name_or_path)
    if name.endswith(".npz"):
        return pathlib.Path(name)
    task, _, tier = name.rpartition("/")
    if tier not in TIERS:
        raise DatasetError(f"{name!r}: not a .npz path, and {tier!r} is no tier; name a dataset as "
                           f"'<task>/<tier>' with a tier in {', '.join(TIERS)}, or give a path to a .npz file")
    try:
        return dataset_path(task, tier)
    except TaskError as err:
        raise DatasetError(f"{name!r}: {err}") from None


def load_dataset(name_or_path: str, build_if_missing: bool = False) -> Dataset:
    """Load and validate a dataset by name ('mpe/simple_spread/mixed') or path. With `build_if_missing`,
    a missing cached dataset is generated first by datasets/generate.py."""
    path = resolve_dataset_path(name_or_path)
    if not path.exists():
        if build_if_missing and not str(name_or_path).endswith(".npz"):
            task, _, tier = str(name_or_path).rpartition("/")
            print(f"dataset {name_or_path} is not in the cache yet: generating it into {path}")
            _generator_module().generate(task, tier, out=path)
        else:
            raise DatasetError(
                f"{path}: no such dataset file; make it with "
                f"`python datasets/generate.py --task <task> --tier <tier>` or check the path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {k: archive[k] for k in archive.files}
    except Exception as err:  # zip errors, truncation, not an npz at all
        raise DatasetError(f"{path}: cannot be read as a dataset ({type(err).__name__}: {err}); "
                           "the file is truncated or not a .npz: regenerate it with --force") from None
    return _validate(path, contents)


def _validate(path: pathlib.Path, contents: dict[str, np.ndarray]) -> Dataset:
    def fail(field: str, problem: str, fix: str = "regenerate it with `python datasets/generate.py ... --force`"):
        raise DatasetError(f"{path}: field '{field}' {problem}; {fix}")

    if "metadata" not in contents:
        fail("metadata", "is missing", "this is not an osd dataset file; make one with datasets/generate.py")
    try:
        meta = json.loads(str(contents.pop("metadata")))
    except json.JSONDecodeError as err:
        fail("metadata", f"is not valid JSON ({err})")
    for key in REQUIRED_META + ("version", "sha256"):
        if key not in meta:
            fail(f"metadata.{key}", "is missing")
    if meta["version"] != DATASET_FORMAT_VERSION:
        fail("metadata.version", f"is {meta['version']}, this code reads version {DATASET_FORMAT_VERSION}")
    try:
        check_task(meta["task"])
    except TaskError as err:
        fail("metadata.task", str(err), "fix the task name in the metadata or regenerate the dataset")
    n_agents = int(meta["n_agents"])
    obs_dims, act_dims = list(meta["obs_dims"]), list(meta["act_dims"])
    if len(obs_dims) != n_agents or len(act_dims) != n_agents:
        fail("metadata.obs_dims/act_dims", f"do not have one entry per agent (n_agents={n_agents})")
    for key in ("ref_random", "ref_expert"):
        if not isinstance(meta[key], (int, float)) or not math.isfinite(meta[key]):
            fail(f"metadata.{key}", f"is {meta[key]!r}, not a finite number")
    if meta["ref_expert"] == meta["ref_random"]:
        fail("metadata.ref_expert", "equals ref_random, so no score can be normalized")
    refs_fix = "set references to 'ours' (with measured ref_random/ref_expert) or 'unknown'"
    if meta.get("references", "ours") not in ("ours", "unknown"):
        fail("metadata.references", f"is {meta['references']!r}, not 'ours' or 'unknown'", refs_fix)
    if meta.get("references") == "unknown" and (meta["ref_random"], meta["ref_expert"]) != REFERENCES_UNKNOWN:
        fail("metadata.ref_random/ref_expert", f"are ({meta['ref_random']}, {meta['ref_expert']}) but references "
             f"are 'unknown', which needs {REFERENCES_UNKNOWN} (scores are then returns)", refs_fix)
    if "agent_obsk" in meta:
        obsk_fix = "set it to the gymnasium_robotics agent_obsk the data was recorded with, or drop it off MaMuJoCo"
        if isinstance(meta["agent_obsk"], bool) or not isinstance(meta["agent_obsk"], int) or meta["agent_obsk"] < 0:
            fail("metadata.agent_obsk", f"is {meta['agent_obsk']!r}, not a non-negative integer", obsk_fix)
        if not meta["task"].startswith("mamujoco/"):
            fail("metadata.agent_obsk", f"is set, but task {meta['task']!r} is not MaMuJoCo (only MaMuJoCo has it)",
                 obsk_fix)

    for key in TRANSITION_FIELDS + ("obs_mask", "act_mask"):
        if key not in contents:
            fail(key, "is missing")
        if contents[key].dtype != np.float32:
            fail(key, f"has dtype {contents[key].dtype}, expected float32")
        if not np.all(np.isfinite(contents[key])):
            bad = int(np.flatnonzero(~np.isfinite(contents[key]).reshape(len(contents[key]), -1).any(-1)
                                     if contents[key].ndim > 1 else ~np.isfinite(contents[key]))[0])
            fail(key, f"holds NaN or inf values (first at row {bad})")
    T = contents["rewards"].shape[0]
    max_obs, max_act = max(obs_dims), max(act_dims)
    expected = {
        "observations": (T, n_agents, max_obs), "next_observations": (T, n_agents, max_obs),
        "actions": (T, n_agents, max_act), "rewards": (T,), "terminals": (T,), "timeouts": (T,),
        "states": (T, int(meta["state_dim"])), "next_states": (T, int(meta["state_dim"])),
        "obs_mask": (n_agents, max_obs), "act_mask": (n_agents, max_act),
    }
    for key, shape in expected.items():
        if contents[key].shape != shape:
            fail(key, f"has shape {contents[key].shape}, expected {shape} (from rewards' length and the metadata)")
    if T == 0:
        fail("rewards", "is empty: the dataset has no transitions")
    if np.abs(contents["actions"]).max() > 1.0 + 1e-5:
        fail("actions", f"leave [-1, 1] (max |a| = {np.abs(contents['actions']).max():.3f})",
             "map each env action box affinely to [-1, 1] before saving")
    if contents["terminals"][-1] + contents["timeouts"][-1] == 0:
        fail("terminals/timeouts", "do not end the last episode (the file may be truncated)")
    if meta.get("transitions", T) != T:
        fail("metadata.transitions", f"says {meta['transitions']} but the arrays hold {T}")
    if arrays_sha256(contents) != meta["sha256"]:
        fail("metadata.sha256", "does not match the arrays: the file was modified or corrupted")
    return Dataset(path=path, meta=meta, **{k: contents[k] for k in expected})


# ---------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------
def reference_returns(task: str) -> tuple[float, float]:
    """(R_random, R_expert) of `task` as measured by datasets/generate.py --measure-references."""
    check_task(task)
    if not REFERENCE_RETURNS_FILE.exists():
        raise DatasetError(f"{REFERENCE_RETURNS_FILE}: missing; run `python datasets/generate.py --measure-references`")
    table = json.loads(REFERENCE_RETURNS_FILE.read_text())
    if task not in table:
        how = (f": python datasets/generate.py --measure-references --task {task}"  # e.g. a new team size
               if split_team_size(task)[0] in MPE_TASKS else "")
        raise DatasetError(f"{REFERENCE_RETURNS_FILE}: no entry for task {task!r}; pass ref_random/ref_expert "
                           f"explicitly (a dataset's metadata has them) or measure them{how}")
    return float(table[task]["R_random"]), float(table[task]["R_expert"])


def evaluate(act_fn: Callable[[list[np.ndarray]], list[np.ndarray]], task: str, episodes: int, seed: int,
             ref_random: float | None = None, ref_expert: float | None = None,
             capture_video: bool = False, agent_obsk: int = 0) -> dict:
    """Decentralized rollouts of `act_fn` on the real env.

    `act_fn(observations)` receives a list whose entry i is agent i's OWN raw observation (its own size,
    unpadded, unnormalized) and returns one action in [-1, 1] per agent; agent i's action must depend on
    observations[i] only. Episode k is reset with seed `seed + k`, so a (policy, seed) pair always
    replays the same episodes. `agent_obsk` builds the MaMuJoCo env the data came from
    (`dataset_agent_obsk(meta)`). Returns mean/std team return and the normalized score.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if ref_random is None or ref_expert is None:
        ref_random, ref_expert = reference_returns(task)
    env = make_env(task, render_mode="rgb_array" if capture_video else None, agent_obsk=agent_obsk)
    returns, frames = [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        episode_return, done = 0.0, False
        while not done:
            if capture_video and episode == 0:
                frames.append(env.render())
            actions = act_fn(obs)
            obs, _, reward, terminated, truncated = env.step(actions)
            episode_return += reward
            done = terminated or truncated
        returns.append(episode_return)
    env.close()
    mean = float(np.mean(returns))
    result = {
        "return_mean": mean,
        "return_std": float(np.std(returns)),
        "normalized_score": normalized_score(mean, ref_random, ref_expert),
        "returns": returns,
    }
    if capture_video:
        result["frames"] = frames
    return result


# ---------------------------------------------------------------------------------------------------
# Training-script glue: what osd_mpe.py, osd_mamujoco.py and the baselines share that is not an algorithm.
# `program` names the script in every message.
# ---------------------------------------------------------------------------------------------------
# the smallest value each flag accepts (resolve_budgets); every other budget must be at least 1
FLAG_MINIMUMS = {"seed": 0, "pretrain_steps": 0, "critic_steps": 0, "beta": 0, "value_weighted_steps": 0}
# flags that must lie strictly inside (low, high): phase 1b's temperature is a divisor; IQL's expectile weights
# residuals by tau and 1 - tau, so at 0 or 1 one side gets no weight and outside a negative one
FLAG_OPEN_BOUNDS = {"value_weighted_temperature": (0.0, math.inf), "expectile": (0.0, 1.0)}
# --capture-video: (every how many env steps a frame is kept, image scale) per task family. HalfCheetah
# steps 0.05 s, so every 2nd frame at 10 fps plays in real time; MuJoCo renders on the CPU at ~0.1 s a frame.
VIDEO_SETTINGS = {"mpe/": (1, 1.0), "mamujoco/": (2, 0.5)}


def resolve_budgets(program: str, args, presets: dict):
    """Fill every budget left at None from `presets[args.preset]` (flags given explicitly win), then stop
    with the flag named when a value is below its minimum (FLAG_MINIMUMS, else 1) or outside its open
    interval (FLAG_OPEN_BOUNDS): a clear error, not a numpy traceback (negative seed) or a division by zero later."""
    for name, value in presets[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in dict.fromkeys([*presets[args.preset], "final_eval_episodes", *FLAG_MINIMUMS]):
        value, low = getattr(args, name, None), FLAG_MINIMUMS.get(name, 1)
        if value is not None and value < low:
            raise SystemExit(f"{program}: --{name.replace('_', '-')} is {value}; it must be at least {low}")
    for name, (low, high) in FLAG_OPEN_BOUNDS.items():
        value = getattr(args, name, None)
        if value is not None and not low < value < high:
            bound = f"above {low}" if high == math.inf else f"between {low:g} and {high:g} (exclusive)"
            raise SystemExit(f"{program}: --{name.replace('_', '-')} is {value}; it must be {bound}")
    return args


def seed_and_device(program: str, args) -> torch.device:
    """Seed python, numpy and torch with --seed, set --torch-threads, and pick --device."""
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    return pick_device(program, args.device)


def pick_device(program: str, choice: str) -> torch.device:
    """--device: auto picks cuda when torch sees one; cuda without one is a clear error."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"{program}: --device cuda was asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}). Use --device cpu or --device auto.")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def check_finite(program: str, losses: dict[str, float], step: int, phase: str | None = None,
                 fix: str = "lower the learning rates") -> None:
    """Stop the run with a clear message if any loss is NaN or infinite (checked when losses are logged:
    a NaN spreads to the weights, so the logged loss stays NaN from then on)."""
    for name, value in losses.items():
        if not math.isfinite(value):
            raise SystemExit(
                f"{program}: loss '{name}' is {value} at {phase + ' ' if phase else ''}step {step}. Training stopped "
                "(losses are checked when logged, every --log-every steps). Check the dataset for huge or "
                f"non-finite values, or {fix}."
            )


class Normalizer:
    """Standardization with dataset statistics; dimensions with (near) zero spread are left centered."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.where(np.asarray(std) < 1e-6, 1.0, std).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def make_act_fn(actors: torch.nn.ModuleList, obs_normalizer: Normalizer, device) -> Callable:
    """Decentralized execution: agent i's action from its own raw observation only."""

    @torch.no_grad()
    def act(observations: list[np.ndarray]) -> list[np.ndarray]:
        actions = []
        for i, (actor, obs) in enumerate(zip(actors, observations)):
            normalized = (obs - obs_normalizer.mean[i, : len(obs)]) / obs_normalizer.std[i, : len(obs)]
            obs_tensor = torch.as_tensor(normalized, dtype=torch.float32, device=device)[None]
            actions.append(actor(obs_tensor)[0].cpu().numpy())
        return actions

    return act


def evaluate_actors(actors: torch.nn.ModuleList, obs_normalizer: Normalizer, device, episodes: int, seed: int,
                    meta: dict) -> dict:
    """`evaluate` of the actors on the env of the data (meta's task and agent_obsk), in eval mode."""
    actors.eval()
    result = evaluate(make_act_fn(actors, obs_normalizer, device), meta["task"], episodes=episodes, seed=seed,
                      ref_random=meta.get("ref_random"), ref_expert=meta.get("ref_expert"),
                      agent_obsk=dataset_agent_obsk(meta))
    actors.train()
    return result


def render_episode(program: str, act_fn: Callable, task: str, seed: int, agent_obsk: int = 0,
                   frame_skip: int | None = None) -> list[np.ndarray]:
    """One decentralized episode (reset with `seed`, as evaluation's first episode), rendered off-screen
    every `frame_skip`-th step (VIDEO_SETTINGS by default)."""
    if frame_skip is None:
        frame_skip = next(skip for prefix, (skip, _) in VIDEO_SETTINGS.items() if task.startswith(prefix))
    if task.startswith("mamujoco/"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # read when mujoco is first imported, in make_env
    try:
        env = make_env(task, render_mode="rgb_array", agent_obsk=agent_obsk)
        obs, _ = env.reset(seed=seed)
        frames, done, t = [env.render()], False, 0
        while not done:
            obs, _, _, terminated, truncated = env.step(act_fn(obs))
            done, t = terminated or truncated, t + 1
            if t % frame_skip == 0 or done:
                frames.append(env.render())
        env.close()
    except Exception as error:  # OpenGL missing or misconfigured: say how to fix it, without a traceback
        raise SystemExit(f"{program}: --capture-video could not render {task} with MUJOCO_GL="
                         f"{os.environ.get('MUJOCO_GL')!r} ({type(error).__name__}: {error}). Headless machines "
                         "need MUJOCO_GL=egl (GPU or mesa EGL) or MUJOCO_GL=osmesa (with libOSMesa installed).")
    return frames


def save_gif(frames: list[np.ndarray], path: str, fps: int = 10, scale: float = 1.0) -> None:
    """Write rgb frames as an animated GIF with pillow (installed with matplotlib), resized by `scale`."""
    from PIL import Image  # only --capture-video needs pillow

    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    if scale != 1.0:
        size = (max(1, int(images[0].width * scale)), max(1, int(images[0].height * scale)))
        images = [image.resize(size) for image in images]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


CHECKPOINT_META_KEYS = ("task", "tier", "n_agents", "obs_dims", "act_dims", "state_dim", "ref_random", "ref_expert",
                        "references", "agent_obsk", "sha256")


def save_checkpoint(args, run_name: str, nets: dict, normalizers: dict[str, Normalizer], meta: dict, **extra) -> str:
    """<--checkpoint-dir>/<run_name>.pt: every network's state dict, the normalizers' statistics (obs_mean,
    obs_std, state_mean, ...), the Args, the dataset's meta and `extra` (scores, the algorithm's name)."""
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    path = os.path.join(args.checkpoint_dir, f"{run_name}.pt")
    statistics = {f"{name}_{stat}": getattr(normalizer, stat)
                  for name, normalizer in normalizers.items() for stat in ("mean", "std")}
    torch.save({**{name: net.state_dict() for name, net in nets.items()}, "normalizers": statistics,
                "args": dataclasses.asdict(args), "meta": {key: meta[key] for key in CHECKPOINT_META_KEYS if key in meta},
                **extra}, path)
    print(f"saved checkpoint {path}")
    return path


def checkpoint_args(args_class, saved: dict):
    """The Args (an `args_class`) a checkpoint was trained with. OMSD checkpoints written before
    --q-normalization replaced the boolean --normalize-q hold normalize_q: True is batch, False is none."""
    saved = dict(saved)
    if "normalize_q" in saved:
        saved["q_normalization"] = "batch" if saved.pop("normalize_q") else "none"
    return args_class(**saved)


def omsd_algorithm_name(args) -> str:
    """An OMSD run record's algorithm, from the flags given: omsd, or omsd-independent for the ablation, with
    -beta0 added when --beta 0 was given (no Q term: the behavior regularizer alone). Call it before the
    tier's beta fills in `args.beta is None`: OMSD at its tier's beta keeps the plain name even where that
    beta is 0, so the grid's `omsd` cell finds the record it asked for (the record's args keep the value)."""
    name = "omsd" if args.decomposition == "sequential" else "omsd-independent"
    return f"{name}-beta0" if args.beta == 0 else name


def hyperparameter_table(args) -> str:
    """The Args as a markdown table, for TensorBoard's text tab."""
    return "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in dataclasses.asdict(args).items())


def load_training_data(program: str, args, tasks: tuple[str, ...] | None = TASKS):
    """The dataset of --dataset, or the named dataset of --task/--tier (built on first use unless
    --no-build-dataset; `tasks` None: the script checked --task and --tier itself); sets args.task and
    args.tier from the data."""
    if args.dataset is None and tasks is not None:
        try:
            base = split_team_size(args.task)[0]  # a team size of a task (mpe/simple_spread-N4) is that task's
        except TaskError as error:
            raise SystemExit(f"{program}: --task: {error}")
        if base not in tasks:
            raise SystemExit(f"{program}: --task {args.task!r} is not a task of {program}; valid tasks: {', '.join(tasks)}")
        if args.tier not in TIERS:
            raise SystemExit(f"{program}: --tier {args.tier!r} is not a tier; valid tiers: {', '.join(TIERS)}")
    try:
        data = load_dataset(args.dataset or f"{args.task}/{args.tier}", build_if_missing=args.build_dataset)
    except DatasetError as error:
        raise SystemExit(f"{program}: {error}")
    args.task, args.tier = data.meta["task"], data.meta.get("tier", args.tier)
    return data


def load_pretrained(program: str, path: str, meta: dict, data_path, args, must_match: tuple[str, ...],
                    device) -> dict:
    """--pretrained: a checkpoint trained on the same dataset (sha256) with the same `must_match` flags."""
    if not os.path.isfile(path):
        raise SystemExit(f"{program}: --pretrained {path!r} does not exist")
    pretrained = torch.load(path, map_location=device, weights_only=False)
    if pretrained["meta"].get("sha256") != meta.get("sha256"):
        raise SystemExit(f"{program}: --pretrained {path} was trained on another dataset "
                         f"({pretrained['meta'].get('sha256', '?')[:12]}), not {data_path}")
    differing = [f"--{k.replace('_', '-')} {pretrained['args'][k]}" for k in must_match
                 if pretrained["args"][k] != getattr(args, k)]
    if differing:
        raise SystemExit(f"{program}: --pretrained {path} was trained with {', '.join(differing)}; pass the same flags")
    return pretrained


def run_eval_only(program: str, args, device, args_class, build_networks: Callable, algorithm: str | None = None) -> dict:
    """--eval-only: rebuild the networks of --checkpoint with the script's `build_networks(meta, saved Args,
    device)`, load its weights and evaluate its actors without training, over --final-eval-episodes (default:
    as many as a run's final evaluation) with the checkpoint's own evaluation seed (its --seed + 10,000, not
    the command line's), so that the run's recorded final score is reproduced. --capture-video saves one
    episode as videos/<checkpoint name>.gif. `algorithm`: refuse checkpoints of another algorithm."""
    checkpoint_path, episodes, capture_video = args.checkpoint, args.final_eval_episodes, args.capture_video
    if checkpoint_path is None:
        raise SystemExit(f"{program}: --eval-only needs --checkpoint PATH (a .pt written by a training run)")
    if not os.path.isfile(checkpoint_path):
        raise SystemExit(f"{program}: checkpoint {checkpoint_path!r} does not exist")
    checkpoint = torch.load(checkpoint_path, map_location=device, weights_only=False)
    if algorithm is not None and checkpoint.get("algorithm", algorithm) != algorithm:
        raise SystemExit(f"{program}: {checkpoint_path} was written by {checkpoint['algorithm']}, not {algorithm}; "
                         "evaluate it with that algorithm's script")
    meta = checkpoint["meta"]
    if capture_video and meta["task"].startswith("mamujoco/"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # read when mujoco is first imported, by evaluation below
    if not can_evaluate(meta["task"]):
        raise SystemExit(f"{program}: {checkpoint_path} was trained on {meta['task']} data, whose env is not built "
                         "here (OMAR's particle world): it cannot be evaluated")
    saved_args = checkpoint_args(args_class, checkpoint["args"])
    nets = build_networks(meta, saved_args, device)
    for name, net in nets.items():
        net.load_state_dict(checkpoint[name])
    obs_normalizer = Normalizer(checkpoint["normalizers"]["obs_mean"], checkpoint["normalizers"]["obs_std"])
    episodes = episodes if episodes is not None else default_final_eval_episodes(meta["task"])
    seed = saved_args.seed + 10_000  # the evaluation seed of the run that wrote the checkpoint
    result = evaluate_actors(nets["actors"], obs_normalizer, device, episodes, seed, meta)
    print(f"eval-only {checkpoint_path}: return {result['return_mean']:.2f} ± {result['return_std']:.2f}, "
          f"normalized score {result['normalized_score']:.1f} over {episodes} episodes "
          f"(the checkpoint's seed {saved_args.seed})")
    if capture_video:
        frames = render_episode(program, make_act_fn(nets["actors"].eval(), obs_normalizer, device), meta["task"],
                                seed, dataset_agent_obsk(meta))
        os.makedirs("videos", exist_ok=True)
        name = os.path.splitext(os.path.basename(checkpoint_path))[0]
        scale = next(s for prefix, (_, s) in VIDEO_SETTINGS.items() if meta["task"].startswith(prefix))
        save_gif(frames, f"videos/{name}.gif", scale=scale)
        print(f"saved videos/{name}.gif ({len(frames)} frames)")
    return result


# ---------------------------------------------------------------------------------------------------
# Run records: one JSON file per finished training run (benchmarks/grid.py writes the grid of them,
# benchmarks/report.py turns them into docs/results.md). Every algorithm script writes the same schema.
# ---------------------------------------------------------------------------------------------------
RECORD_VERSION = 1
# key -> type(s) the value must have; make_record fills them all, load_record checks them all
RECORD_SCHEMA = {
    "record_version": int,
    "algorithm": str,  # omsd, omsd-independent, omsd-beta0 (OMSD with beta 0), bc, matd3-bc
    "task": str,
    "tier": str,
    "seed": int,
    "dataset": dict,  # path, sha256, transitions, normalized_score (of the data's own episodes)
    "final_normalized_score": float,  # at the last evaluation
    "final_return_mean": float,
    "final_return_std": float,
    "best_normalized_score": float,  # max over evaluations: optimistic, chosen on the evaluation itself
    "eval_episodes": int,
    "eval_curve": list,  # [[step, normalized_score], ...] in the algorithm's own training steps
    "updates": int,  # training-loop iterations, one batch each (OMSD: phase-1 + actor steps; MATD3+BC: critic
    #                  steps, every policy_freq-th with an actor update; BC: steps)
    "train_time_s": float,  # training time without evaluations
    "updates_per_s": float,  # updates / train_time_s
    "wall_time_s": float,  # the whole run: loading, training, evaluations, checkpoint
    "git_commit": (str, type(None)),  # None outside a git checkout or before the first commit
    "git_dirty": (bool, type(None)),
    "machine": dict,  # platform, python, cpu_count, torch, torch_threads, device, device_name
    "command": str,  # the command line that made the run
    "args": dict,
    "run_name": str,
    "checkpoint": (str, type(None)),
    "finished_at": str,  # ISO 8601, UTC
}
# Keys only some records hold: checked when present, so records written before them still load.
OPTIONAL_RECORD_SCHEMA = {
    # OMSD's actor diagnostics at its last actor step, one number per agent (osd_mpe.py's actor_loss):
    "score_push_rms": list,  # RMS of the behavior regularizer's push w(t) eps_hat on a_i
    "q_push_rms": list,  # RMS of the Q term's push beta g on a_i, after --q-normalization
    "action_at_bounds": list,  # share of the actor's action entries with |a| > 0.99
}


class RecordError(ValueError):
    """A run record is missing, unreadable or incomplete."""


def git_commit() -> tuple[str | None, bool | None]:
    """(HEAD commit, whether tracked files other than benchmarks/records differ from it) of the checkout
    this file is in."""
    def git(*argv):
        return subprocess.run(["git", *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        # run records and grid manifests are outputs, not code: a grid writing them must not mark its runs dirty
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/records")
        return head.stdout.strip(), bool(dirty.stdout.strip()) if dirty.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def machine_info(device=None) -> dict:
    """Where a run ran: OS, Python, CPU count, torch version and threads, device."""
    device = str(device) if device is not None else "cpu"
    name = platform.processor() or platform.machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": device,
            "device_name": name}


def make_record(*, algorithm: str, args, meta: dict, dataset_path, seed: int, eval_history: list[tuple[int, dict]],
                updates: int, train_time_s: float, wall_time_s: float, device, run_name: str,
                checkpoint: str | None, actor_diagnostics: dict[str, list[float]] | None = None) -> dict:
    """The run record of RECORD_SCHEMA. `eval_history` is [(step, evaluate(...) result), ...] in order;
    the last entry is the final evaluation. `args` is the script's Args dataclass. `actor_diagnostics`
    adds keys of OPTIONAL_RECORD_SCHEMA (name -> one value per agent)."""
    if not eval_history:
        raise RecordError(f"{run_name}: no evaluation was run, so there is no score to record")
    final = eval_history[-1][1]
    commit, dirty = git_commit()
    record = {
        "record_version": RECORD_VERSION,
        "algorithm": algorithm,
        "task": meta["task"],
        "tier": meta.get("tier", "custom"),
        "seed": int(seed),
        "dataset": {"path": str(dataset_path), "sha256": meta.get("sha256"), "transitions": meta.get("transitions"),
                    "normalized_score": meta.get("normalized_score")},  # the data's own average episode
        "final_normalized_score": float(final["normalized_score"]),
        "final_return_mean": float(final["return_mean"]),
        "final_return_std": float(final["return_std"]),
        "best_normalized_score": float(max(result["normalized_score"] for _, result in eval_history)),
        "eval_episodes": len(final["returns"]),
        "eval_curve": [[int(step), float(result["normalized_score"])] for step, result in eval_history],
        "updates": int(updates),
        "train_time_s": float(train_time_s),
        "updates_per_s": float(updates / max(train_time_s, 1e-9)),
        "wall_time_s": float(wall_time_s),
        "git_commit": commit,
        "git_dirty": dirty,
        "machine": machine_info(device),
        "command": shlex.join(["python", *sys.argv]),
        "args": dataclasses.asdict(args) if dataclasses.is_dataclass(args) else dict(args),
        "run_name": run_name,
        "checkpoint": checkpoint,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    for key, values in (actor_diagnostics or {}).items():
        if key not in OPTIONAL_RECORD_SCHEMA:
            raise RecordError(f"{run_name}: '{key}' is not a record key; optional keys: "
                              f"{', '.join(OPTIONAL_RECORD_SCHEMA)}")
        record[key] = [float(value) for value in values]
    check_record(record, run_name)
    return record


def check_record(record: dict, where: str = "record") -> dict:
    """Raise RecordError unless `record` has every key of RECORD_SCHEMA with the right type and finite
    scores, and each key of OPTIONAL_RECORD_SCHEMA it has is a list of finite numbers."""
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a record is a JSON object, got {type(record).__name__}")
    for key, kind in RECORD_SCHEMA.items():
        if key not in record:
            raise RecordError(f"{where}: key '{key}' is missing")
        value = record[key]
        if kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise RecordError(f"{where}: key '{key}' is {value!r}, not a finite number")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise RecordError(f"{where}: key '{key}' is {value!r}, not an integer")
        elif not isinstance(value, kind):
            raise RecordError(f"{where}: key '{key}' has type {type(value).__name__}")
    for key in OPTIONAL_RECORD_SCHEMA:
        values = record.get(key)
        if values is not None and (not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise RecordError(f"{where}: key '{key}' is {values!r}, not a list of finite numbers")
    if record["record_version"] != RECORD_VERSION:
        raise RecordError(f"{where}: record_version {record['record_version']}, this code reads {RECORD_VERSION}")
    if not record["eval_curve"] or not all(isinstance(p, list) and len(p) == 2 for p in record["eval_curve"]):
        raise RecordError(f"{where}: eval_curve must be a non-empty list of [step, normalized_score]")
    return record


def write_record(path, record: dict) -> pathlib.Path:
    """Write a run record atomically: a temporary file in the same folder, then a rename, so that a
    record on disk is always complete (benchmarks/grid.py skips runs whose record exists)."""
    path = pathlib.Path(path)
    check_record(record, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def load_record(path) -> dict:
    """Read and check one run record; RecordError names the file and the problem."""
    path = pathlib.Path(path)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: cannot be read as a run record ({type(err).__name__}: {err})") from None
    return check_record(record, str(path))
