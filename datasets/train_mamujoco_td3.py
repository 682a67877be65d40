"""Train the behavior policy of a MaMuJoCo split (default `mamujoco/HalfCheetah-2x3`) online with TD3, for
the offline datasets.

    python datasets/train_mamujoco_td3.py --overwrite           # redo the reference run in place (datasets/MAMUJOCO.md)
    python datasets/train_mamujoco_td3.py --total-timesteps 5000 --learning-starts 1000 --policy-dir /tmp/td3_smoke \
        --replay-out /tmp/td3_smoke/replay.npz                      # a smoke test
    python datasets/train_mamujoco_td3.py --total-timesteps 100000 --policy-dir /tmp/td3_rerun   # remake only
                                                                # the medium-replay cache (about 13 min)
    python datasets/train_mamujoco_td3.py --task mamujoco/Hopper-3x1 --total-timesteps N   # another split

The run is deterministic on CPU: the first 100k steps of a HalfCheetah rerun are those of the reference run
(the 100k checkpoint of a 100k-step rerun is bit-identical to the committed one), so a 100k-step run remakes
the replay cache that HalfCheetah's `medium-replay` tier needs (any split: a run as long as the step of its
medium checkpoint). The script
stops rather than overwrite an existing run's `training_log.json` or replay cache unless given `--overwrite`.

Why TD3 on the JOINT action, not MATD3 (one actor per agent): a behavior policy only has to produce good,
diverse data; it need not be decentralized. A MaMuJoCo split is one body whose parts must be coordinated
at every step (HalfCheetah's two legs, Hopper's three joints), so one actor that reads the whole team's
observation and outputs every agent's action (HalfCheetah 2x3: 6 numbers) with one twin critic is simpler
(one network pair, no per-agent bookkeeping) and learns faster and stronger than decentralized actors that
each see part of the body. The data it produces is still multi-agent data: every transition records each
agent's own observation and action, which is all the offline learners use.

Episode ends: HalfCheetah never terminates (every episode ends in the 1000-step timeout); Hopper, Walker2d
and Ant terminate when they fall (the env's "unhealthy" check), a random team within tens to hundreds of steps. A fall is
stored as a terminal (terminals = 1, no bootstrap in the TD target), the time limit as a timeout (timeouts
= 1, the target bootstraps: the episode was cut, not finished); evaluation episodes stop at the fall too.
Nothing else is task-specific: every split runs with the same settings (10k uniform random steps first,
exploration noise 0.1), those of the HalfCheetah reference run. Hopper's reward includes an alive bonus of 1 per step,
which a fall forfeits, so its returns grow with how long the body stays up.

What it writes (the defaults follow `--task`: `<split>` is the task's "<Scenario>-<conf>", e.g. Hopper-3x1):
* `--policy-dir` (default `datasets/policies/<split, lower case>/`, e.g. `halfcheetah-2x3/`, committed): the
  actor's `state_dict` every `--eval-every` env steps (`actor_step{N:07d}.pt`, about 0.3 MB each), and
  `training_log.json` (env step -> deterministic evaluation return, the run's settings and wall time).
* `--replay-out` (default `datasets/cache/mamujoco/<split>/td3_replay.npz`, git-ignored): every
  transition the learner collected, in order (exploration noise included): per-agent observations,
  actions, rewards, next observations, states, next states, terminals and timeouts. The `medium-replay`
  tier is its prefix up to the step of the medium checkpoint (datasets/mamujoco_data.py).

The actor's input is the concatenation of the agents' observations (HalfCheetah 2x3 with agent_obsk=0:
11 + 11 numbers, which together contain all 17 numbers of the global state); no normalization is used.
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


@dataclasses.dataclass
class Args:
    exp_name: str = "td3_joint"
    """the name of this experiment (recorded in training_log.json)"""
    task: str = "mamujoco/HalfCheetah-2x3"
    """the MaMuJoCo split (osd_common.make_env name, e.g. mamujoco/Hopper-3x1); it sets the defaults of --policy-dir
    and --replay-out"""
    seed: int = 1
    """seed of the experiment (torch, numpy, random, env resets)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True` and deterministic algorithms"""
    threads: int = 1
    """torch CPU threads (1 on a shared machine)"""
    total_timesteps: int = 400_000
    """total env steps of training"""
    learning_rate: float = 3e-4
    """the learning rate of both optimizers (Adam)"""
    hidden: int = 256
    """width of the two hidden layers of the actor and of each critic"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """target smoothing coefficient (Polyak)"""
    batch_size: int = 256
    """the minibatch size of each update"""
    policy_noise: float = 0.2
    """std of the target policy smoothing noise"""
    noise_clip: float = 0.5
    """clip of the target policy smoothing noise"""
    exploration_noise: float = 0.1
    """std of the Gaussian exploration noise added to the actor's actions while collecting"""
    learning_starts: int = 10_000
    """env steps of uniform random actions before learning starts"""
    policy_frequency: int = 2
    """the actor and the targets are updated once every this many critic updates (delayed updates)"""
    eval_every: int = 25_000
    """env steps between deterministic evaluations (and checkpoints)"""
    eval_episodes: int = 5
    """episodes per evaluation (up to 1000 steps each, shorter when the body falls; reset seeds 1_000_000 + k,
    distinct from data seeds)"""
    policy_dir: str | None = None
    """where the actor checkpoints and training_log.json go (None: the task's, datasets/policies/<split, lower
    case>, e.g. datasets/policies/hopper-3x1)"""
    replay_out: str | None = None
    """where the ordered replay transitions go (None: the task's, datasets/cache/<task>/td3_replay.npz; empty
    string: do not save them)"""
    progress: bool = True
    """show a tqdm progress bar"""
    overwrite: bool = False
    """replace an existing run: its training_log.json and checkpoints in --policy-dir and the --replay-out
    file (without it the script stops rather than overwrite them)"""


def check_mamujoco_task(task: str) -> str:
    """`task` if it names a MaMuJoCo split, else a clean stop saying what to pass."""
    try:
        osd_common.check_task(task)
    except osd_common.TaskError as error:
        raise SystemExit(f"--task {task}: {error}") from None
    if not task.startswith("mamujoco/"):
        raise SystemExit(f"--task {task}: this trainer is for MaMuJoCo splits, e.g. mamujoco/HalfCheetah-2x3")
    return task


def default_policy_dir(task: str) -> pathlib.Path:
    """Where the behavior policies of a MaMuJoCo `task` are committed: datasets/policies/<split, lower case>,
    e.g. mamujoco/Hopper-3x1 -> datasets/policies/hopper-3x1."""
    return HERE / "policies" / check_mamujoco_task(task).split("/", 1)[1].lower()


def default_replay_file(task: str) -> pathlib.Path:
    """Where the training run caches its replay buffer (git-ignored): datasets/cache/<task>/td3_replay.npz."""
    return osd_common.DATASET_CACHE / check_mamujoco_task(task) / "td3_replay.npz"


def resolve_paths(args: Args) -> Args:
    """`args` with --policy-dir and --replay-out left at None filled in from --task."""
    return dataclasses.replace(
        args, policy_dir=str(default_policy_dir(args.task)) if args.policy_dir is None else args.policy_dir,
        replay_out=str(default_replay_file(args.task)) if args.replay_out is None else args.replay_out)


class Actor(nn.Module):
    """Joint deterministic policy: team observation (all agents' obs, concatenated) -> all agents'
    actions in [-1, 1] (tanh), concatenated in agent order."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, act_dim), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class QNetwork(nn.Module):
    """Q(team observation, joint action)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim + act_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)


def load_actor(path, hidden: int | None = None) -> Actor:
    """Rebuild an actor from a checkpoint written by this script."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    actor = Actor(int(checkpoint["obs_dim"]), int(checkpoint["act_dim"]), hidden or int(checkpoint["hidden"]))
    actor.load_state_dict(checkpoint["actor"])
    actor.task = checkpoint.get("task")  # the task it was trained on (datasets/mamujoco_data.py checks it)
    return actor.eval()


def td_target(reward: torch.Tensor, terminal: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """The critics' TD target r + gamma (1 - terminal) Q'(s', a'): a terminal (a fall) ends the return there; a
    timeout is not a terminal and bootstraps, since the episode was cut, not finished."""
    return reward + gamma * (1.0 - terminal) * next_q


def split_actions(joint: np.ndarray, act_dims: list[int]) -> list[np.ndarray]:
    """[sum(act_dims)] -> one float32 action per agent."""
    return [a.astype(np.float32) for a in np.split(joint, np.cumsum(act_dims)[:-1])]


@torch.no_grad()
def evaluate_actor(actor: Actor, task: str, episodes: int, seed_offset: int = 1_000_000) -> list[float]:
    """Deterministic (noise-free) returns of `actor` on episodes reset with seeds seed_offset + k."""
    env = osd_common.make_env(task)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed_offset + k)
        total, done = 0.0, False
        while not done:
            joint = actor(torch.as_tensor(np.concatenate(obs))[None])[0].numpy()
            obs, _, reward, terminated, truncated = env.step(split_actions(joint, env.act_dims))
            total += reward
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def main(args: Args) -> None:
    args = resolve_paths(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.torch_deterministic:
        torch.use_deterministic_algorithms(True)
    policy_dir = pathlib.Path(args.policy_dir)
    outputs = [policy_dir / "training_log.json"] + ([pathlib.Path(args.replay_out)] if args.replay_out else [])
    existing = [path for path in outputs if path.exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"{', '.join(map(str, existing))}: already there, and this run would overwrite it. Give "
                         "--policy-dir (and --replay-out) somewhere else, e.g. --policy-dir /tmp/td3_rerun to remake "
                         "only the medium-replay cache, or pass --overwrite to replace them.")
    policy_dir.mkdir(parents=True, exist_ok=True)

    env = osd_common.make_env(args.task)
    obs_dim, act_dim = sum(env.obs_dims), sum(env.act_dims)
    actor = Actor(obs_dim, act_dim, args.hidden)
    qf1, qf2 = QNetwork(obs_dim, act_dim, args.hidden), QNetwork(obs_dim, act_dim, args.hidden)
    actor_target, qf1_target, qf2_target = copy.deepcopy(actor), copy.deepcopy(qf1), copy.deepcopy(qf2)
    q_optimizer = torch.optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.learning_rate)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.learning_rate)

    # The replay buffer holds every transition in collection order (it is also the medium-replay data).
    T = args.total_timesteps
    buf = {
        "observations": np.zeros((T, obs_dim), np.float32), "next_observations": np.zeros((T, obs_dim), np.float32),
        "actions": np.zeros((T, act_dim), np.float32), "rewards": np.zeros(T, np.float32),
        "states": np.zeros((T, env.state_dim), np.float32), "next_states": np.zeros((T, env.state_dim), np.float32),
        "terminals": np.zeros(T, np.float32), "timeouts": np.zeros(T, np.float32),
    }
    rng = np.random.default_rng(args.seed)
    log = {"args": dataclasses.asdict(args), "evaluations": [], "torch": torch.__version__}
    start = time.time()
    episode, episode_return, episode_returns = 0, 0.0, []
    obs, state = env.reset(seed=args.seed * 100_000 + episode)
    obs = np.concatenate(obs)
    for step in tqdm(range(T), disable=not args.progress, mininterval=5.0, desc="td3"):
        # --- act ---
        if step < args.learning_starts:
            action = rng.uniform(-1.0, 1.0, act_dim).astype(np.float32)
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs)[None])[0].numpy()
            action = np.clip(action + args.exploration_noise * rng.standard_normal(act_dim), -1, 1).astype(np.float32)
        next_obs, next_state, reward, terminated, truncated = env.step(split_actions(action, env.act_dims))
        next_obs = np.concatenate(next_obs)
        for key, value in (("observations", obs), ("next_observations", next_obs), ("actions", action),
                           ("rewards", reward), ("states", state), ("next_states", next_state),
                           ("terminals", float(terminated)), ("timeouts", float(truncated))):
            buf[key][step] = value
        episode_return += reward
        obs, state = next_obs, next_state
        # a fall ends the episode as a terminal, the 1000-step limit as a timeout (HalfCheetah never falls)
        if terminated or truncated:
            episode_returns.append(episode_return)
            episode, episode_return = episode + 1, 0.0
            obs, state = env.reset(seed=args.seed * 100_000 + episode)
            obs = np.concatenate(obs)

        # --- learn ---
        if step >= args.learning_starts:
            idx = rng.integers(0, step + 1, args.batch_size)
            b_obs, b_next = torch.as_tensor(buf["observations"][idx]), torch.as_tensor(buf["next_observations"][idx])
            b_act, b_rew = torch.as_tensor(buf["actions"][idx]), torch.as_tensor(buf["rewards"][idx])
            b_done = torch.as_tensor(buf["terminals"][idx])  # falls only: timeouts are not terminals
            with torch.no_grad():
                noise = (torch.randn_like(b_act) * args.policy_noise).clamp(-args.noise_clip, args.noise_clip)
                next_action = (actor_target(b_next) + noise).clamp(-1.0, 1.0)
                next_q = torch.min(qf1_target(b_next, next_action), qf2_target(b_next, next_action))
                target = td_target(b_rew, b_done, next_q, args.gamma)
            qf1_loss = F.mse_loss(qf1(b_obs, b_act), target)
            qf2_loss = F.mse_loss(qf2(b_obs, b_act), target)
            q_optimizer.zero_grad()
            (qf1_loss + qf2_loss).backward()
            q_optimizer.step()
            if step % args.policy_frequency == 0:
                actor_loss = -qf1(b_obs, actor(b_obs)).mean()
                actor_optimizer.zero_grad()
                actor_loss.backward()
                actor_optimizer.step()
                with torch.no_grad():
                    for net, target_net in ((actor, actor_target), (qf1, qf1_target), (qf2, qf2_target)):
                        for p, tp in zip(net.parameters(), target_net.parameters()):
                            tp.mul_(1.0 - args.tau).add_(args.tau * p)

        # --- evaluate and checkpoint ---
        if (step + 1) % args.eval_every == 0 or step + 1 == T:
            returns = evaluate_actor(actor, args.task, args.eval_episodes)
            name = f"actor_step{step + 1:07d}.pt"
            torch.save({"actor": actor.state_dict(), "obs_dim": obs_dim, "act_dim": act_dim, "hidden": args.hidden,
                        "task": args.task, "step": step + 1, "eval_return_mean": float(np.mean(returns))},
                       policy_dir / name)
            entry = {"step": step + 1, "eval_return_mean": float(np.mean(returns)),
                     "eval_return_std": float(np.std(returns)), "eval_returns": [float(r) for r in returns],
                     "train_episode_return_last5": float(np.mean(episode_returns[-5:])) if episode_returns else None,
                     "wall_s": round(time.time() - start, 1), "checkpoint": name}
            log["evaluations"].append(entry)
            log["wall_s"] = entry["wall_s"]
            (policy_dir / "training_log.json").write_text(json.dumps(log, indent=1) + "\n")
            tqdm.write(f"step {step + 1}: eval return {entry['eval_return_mean']:.1f} ± {entry['eval_return_std']:.1f}"
                       f", {entry['wall_s']:.0f} s, {(step + 1) / (time.time() - start):.0f} steps/s")
            # the buffer so far, saved each time so a run cut short still leaves its medium-replay data
            if args.replay_out:
                out = pathlib.Path(args.replay_out)
                out.parent.mkdir(parents=True, exist_ok=True)
                tmp = out.with_name(out.stem + ".partial.npz")
                np.savez(tmp, obs_dims=np.array(env.obs_dims), act_dims=np.array(env.act_dims),
                         seed=np.array(args.seed), **{k: v[: step + 1] for k, v in buf.items()})
                tmp.replace(out)
    env.close()


if __name__ == "__main__":
    main(tyro.cli(Args))
