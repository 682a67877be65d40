"""Which convention does each spread agent choose at the start of an episode, and who makes the choice?

A spread convention assigns each agent a landmark (datasets/behavior_policies.py: convention c sends agent
i to landmark PERMUTATIONS_3[c][i]). At an episode's first step every agent stands still, so the state
says nothing about the convention: the team must choose one there, together, and keep it. For an
osd_mpe.py checkpoint of spread (the script loaded by path, regularizer_pull.load_run), at the first step of
the dataset's episodes (or `--step K`), this script measures what each piece of OMSD does:

  data                 the dataset's own joint actions (a check of the measure: 100% conventions)
  behavior model       joint actions sampled from the trained diffusion model, agent by agent in the
                       fixed order (each conditioned on the actions already sampled, or on nothing with
                       --decomposition independent): does the model itself coordinate?
  regularizer targets  for each agent, a sample of what eq. (5.2) pulls it toward: the behavior model for
                       agent i given the actors' current actions of its predecessors
  actors               the trained decentralized actors

An agent's *heading* is the landmark whose scripted approach action (the expert's action toward it) is
nearest to the agent's action; a joint heading is one of the data's conventions, another permutation,
or a `clash` (two agents head for one landmark). `weak` counts actions farther than 0.5 (the data's
noise is about 0.2) from every approach action: between the conventions. Only states where every
agent's three approach actions differ clearly are used (the expert saturates its actions, so two
landmarks in one quadrant give one action).

It also reports the behavior model's *completion* (agent i sampled given the data's own actions of its
predecessors: a model that learned the conditionals puts agent 2 on the landmark agents 0 and 1 leave
free), and rollouts of the actors (and of the behavior model as a policy) on held-out episodes: the share
with a landmark left bare, the normalized score, and how often a clearly-headed agent far (> 0.3) from
every landmark changes its heading.

    python benchmarks/spread_conventions.py --checkpoint checkpoints/<run>.pt [more.pt ...]
    python benchmarks/spread_conventions.py --checkpoint checkpoints/<run>.pt --step 3 --no-behavior-rollouts
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from regularizer_pull import load_run  # noqa: E402
from spread_coordination import EPISODE_SEED, REPO, assignment  # noqa: E402

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))
import osd_common  # noqa: E402
from behavior_policies import GAIN_POSITION, GAIN_VELOCITY, PERMUTATIONS_3  # noqa: E402
from generate import MIXED_CONVENTIONS  # noqa: E402

WEAK_DISTANCE, DECISIVE, FAR = 0.5, 0.5, 0.3


def approach_actions(observations: np.ndarray) -> np.ndarray:
    """[..., 3 agents, 3 landmarks, 4]: the scripted policy's force dims (1..4) toward each landmark
    (datasets/behavior_policies.py: _move(_pd(...))), from raw spread obs ([vel(2), pos(2), landmark_rel(3x2), ...])."""
    velocity = observations[..., 0:2]
    landmarks = observations[..., 4:10].reshape(*observations.shape[:-1], 3, 2)
    direction = np.clip(GAIN_POSITION * landmarks - GAIN_VELOCITY * velocity[..., None, :], -1.0, 1.0)
    dx, dy = direction[..., 0], direction[..., 1]
    return 2.0 * np.stack([np.maximum(-dx, 0), np.maximum(dx, 0), np.maximum(-dy, 0), np.maximum(dy, 0)], -1) - 1.0


def headings(observations: np.ndarray, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per agent: the landmark whose approach action is nearest to its action; whether that heading is
    ambiguous (the approach actions of two landmarks are nearly the same: both far in one quadrant, so the
    expert's own action would not tell them apart); and whether the action is weak (far from every
    approach action: between the conventions)."""
    approach = approach_actions(observations)
    distance = np.linalg.norm(np.clip(actions[..., None, 1:5], -1, 1) - approach, axis=-1)  # [..., 3, 3]
    heading = distance.argmin(-1)
    spread = np.linalg.norm(approach[..., :, None, :] - approach[..., None, :, :], axis=-1)
    spread = spread + np.eye(3) * 1e9
    ambiguous = np.take_along_axis(spread, heading[..., None, None].repeat(3, -1), -2)[..., 0, :].min(-1) < DECISIVE
    return heading, ambiguous, distance.min(-1) > WEAK_DISTANCE


