"""Behavior policies of the controlled MPE teams: scripted conventions, one family per task, and the
MATD3 teams trained online (MATD3Team, the learned `medium` tier's behavior).

Why scripted, not trained online (see datasets/README.md): each policy follows an explicit *convention*
(which agent covers which landmark, which predator takes which side of the prey, which pair of
adversaries hunts which good agent). Conventions are exactly the equilibria that make cooperative data
multimodal (docs/algorithm.md §2), and with scripted policies the convention of every episode is known,
so the data card can measure the multimodality of `mixed` exactly. They are also strong, fast and need
no checkpoint: the code below *is* the policy.

A policy reads the env's world (positions and velocities of every entity) and returns one action per
controlled agent in the osd convention, [-1, 1] per dimension (osd_common maps it to mpe2's [0, 1]).
`noise_std` adds Gaussian noise to every action, as OMAR added exploration noise for diversity, and
`random_prob` replaces the whole team's action by a uniform random one at a step with that probability:
that is how the `expert-noisy` tiers are made from an expert convention. Every policy is called as
`policy(env, rng, obs)`; the scripted ones read the world and ignore `obs`.

Team sizes (osd_common.MPE_TEAM_SIZE_ARGS: mpe/simple_spread-N4, mpe/simple_tag-N4): a convention of an
n-agent spread or tag team is one of the n! assignments of agents to landmarks or sides, numbered in
lexicographic order (convention_order), so the 3-agent conventions are the shipped ones.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

import osd_common

# All orderings of 3 slots: convention k of 3-agent spread / tag is PERMUTATIONS_3[k] (= convention_order(k, 3)).
PERMUTATIONS_3 = list(itertools.permutations(range(3)))
# World: which 2 of the 4 adversaries (leader = 0) chase good agent 0; the other 2 chase good agent 1.
WORLD_PAIRINGS = list(itertools.combinations(range(4), 2))
GAIN_POSITION, GAIN_VELOCITY = 4.0, 1.0  # PD controller on position error, damping on velocity


def n_conventions(task: str) -> int:
    """How many conventions `task`'s scripted expert has: n! for an n-agent spread or tag team, 6 in world."""
    base, size = osd_common.split_team_size(task)
    return len(WORLD_PAIRINGS) if base == "mpe/simple_world_comm" else math.factorial(size)


def convention_order(convention: int, n: int) -> tuple[int, ...]:
    """Convention k of an n-agent spread / tag team: the k-th permutation of range(n) in lexicographic order,
    itertools.permutations' order (for n = 3, PERMUTATIONS_3[k]), without listing all n! of them."""
    rest, order = list(range(n)), []
    for remaining in range(n, 0, -1):
        index, convention = divmod(convention, math.factorial(remaining - 1))
        order.append(rest.pop(index))
    return tuple(order)


def _move(direction: np.ndarray, act_dim: int = 5) -> np.ndarray:
    """An action in [-1, 1]^act_dim whose mpe2 force points along `direction` (extra dims, e.g. the
    world leader's 4 communication dims, stay at -1, i.e. 0 in mpe2's [0, 1] box)."""
    dx, dy = np.clip(direction, -1.0, 1.0)
    env_action = np.zeros(act_dim, dtype=np.float32)  # mpe2 space, [0, 1]
    env_action[1:5] = [max(-dx, 0.0), max(dx, 0.0), max(-dy, 0.0), max(dy, 0.0)]
    return 2.0 * env_action - 1.0


def _pd(agent, target: np.ndarray) -> np.ndarray:
    return GAIN_POSITION * (target - agent.state.p_pos) - GAIN_VELOCITY * agent.state.p_vel


