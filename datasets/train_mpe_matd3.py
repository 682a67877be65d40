"""Train a team online with MATD3 on an MPE task, for the learned `medium` / `medium-replay` tiers.

    python datasets/train_mpe_matd3.py --task mpe/simple_spread            # the committed run, which was stopped
                                                                           # after 40k steps (datasets/README.md)
    python datasets/train_mpe_matd3.py --total-timesteps 2000 --learning-starts 500 --policy-dir /tmp/matd3_smoke \
        --replay-out /tmp/matd3_smoke/replay.npz                             # a smoke test
    python datasets/train_mpe_matd3.py --task mpe/simple_spread --total-timesteps 40000 \
        --policy-dir /tmp/matd3_rerun                                        # remake only the replay cache

MATD3 (TD3 for several agents): one deterministic actor per agent that reads only that agent's own
observation (execution stays decentralized), and one centralized twin critic Q(state, joint action) on
the team reward, with clipped double Q, target policy smoothing and delayed actor and target updates.
Agent i's actor is improved through Q1 with its own action from its actor and the other agents' actions
from the buffer (as MADDPG and MATD3 do). The env is osd_common.make_env: the same observations,
25-step episodes, team reward and fixed scripted opponents (tag's prey, world's good agents) as every
dataset and evaluation here.

The run is deterministic on CPU with one torch thread: the same seed and settings give the same
checkpoints and the same buffer, bit for bit, and the first S steps of a longer run are those of an
S-step run. That is why the replay buffer is not committed (it is about 0.5 kB a step): it goes to a
git-ignored cache file, and rerunning the same command with `--total-timesteps S` remakes its first S
steps (tests/test_train_mpe_matd3.py checks the determinism on a short run).

What it writes:
* `--policy-dir` (default `datasets/policies/<scenario>-matd3/`, committed): the actors' state_dicts
  every `--eval-every` env steps (`actor_step{N:07d}.pt`, 75 kB each on spread), and `training_log.json`
  (the settings, and per evaluation: env step, noise-free return mean/std and normalized score over
  `--eval-episodes` episodes, wall time).
* `--replay-out` (default `datasets/cache/<task>/matd3_replay.npz`, git-ignored): every transition in
  collection order, per-agent observations and actions concatenated, plus `noise_std` per step (the
  exploration noise it was collected with; -1 for the uniform random warm-up steps).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from tqdm import tqdm

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import osd_common  # noqa: E402

# Reset seeds of training episodes (seed * TRAIN_RESET_STRIDE + episode) and of the noise-free evaluations
# (EVAL_RESET_SEED + k): both apart from the data seeds (10_000_000 + ...) and the offline learners'
# evaluation seeds (small numbers).
TRAIN_RESET_STRIDE = 1_000_000
EVAL_RESET_SEED = 5_000_000


def default_policy_dir(task: str) -> pathlib.Path:
    return HERE / "policies" / f"{task.split('/', 1)[1].replace('_', '-')}-matd3"


def default_replay_out(task: str) -> pathlib.Path:
    return osd_common.DATASET_CACHE / task / "matd3_replay.npz"


@dataclasses.dataclass
class Args:
    task: str = "mpe/simple_spread"
    """the MPE task: mpe/simple_spread, mpe/simple_tag or mpe/simple_world_comm (their scripted opponents
    act inside the env)"""
    seed: int = 1
    """seed of the run (torch, numpy, env resets): the same seed gives the same run on CPU"""
    threads: int = 1
    """torch CPU threads (1 on a shared machine; the run is deterministic with 1)"""
    total_timesteps: int = 120_000
    """total env steps of training"""
    learning_starts: int = 5_000
    """env steps of uniform random actions before learning starts"""
    actor_lr: float = 1e-3
    """learning rate of the actors (Adam)"""
    critic_lr: float = 1e-3
    """learning rate of the twin critic (Adam)"""
    actor_hidden: int = 64
    """width of the two hidden layers of each actor"""
    critic_hidden: int = 64
    """width of the two hidden layers of each critic"""
    gamma: float = 0.95
    """discount factor (0.95 as MADDPG's MPE runs: 25-step episodes)"""
    tau: float = 0.01
    """target smoothing coefficient (Polyak)"""
    batch_size: int = 128
    """minibatch size of each update"""
    train_frequency: int = 2
    """one critic update every this many env steps (2: twice the data for the CPU time of one update a step)"""
    policy_noise: float = 0.2
    """std of the target policy smoothing noise"""
    noise_clip: float = 0.5
    """clip of the target policy smoothing noise"""
    exploration_noise: float = 0.1
    """std of the Gaussian exploration noise on the actors' actions (in [-1, 1]) while collecting"""
    policy_frequency: int = 2
    """the actors and the targets are updated once every this many critic updates (delayed updates)"""
    eval_every: int = 5_000
    """env steps between noise-free evaluations and checkpoints"""
    eval_episodes: int = 20
    """episodes per evaluation (reset seeds 5_000_000 + k, apart from data and offline-evaluation seeds)"""
    policy_dir: str | None = None
    """where the actor checkpoints and training_log.json go (default datasets/policies/<scenario>-matd3/)"""
    replay_out: str | None = None
    """where the ordered replay transitions go (default datasets/cache/<task>/matd3_replay.npz; '' = none)"""
    progress: bool = True
    """show a tqdm progress bar"""
    overwrite: bool = False
    """replace an existing run's training_log.json, checkpoints and --replay-out file (without it the script
    stops rather than overwrite them)"""


class Actor(nn.Module):
    """Agent i's deterministic policy: its own observation -> its action in [-1, 1] (tanh)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, act_dim), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class Critic(nn.Module):
    """Twin centralized critics: Q1, Q2(state, joint action) on the team reward."""

    def __init__(self, state_dim: int, joint_act_dim: int, hidden: int = 128):
        super().__init__()

        def q():
            return nn.Sequential(nn.Linear(state_dim + joint_act_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

        self.q1, self.q2 = q(), q()

    def forward(self, state: torch.Tensor, joint_action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([state, joint_action], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class Team:
    """The agents' actors, with the per-agent slices of the concatenated observation and action."""

    def __init__(self, obs_dims: list[int], act_dims: list[int], hidden: int):
        self.obs_dims, self.act_dims = list(obs_dims), list(act_dims)
        self.obs_cuts = np.concatenate([[0], np.cumsum(obs_dims)]).tolist()
        self.act_cuts = np.concatenate([[0], np.cumsum(act_dims)]).tolist()
        self.actors = nn.ModuleList(Actor(o, a, hidden) for o, a in zip(obs_dims, act_dims))

    def own_obs(self, joint_obs: torch.Tensor, i: int) -> torch.Tensor:
        return joint_obs[..., self.obs_cuts[i]: self.obs_cuts[i + 1]]

    def act(self, joint_obs: torch.Tensor) -> torch.Tensor:
        """Every agent's action from its own observation, concatenated: [..., sum(act_dims)]."""
        return torch.cat([actor(self.own_obs(joint_obs, i)) for i, actor in enumerate(self.actors)], -1)


def save_checkpoint(path: pathlib.Path, team: Team, task: str, step: int, hidden: int, evaluation: dict) -> None:
    torch.save({"actors": [actor.state_dict() for actor in team.actors], "obs_dims": team.obs_dims,
                "act_dims": team.act_dims, "hidden": hidden, "task": task, "step": step,
                "normalized_score": evaluation["normalized_score"]}, path)


def load_team(path) -> Team:
    """Rebuild the actors of a checkpoint written by this script (eval mode, CPU)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    team = Team(checkpoint["obs_dims"], checkpoint["act_dims"], int(checkpoint["hidden"]))
    for actor, state in zip(team.actors, checkpoint["actors"]):
        actor.load_state_dict(state)
    team.actors.eval()
    return team


def team_act_fn(team: Team):
    """osd_common.evaluate's act_fn: agent i's action from its own observation only."""

    @torch.no_grad()
    def act(obs: list[np.ndarray]) -> list[np.ndarray]:
        return [actor(torch.as_tensor(o, dtype=torch.float32)[None])[0].numpy()
                for actor, o in zip(team.actors, obs)]

    return act


def check_outputs(args: Args) -> tuple[pathlib.Path, pathlib.Path | None]:
    """The output paths; stops, naming them and the flags, if this run would overwrite an earlier one."""
    policy_dir = pathlib.Path(args.policy_dir) if args.policy_dir else default_policy_dir(args.task)
    replay_out = (None if args.replay_out == "" else
                  pathlib.Path(args.replay_out) if args.replay_out else default_replay_out(args.task))
    outputs = [policy_dir / "training_log.json", *sorted(policy_dir.glob("actor_step*.pt"))]
    outputs += [replay_out] if replay_out is not None else []
    existing = [path for path in outputs if path.exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"{existing[0]}" + (f" (and {len(existing) - 1} more)" if len(existing) > 1 else "")
                         + ": already there, and this run would overwrite it. Give --policy-dir (and --replay-out) "
                         "somewhere else, or pass --overwrite to replace them.")
    if args.overwrite:
        for path in existing:
            path.unlink()
    return policy_dir, replay_out


def main(args: Args) -> None:
    osd_common.check_task(args.task)
    if not args.task.startswith("mpe/"):
        raise SystemExit(f"--task {args.task}: this trainer is for the MPE tasks {', '.join(osd_common.MPE_TASKS)}")
    policy_dir, replay_out = check_outputs(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    policy_dir.mkdir(parents=True, exist_ok=True)
    ref_random, ref_expert = osd_common.reference_returns(args.task)

    env = osd_common.make_env(args.task)
    obs_dim, act_dim, n = sum(env.obs_dims), sum(env.act_dims), env.n_agents
    team = Team(env.obs_dims, env.act_dims, args.actor_hidden)
    critic = Critic(env.state_dim, act_dim, args.critic_hidden)
    team_target, critic_target = copy.deepcopy(team), copy.deepcopy(critic)
    actor_optimizer = torch.optim.Adam(team.actors.parameters(), lr=args.actor_lr)
    critic_optimizer = torch.optim.Adam(critic.parameters(), lr=args.critic_lr)

    # The buffer holds every transition in collection order (also the medium-replay data). In MPE the
    # state is the concatenation of the observations, so it is not stored twice.
    T = args.total_timesteps
    buf = {"observations": np.zeros((T, obs_dim), np.float32), "next_observations": np.zeros((T, obs_dim), np.float32),
           "actions": np.zeros((T, act_dim), np.float32), "rewards": np.zeros(T, np.float32),
           "terminals": np.zeros(T, np.float32), "timeouts": np.zeros(T, np.float32),
           "noise_std": np.zeros(T, np.float32)}
    rng = np.random.default_rng(args.seed)
    log = {"args": dataclasses.asdict(args), "task": args.task, "ref_random": ref_random, "ref_expert": ref_expert,
           "torch": torch.__version__, "evaluations": []}
    start = time.time()
    episode, episode_return, episode_returns, updates = 0, 0.0, [], 0
    obs, _ = env.reset(seed=args.seed * TRAIN_RESET_STRIDE + episode)
    obs = np.concatenate(obs)
    bar = tqdm(range(T), disable=not args.progress, mininterval=5.0, desc=f"matd3 {args.task}")
    for step in bar:
        # --- act: uniform random during the warm-up, then each actor on its own observation plus noise ---
        if step < args.learning_starts:
            action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
            noise_std = -1.0
        else:
            with torch.no_grad():
                action = team.act(torch.as_tensor(obs)[None])[0].numpy()
            action = np.clip(action + args.exploration_noise * rng.standard_normal(act_dim), -1, 1).astype(np.float32)
            noise_std = args.exploration_noise
        next_obs, _, reward, terminated, truncated = env.step(np.split(action, team.act_cuts[1:-1]))
        next_obs = np.concatenate(next_obs)
        for key, value in (("observations", obs), ("next_observations", next_obs), ("actions", action),
                           ("rewards", reward), ("terminals", float(terminated)), ("timeouts", float(truncated)),
                           ("noise_std", noise_std)):
            buf[key][step] = value
        episode_return += reward
        obs = next_obs
        if terminated or truncated:  # MPE: the 25-step time limit ends every episode
            episode_returns.append(episode_return)
            episode, episode_return = episode + 1, 0.0
            obs, _ = env.reset(seed=args.seed * TRAIN_RESET_STRIDE + episode)
            obs = np.concatenate(obs)

        # --- learn: one critic update every train_frequency env steps, the actors every policy_frequency-th ---
        if step >= args.learning_starts and step % args.train_frequency == 0:
            updates += 1
            idx = rng.integers(0, step + 1, args.batch_size)
            b_obs, b_next = torch.as_tensor(buf["observations"][idx]), torch.as_tensor(buf["next_observations"][idx])
            b_act, b_rew = torch.as_tensor(buf["actions"][idx]), torch.as_tensor(buf["rewards"][idx])
            b_done = torch.as_tensor(buf["terminals"][idx])  # timeouts bootstrap: they are not terminals
            with torch.no_grad():
                noise = (torch.randn_like(b_act) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
                next_action = (team_target.act(b_next) + noise).clamp(-1.0, 1.0)
                target = b_rew + args.gamma * (1.0 - b_done) * torch.min(*critic_target(b_next, next_action))
            q1, q2 = critic(b_obs, b_act)
            critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
            critic_optimizer.zero_grad()
            critic_loss.backward()
            critic_optimizer.step()
            if updates % args.policy_frequency == 0:
                # agent i: its own action from its actor, the others' from the buffer; the n copies of the
                # batch go through Q1 in one pass
                policy_actions = team.act(b_obs)
                joint = b_act.repeat(n, 1)
                for i in range(n):
                    lo, hi = team.act_cuts[i], team.act_cuts[i + 1]
                    joint[i * len(idx):(i + 1) * len(idx), lo:hi] = policy_actions[:, lo:hi]
                actor_loss = -critic(b_obs.repeat(n, 1), joint)[0].mean() * n
                actor_optimizer.zero_grad()
                actor_loss.backward()
                actor_optimizer.step()
                with torch.no_grad():
                    for net, target_net in ((team.actors, team_target.actors), (critic, critic_target)):
                        target_params = list(target_net.parameters())
                        torch._foreach_mul_(target_params, 1.0 - args.tau)
                        torch._foreach_add_(target_params, list(net.parameters()), alpha=args.tau)

        # --- evaluate noise-free and checkpoint ---
        if (step + 1) % args.eval_every == 0 or step + 1 == T:
            result = osd_common.evaluate(team_act_fn(team), args.task, args.eval_episodes, EVAL_RESET_SEED,
                                         ref_random, ref_expert)
            name = f"actor_step{step + 1:07d}.pt"
            save_checkpoint(policy_dir / name, team, args.task, step + 1, args.actor_hidden, result)
            entry = {"step": step + 1, "eval_return_mean": result["return_mean"], "eval_return_std": result["return_std"],
                     "normalized_score": result["normalized_score"],
                     "train_episode_return_last100": float(np.mean(episode_returns[-100:])) if episode_returns else None,
                     "updates": updates, "wall_s": round(time.time() - start, 1), "checkpoint": name}
            log["evaluations"].append(entry)
            log["wall_s"] = entry["wall_s"]
            (policy_dir / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
            tqdm.write(f"step {step + 1}: noise-free normalized score {entry['normalized_score']:.1f} "
                       f"(return {entry['eval_return_mean']:.2f} ± {entry['eval_return_std']:.2f}), "
                       f"{entry['wall_s']:.0f} s, {(step + 1) / (time.time() - start):.0f} steps/s")
            sys.stdout.flush()  # the line reaches a log file as it happens (nohup ... > log)
            # the buffer so far, saved each time so that a run cut short still leaves its replay data
            if replay_out is not None:
                replay_out.parent.mkdir(parents=True, exist_ok=True)
                tmp = replay_out.with_name(replay_out.stem + ".partial.npz")
                np.savez(tmp, obs_dims=np.array(env.obs_dims), act_dims=np.array(env.act_dims),
                         seed=np.array(args.seed), **{k: v[: step + 1] for k, v in buf.items()})
                tmp.replace(replay_out)
    env.close()


if __name__ == "__main__":
    main(tyro.cli(Args))