def classify(heading: np.ndarray, weak: np.ndarray) -> dict[str, float]:
    """Shares of joint headings: each data convention, another permutation, or a clash; and weak agents."""
    conventions = {tuple(PERMUTATIONS_3[c]): f"convention{c}" for c in MIXED_CONVENTIONS}
    labels = [conventions.get(tuple(row), "other") if len(set(row)) == 3 else "clash" for row in heading.tolist()]
    counts = collections.Counter(labels)
    shares = {key: counts.get(key, 0) / max(len(labels), 1) for key in [*conventions.values(), "other", "clash"]}
    shares["weak agents"] = float(weak.mean()) if weak.size else float("nan")
    return shares


def rollouts(act: Callable[[np.ndarray], np.ndarray], meta: dict, episodes: int) -> dict[str, float]:
    """`episodes` spread episodes in lockstep (reset seeds 20,000+), `act` mapping raw obs [K, 3, O] to
    actions [K, 3, 5]: bare-landmark share at the end, normalized score, and heading switches per agent
    and episode (a clear heading that changes to another clear one while the agent is far from every landmark)."""
    envs = [osd_common.make_env("mpe/simple_spread") for _ in range(episodes)]
    observations = np.stack([np.stack(env.reset(seed=EPISODE_SEED + k)[0]) for k, env in enumerate(envs)])
    returns, switches, previous = np.zeros(episodes), np.zeros(episodes), None
    for _ in range(osd_common.MPE_EPISODE_STEPS):
        actions = act(observations)
        heading, ambiguous, weak = headings(observations, actions)
        clear = ~ambiguous & ~weak
        far = np.linalg.norm(observations[..., 4:10].reshape(episodes, 3, 3, 2), axis=-1).min(-1) > FAR
        if previous is not None:
            prev_heading, prev_clear = previous
            switches += ((heading != prev_heading) & clear & prev_clear & far).sum(-1)
        previous = (np.where(clear, heading, -1), clear) if previous is None else (
            np.where(clear, heading, previous[0]), clear | previous[1])
        stepped = [env.step(list(a)) for env, a in zip(envs, actions)]
        observations = np.stack([np.stack(step[0]) for step in stepped])
        returns += [step[2] for step in stepped]
    for env in envs:
        env.close()
    bare = np.mean([assignment(list(obs)) == "overlap" for obs in observations])
    score = osd_common.normalized_score(float(returns.mean()), meta["ref_random"], meta["ref_expert"])
    return {"bare landmark": float(bare), "normalized score": score / 100, "switches per agent": float(switches.mean() / 3)}


@torch.no_grad()
def sample_agent(osd_mpe, score_net, condition, prefix_actions, prefix_mask, act_mask, agent: int,
                 n_steps: int = 25) -> np.ndarray:
    """Agent `agent`'s action sampled from the behavior model given fixed predecessor actions (the same
    deterministic DDIM pass as sample_behavior_actions, for one agent)."""
    batch, n_agents = condition.shape[0], condition.shape[1]
    times = torch.linspace(1.0, osd_mpe.BEHAVIOR_T_MIN, n_steps + 1)
    x = torch.randn(batch, act_mask.shape[-1]) * act_mask[agent]
    for t_now, t_next in zip(times[:-1], times[1:]):
        (alpha_now, sigma_now), (alpha_next, sigma_next) = osd_mpe.vp_alpha_sigma(t_now), osd_mpe.vp_alpha_sigma(t_next)
        noised = prefix_actions.clone()
        noised[:, agent] = x
        eps = score_net(noised, t_now.expand(batch, n_agents), condition, prefix_actions, prefix_mask)[:, agent]
        clean = ((x - sigma_now * eps) / alpha_now).clamp(-1, 1)
        x = (alpha_next * clean + sigma_next * eps) * act_mask[agent]
    return x.clamp(-1, 1).numpy()