class ScriptedTeam:
    """A team policy with a fixed convention, optional action noise and optional random steps."""

    def __init__(self, task: str, convention: int, noise_std: float = 0.0, random_prob: float = 0.0):
        if not 0 <= convention < n_conventions(task):
            raise ValueError(f"{task}: convention must be in [0, {n_conventions(task)}), got {convention}")
        self.task, self.convention = task, convention
        self.noise_std, self.random_prob = noise_std, random_prob

    @property
    def policy_id(self) -> str:
        return (f"scripted:{self.task}:convention{self.convention}:noise{self.noise_std:g}"
                f":random{self.random_prob:g}")

    def clean_actions(self, env) -> list[np.ndarray]:
        world = env.world
        agents = {a.name: a for a in world.agents}
        team = [agents[name] for name in env.agent_names]
        base = osd_common.split_team_size(self.task)[0]
        if base == "mpe/simple_spread":
            # agent i covers landmark order[i] (3 agents: PERMUTATIONS_3[c][i])
            order = convention_order(self.convention, len(team))
            return [_move(_pd(agent, world.landmarks[order[i]].state.p_pos)) for i, agent in enumerate(team)]
        if base == "mpe/simple_tag":
            # predator i approaches its own side of the prey (n slots 360/n deg apart), then closes in
            prey = next(a for a in world.agents if not a.adversary)
            order = convention_order(self.convention, len(team))
            actions = []
            for i, agent in enumerate(team):
                angle = 2.0 * np.pi * order[i] / len(team)
                lead = prey.state.p_pos + 0.3 * prey.state.p_vel
                distance = np.linalg.norm(lead - agent.state.p_pos)
                offset = min(0.25, 0.5 * distance) * np.array([np.cos(angle), np.sin(angle)])
                actions.append(_move(_pd(agent, lead + offset)))
            return actions
        if base == "mpe/simple_world_comm":
            # adversaries in WORLD_PAIRINGS[c] hunt good agent 0, the others good agent 1
            good = [a for a in world.agents if not a.adversary]
            pair = WORLD_PAIRINGS[self.convention]
            actions = []
            for i, agent in enumerate(team):
                prey = good[0] if i in pair else good[1]
                target = prey.state.p_pos + 0.3 * prey.state.p_vel
                actions.append(_move(_pd(agent, target), act_dim=env.act_dims[i]))
            return actions
        raise ValueError(f"no scripted behavior policy for task {self.task!r}")

    def __call__(self, env, rng: np.random.Generator, obs=None) -> list[np.ndarray]:
        if self.random_prob > 0 and rng.random() < self.random_prob:
            return [rng.uniform(-1.0, 1.0, d).astype(np.float32) for d in env.act_dims]
        actions = self.clean_actions(env)
        if self.noise_std > 0:
            actions = [a + self.noise_std * rng.standard_normal(a.shape) for a in actions]
        return [np.clip(a, -1.0, 1.0).astype(np.float32) for a in actions]


class UniformRandomTeam:
    """The `random` tier's behavior: every action uniform in [-1, 1] (OMAR used an untrained network;
    uniform actions are the simpler, parameter-free reading of 'no skill')."""

    policy_id = "uniform-random"

    def __call__(self, env, rng: np.random.Generator, obs=None) -> list[np.ndarray]:
        return [rng.uniform(-1.0, 1.0, d).astype(np.float32) for d in env.act_dims]


class MATD3Team:
    """A team trained online with MATD3 (datasets/train_mpe_matd3.py): each agent's actor on its own
    observation `obs[i]`, plus Gaussian action noise as the scripted experts have. torch is imported only
    here, so the scripted tiers do not need it."""

    def __init__(self, checkpoint, noise_std: float = 0.0):
        import pathlib

        import torch
        from train_mpe_matd3 import load_team

        torch.set_num_threads(1)  # the same actions on any machine size, and polite on a shared one
        self.checkpoint, self.noise_std = pathlib.Path(checkpoint), noise_std
        self.team, self._torch = load_team(self.checkpoint), torch

    @property
    def policy_id(self) -> str:
        return f"matd3:{self.checkpoint.parent.name}/{self.checkpoint.name}:noise{self.noise_std:g}"

    def __call__(self, env, rng: np.random.Generator, obs=None) -> list[np.ndarray]:
        with self._torch.no_grad():
            actions = [actor(self._torch.as_tensor(o, dtype=self._torch.float32)[None])[0].numpy()
                       for actor, o in zip(self.team.actors, obs)]
        if self.noise_std > 0:
            actions = [a + self.noise_std * rng.standard_normal(a.shape) for a in actions]
        return [np.clip(a, -1.0, 1.0).astype(np.float32) for a in actions]