@torch.no_grad()
def sample_behavior_actions(osd_mpe, score_net, condition: torch.Tensor, prefix_mask: torch.Tensor,
                            act_mask: torch.Tensor, order: list[int] | None = None, n_steps: int = 50) -> torch.Tensor:
    """Joint actions sampled from an osd_mpe.py behavior model, agent by agent in `order` (docs/algorithm.md
    §3), each conditioned on the actions already sampled for its predecessors (sample_agent). CPU tensors."""
    batch, n_agents = condition.shape[0], condition.shape[1]
    joint = torch.zeros(batch, n_agents, act_mask.shape[-1])
    for agent in (range(n_agents) if order is None else order):
        joint[:, agent] = torch.as_tensor(sample_agent(osd_mpe, score_net, condition, joint, prefix_mask, act_mask,
                                                       agent, n_steps))
    return joint


@torch.no_grad()
def measure(checkpoint_path: str, n_states: int = 500, episodes: int = 100, seed: int = 0,
            behavior_rollouts: bool = True, step: int = 0) -> dict:
    osd_mpe, checkpoint, args, nets, data = load_run(checkpoint_path)
    meta = checkpoint["meta"]
    if meta["task"] != "mpe/simple_spread":
        raise SystemExit(f"spread_conventions: {checkpoint_path} is a {meta['task']} run, not spread")
    torch.manual_seed(seed)
    norm = checkpoint["normalizers"]
    f32 = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    act_mask, n_agents = f32(data.act_mask), data.actions.shape[1]
    prefix_mask = osd_mpe.prefix_masks(n_agents, args.decomposition)

    def inputs(raw_obs: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw spread obs [B, 3, O] -> the normalized obs and the behavior model's condition [B, N, C]."""
        obs = f32((raw_obs - norm["obs_mean"]) / norm["obs_std"] * data.obs_mask)
        state = f32((raw_obs.reshape(len(raw_obs), -1) - norm["state_mean"]) / norm["state_std"])
        return obs, state[:, None, :].expand(-1, n_agents, -1) if args.behavior_condition == "state" else obs

    def behavior_act(raw_obs: np.ndarray) -> np.ndarray:
        """Sample the behavior model agent by agent (in the checkpoint's order) at these observations."""
        return sample_behavior_actions(osd_mpe, nets["score_net"], inputs(raw_obs)[1], prefix_mask, act_mask,
                                       n_steps=25).numpy()

    def conditional_samples(raw_obs: np.ndarray, prefix_actions: np.ndarray) -> np.ndarray:
        """Each agent sampled from the behavior model given `prefix_actions` of its predecessors (given
        nothing with `independent`)."""
        condition, prefix = inputs(raw_obs)[1], f32(prefix_actions)
        return np.stack([sample_agent(osd_mpe, nets["score_net"], condition, prefix, prefix_mask, act_mask, agent)
                         for agent in range(n_agents)], axis=1)

    def actor_act(raw_obs: np.ndarray) -> np.ndarray:
        return osd_mpe.joint_action(nets["actors"], inputs(raw_obs)[0], act_mask.shape[-1]).numpy()

    # step `step` (0: the first) of the dataset's episodes, where every agent's three approach actions differ clearly
    ends = np.flatnonzero((data.terminals > 0) | (data.timeouts > 0))
    starts = np.concatenate([[0], ends[:-1] + 1]) + step
    approach = approach_actions(data.observations[starts])
    gaps = np.linalg.norm(approach[..., :, None, :] - approach[..., None, :, :], axis=-1) + np.eye(3) * 1e9
    decisive = starts[gaps.min(axis=(-1, -2, -3)) >= DECISIVE]
    rows = np.random.default_rng(seed).choice(decisive, size=min(n_states, len(decisive)), replace=False)
    raw_obs = data.observations[rows]
    result = {"decomposition": args.decomposition, "tier": meta["tier"],
              "final_normalized_score": checkpoint.get("final_normalized_score"), "first-step states": len(rows),
              "step": step,
              "first step": {}, "rollouts": {}}
    actors_now = actor_act(raw_obs)
    sources = {"data": data.actions[rows], "behavior model": behavior_act(raw_obs),
               # what eq. (5.2) pulls each agent toward: the model given the actors' current a_<i
               "regularizer targets": conditional_samples(raw_obs, actors_now), "actors": actors_now}
    for source, actions in sources.items():
        heading, _, weak = headings(raw_obs, actions)
        result["first step"][source] = classify(heading, weak)
    # completion: each agent sampled given the data's own actions of its predecessors; where the data's
    # heading of that agent is clear, does the sample head for the same landmark? (~100% for a model that
    # learned the conditionals: given agents 0 and 1, agent 2's landmark is the one left)
    data_heading, data_ambiguous, _ = headings(raw_obs, data.actions[rows])
    completed = conditional_samples(raw_obs, data.actions[rows])
    heading, _, weak = headings(raw_obs, completed)
    result["completion"] = {f"agent {agent}": float(np.mean((heading == data_heading)[~data_ambiguous[:, agent], agent]))
                            for agent in range(n_agents)}
    result["completion"]["weak"] = float(weak.mean())
    result["rollouts"]["actors"] = rollouts(actor_act, meta, episodes)
    if behavior_rollouts:
        result["rollouts"]["behavior model"] = rollouts(behavior_act, meta, episodes)
    return result


def format_result(name: str, result: dict) -> str:
    keys = list(result["first step"]["data"])
    lines = [f"{name}: spread {result['tier']}, {result['decomposition']}, final normalized score "
             f"{result['final_normalized_score']:.1f}",
             f"| joint heading at step {result['step']} ({result['first-step states']} decisive dataset states) | "
             + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for source, shares in result["first step"].items():
        lines.append(f"| {source} | " + " | ".join(f"{100 * shares[k]:.1f}%" for k in keys) + " |")
    lines += ["", "| behavior model given the data's predecessor actions | " + " | ".join(result["completion"]) + " |",
              "|---|" + "---|" * len(result["completion"]),
              "| same landmark as the data / weak samples | " + " | ".join(f"{100 * v:.1f}%" for v in result["completion"].values()) + " |"]
    lines += ["", "| rolled out | episodes with a landmark bare | normalized score | heading switches per agent |",
              "|---|---|---|---|"]
    for source, row in result["rollouts"].items():
        lines.append(f"| {source} | {100 * row['bare landmark']:.1f}% | {100 * row['normalized score']:.1f} | "
                     f"{row['switches per agent']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="osd_mpe.py checkpoints (.pt) of spread runs")
    parser.add_argument("--states", type=int, default=500, help="first-step dataset states to look at")
    parser.add_argument("--episodes", type=int, default=100, help="rollout episodes per checkpoint (seeds 20,000+)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the states and the behavior samples")
    parser.add_argument("--no-behavior-rollouts", action="store_true", help="roll out the actors only (faster)")
    parser.add_argument("--step", type=int, default=0, help="look at this step of the data's episodes (0: the first)")
    args = parser.parse_args(argv)
    if args.states < 1 or args.episodes < 1:
        parser.error("--states and --episodes must be at least 1")
    if not 0 <= args.step < 25:
        parser.error("--step must be in 0..24 (a spread episode has 25 steps)")
    torch.set_num_threads(1)
    for path in args.checkpoint:
        print(format_result(pathlib.Path(path).name, measure(path, args.states, args.episodes, args.seed, not args.no_behavior_rollouts, args.step)) + "\n")


if __name__ == "__main__":
    main()
