"""MATD3+BC for cooperative multi-agent offline RL, in one file: TD3+BC (Fujimoto & Gu, 2021) with
decentralized actors and a centralized critic.

* Actors: agent i has a deterministic tanh MLP a_i = pi_i(o_i) on its own standardized observation.
* Critics: twin Q_1, Q_2 (s, a_1..a_N) on the standardized global state and the joint action, trained by
  TD with TD3's clipped double-Q target and target policy smoothing:
      y = r + gamma (1 - terminal) min_k Q'_k(s', clip(pi'(o') + clip(N(0, policy_noise^2), +-noise_clip), -1, 1)).
  Timeouts bootstrap; only true terminals cut the return.
* Actors update every `policy_freq` critic steps (TD3's delayed updates), together with the Polyak
  averaging of every target network, with TD3+BC's loss
      L = -lambda mean_b Q_1(s, a_1..a_N) + sum_i mean_b ||pi_i(o_i) - a_i||^2,   lambda = alpha / mean_b |Q_1|
  (lambda is detached). With `--others policy` (default) every slot of the joint action is filled by the
  current actors, as OMSD's actors see it; `--others dataset` fills the other agents' slots with their
  dataset actions (MADDPG style), so agent i's Q term is Q_1(s, a_-i, pi_i(o_i)).
  Deviation from single-agent TD3+BC, where the BC term is F.mse_loss (a mean over action dimensions):
  the BC term here is a squared norm summed over agent i's action dimensions, as in the per-agent
  formula above. It makes the behavior term act_dim times stronger at the same alpha.

Run:
    python baselines/matd3_bc.py --seed 1                                  # mpe/simple_spread, tier mixed
    python baselines/matd3_bc.py --task mpe/simple_tag --tier medium --seed 1
    python baselines/matd3_bc.py --task mamujoco/HalfCheetah-2x3 --tier medium
    python baselines/matd3_bc.py --eval-only --checkpoint checkpoints/<run>.pt --capture-video
    tensorboard --logdir runs

Default budget (`--preset default`): 50,000 critic steps (25,000 actor steps) at batch 256, evaluating
10 episodes every 5,000 steps; `--preset corl` is CORL's TD3+BC budget (1,000,000 steps, evaluation
every 5,000). Logs, checkpoint layout, `--eval-only` and the `--record` JSON match osd_mpe.py.
"""

from __future__ import annotations

import copy
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # osd_common lives in the repo root
import osd_common  # noqa: E402

ALGORITHM = "matd3-bc"
PROGRAM = "matd3_bc"

# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------


@dataclass
class Args:
    exp_name: str = "matd3_bc"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment: torch, numpy, random and the batch sampler"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where to train: `auto` picks cuda when available"""
    torch_threads: int = 0
    """CPU threads for torch (0 keeps torch's default); use 1 when sharing the machine"""

    # data
    task: str = "mpe/simple_spread"
    """the task: mpe/simple_spread, mpe/simple_tag, mpe/simple_world_comm or mamujoco/HalfCheetah-2x3; an MPE team
    size as mpe/simple_spread-N4 (4 agents, 4 landmarks) or mpe/simple_tag-N4 (4 predators)"""
    tier: str = "mixed"
    """the dataset tier: expert, medium, medium-replay, random, mixed, balanced, mixed-balanced, expert-noisy, expert-noisy-replay or mixed-expert-noisy (MPE), or a MaMuJoCo tier"""
    dataset: str | None = None
    """path to a dataset .npz; overrides --task/--tier (the task is read from the dataset)"""
    build_dataset: bool = False
    """build the named dataset if it is not on disk yet (slow: rolls out the behavior policies)"""

    # budgets: None means "take it from --preset"
    preset: Literal["default", "corl"] = "default"
    """budget preset: default (minutes on 2 CPU cores) or corl (CORL's TD3+BC budget, 1M steps)"""
    total_steps: int | None = None
    """critic steps; the actors update every policy_freq of them (default preset 50_000, corl 1_000_000)"""
    eval_every: int | None = None
    """evaluate every this many critic steps (both presets 5_000)"""
    eval_episodes: int | None = None
    """episodes per evaluation (both presets 10)"""
    final_eval_episodes: int | None = None
    """episodes of the last evaluation, the run's recorded final score, and of --eval-only (default:
    osd_common.default_final_eval_episodes, 100 on MPE, 20 on MaMuJoCo)"""
    batch_size: int | None = None
    """batch size of the critic and the actor updates (both presets 256)"""

    # networks and optimizers
    hidden_dim: int = 256
    """width of the critics' and actors' 2-layer MLPs"""
    actor_lr: float = 3e-4
    """Adam learning rate of the actors"""
    critic_lr: float = 3e-4
    """Adam learning rate of the twin critics"""

    # TD3+BC (CORL's defaults)
    gamma: float = 0.99
    """discount factor"""
    tau: float = 0.005
    """Polyak rate of the target critics and target actors"""
    policy_noise: float = 0.2
    """std of the target policy smoothing noise (actions live in [-1, 1])"""
    noise_clip: float = 0.5
    """the smoothing noise is clipped to [-noise_clip, noise_clip]"""
    policy_freq: int = 2
    """update the actors and all targets every this many critic steps"""
    alpha: float = 2.5
    """TD3+BC's alpha: lambda = alpha / mean|Q| weighs the Q term against the BC term"""
    others: Literal["policy", "dataset"] = "policy"
    """the other agents' slots of the joint action in agent i's Q term: the current actors (policy) or the
    dataset actions (dataset, MADDPG style)"""

    # logging, checkpoints, evaluation
    log_every: int = 500
    """log losses every this many steps"""
    save_model: bool = True
    """save a checkpoint at the end of training"""
    checkpoint_dir: str = "checkpoints"
    """where checkpoints go (<dir>/<run_name>.pt)"""
    eval_only: bool = False
    """skip training: load --checkpoint and evaluate it"""
    checkpoint: str | None = None
    """checkpoint to evaluate with --eval-only"""
    capture_video: bool = False
    """with --eval-only: save one rendered episode as videos/<run_name>.gif"""
    record: str | None = None
    """write the run record (JSON, osd_common.RECORD_SCHEMA) here at the end: benchmarks/grid.py reads it"""


PRESETS = {
    "default": dict(total_steps=50_000, eval_every=5_000, eval_episodes=10, batch_size=256),
    "corl": dict(total_steps=1_000_000, eval_every=5_000, eval_episodes=10, batch_size=256),
}


# ---------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------


def mlp(in_dim: int, out_dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, out_dim))


class TwinQ(nn.Module):
    """Q_1, Q_2 (s, a_1..a_N): the global state and the flattened (zero-padded) joint action."""

    def __init__(self, state_dim: int, joint_act_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.q1 = mlp(state_dim + joint_act_dim, 1, hidden_dim)
        self.q2 = mlp(state_dim + joint_act_dim, 1, hidden_dim)

    def forward(self, state: torch.Tensor, joint_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([state, joint_actions.flatten(1)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)

    def first(self, state: torch.Tensor, joint_actions: torch.Tensor) -> torch.Tensor:
        """Q_1 only: TD3's actor is trained on the first twin."""
        return self.q1(torch.cat([state, joint_actions.flatten(1)], dim=-1)).squeeze(-1)


class Actor(nn.Module):
    """a_i = pi_i(o_i): a tanh MLP on the agent's own (normalized) observation."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.net = mlp(obs_dim, act_dim, hidden_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs[..., : self.obs_dim]))


def joint_action(actors: nn.ModuleList, observations: torch.Tensor, max_act_dim: int) -> torch.Tensor:
    """All actors on their own observations [B, N, O] -> zero-padded joint action [B, N, A]."""
    return torch.stack([F.pad(actor(observations[:, i]), (0, max_act_dim - actor.act_dim))
                        for i, actor in enumerate(actors)], dim=1)


def build_networks(meta: dict, args: Args, device) -> dict[str, nn.Module]:
    """Every network of the algorithm, sized from the dataset's meta; used by training and by --eval-only."""
    n_agents, obs_dims, act_dims, state_dim = meta["n_agents"], meta["obs_dims"], meta["act_dims"], meta["state_dim"]
    max_act_dim = max(act_dims)
    q_net = TwinQ(state_dim, n_agents * max_act_dim, args.hidden_dim)
    actors = nn.ModuleList([Actor(obs_dims[i], act_dims[i], args.hidden_dim) for i in range(n_agents)])
    nets = dict(q_net=q_net, q_target=copy.deepcopy(q_net), actors=actors, actor_targets=copy.deepcopy(actors))
    return {name: net.to(device) for name, net in nets.items()}


# ---------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------


def critic_loss(q_net: TwinQ, q_target: TwinQ, actor_targets: nn.ModuleList, state, joint_actions, reward,
                next_state, next_observations, terminal, act_mask, gamma: float, policy_noise: float,
                noise_clip: float) -> torch.Tensor:
    """TD3: both twins regress on r + gamma (1 - terminal) min_k Q'_k(s', smoothed pi'(o'))."""
    with torch.no_grad():
        noise = (torch.randn_like(joint_actions) * policy_noise).clamp(-noise_clip, noise_clip)
        next_actions = joint_action(actor_targets, next_observations, joint_actions.shape[-1])
        next_actions = (next_actions + noise).clamp(-1.0, 1.0) * act_mask  # padding stays exactly 0
        target = reward + gamma * (1.0 - terminal) * torch.min(*q_target(next_state, next_actions))
    q1, q2 = q_net(state, joint_actions)
    return F.mse_loss(q1, target) + F.mse_loss(q2, target)


def actor_loss(actors: nn.ModuleList, q_net: TwinQ, observations, state, joint_actions, act_mask, alpha: float,
               others: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TD3+BC with decentralized actors: -lambda Q_1 + sum_i ||pi_i(o_i) - a_i||^2 (see the docstring
    of this file). Each actor's gradient comes from its own slot of Q and its own BC term only."""
    policy_actions = joint_action(actors, observations, joint_actions.shape[-1])  # [B, N, A], with grad
    n_agents = policy_actions.shape[1]
    if others == "policy":  # one Q_1(s, pi_1(o_1)..pi_N(o_N)) serves every agent
        q_values = q_net.first(state, policy_actions)[None]  # [1, B]
    elif others == "dataset":  # agent i's own term: Q_1(s, a_-i from the data, pi_i(o_i))
        slot = torch.eye(n_agents, device=state.device)[:, None, :, None]  # [N(i), 1, N(j), 1]
        mixed = slot * policy_actions[None] + (1.0 - slot) * joint_actions[None]  # [N, B, N, A]
        q_values = q_net.first(state.repeat(n_agents, 1), mixed.flatten(0, 1)).view(n_agents, -1)  # [N, B]
    else:
        raise ValueError(f"unknown --others {others!r}; valid: policy, dataset")
    lmbda = alpha / q_values.abs().mean().detach().clamp(min=1e-6)
    bc_term = (((policy_actions - joint_actions) * act_mask) ** 2).sum(-1).mean(0).sum()
    q_term = -lmbda * q_values.mean(1).sum()
    q_value = q_values.mean()
    return q_term + bc_term, {"bc": bc_term.detach(), "q": q_term.detach(), "q_value": q_value.detach().mean(),
                              "lambda": lmbda.detach()}


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, every parameter in one multi-tensor op (fewer GPU launches)."""
    target_params, source_params = list(target.parameters()), list(source.parameters())
    torch._foreach_mul_(target_params, 1.0 - tau)
    torch._foreach_add_(target_params, source_params, alpha=tau)


# ---------------------------------------------------------------------------------------------------
# Main: data, training (critics every step, actors and targets every policy_freq), checkpoint, record
# ---------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    wall_start = time.time()
    args = osd_common.resolve_budgets(PROGRAM, tyro.cli(Args), PRESETS)
    device = osd_common.seed_and_device(PROGRAM, args)
    if args.eval_only:  # the checkpoint's actors, rebuilt with its own Args, evaluated with its own seed
        osd_common.run_eval_only(PROGRAM, args, device, Args, build_networks, algorithm=ALGORITHM)
        raise SystemExit(0)

    # dataset and normalizers
    if args.dataset is None:
        try:
            osd_common.check_task(args.task)
        except osd_common.TaskError as error:
            raise SystemExit(f"matd3_bc: {error}")
        if args.tier not in osd_common.TIERS:
            raise SystemExit(f"matd3_bc: --tier {args.tier!r} is not a tier; valid tiers: {', '.join(osd_common.TIERS)}")
        dataset_name = f"{args.task}/{args.tier}"
    else:
        dataset_name = args.dataset
    try:
        data = osd_common.load_dataset(dataset_name, build_if_missing=args.build_dataset)
    except osd_common.DatasetError as error:
        raise SystemExit(f"matd3_bc: {error}" + ("" if args.build_dataset else " (or pass --build-dataset)"))
    meta = data.meta
    args.task, args.tier = meta["task"], meta.get("tier", args.tier)
    if args.final_eval_episodes is None:
        args.final_eval_episodes = osd_common.default_final_eval_episodes(args.task)
    # the env follows the data (its agent_obsk); OMAR's MPE data trains without evaluation
    evaluable = osd_common.check_env_fits_data("matd3_bc", data, args.task, args.record is not None)
    run_name = f"{args.task.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # observations and states standardized once with dataset statistics (as CORL's TD3+BC)
    obs_normalizer = osd_common.Normalizer(data.observations.mean(0), data.observations.std(0))
    state_normalizer = osd_common.Normalizer(data.states.mean(0), data.states.std(0))
    observations = obs_normalizer(data.observations) * data.obs_mask  # padding stays exactly 0
    next_observations = obs_normalizer(data.next_observations) * data.obs_mask
    states, next_states = state_normalizer(data.states), state_normalizer(data.next_states)
    actions, rewards, terminals = data.actions, data.rewards, data.terminals
    act_mask = torch.as_tensor(data.act_mask, device=device)
    n_transitions = len(data)
    batch_rng = np.random.default_rng(args.seed)  # the batch sampler: seeded, independent of torch

    def to_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=device)

    # the whole dataset moves to the training device once: a batch is then a gather there, not a
    # host-to-device copy per step (on CPU these tensors share the numpy arrays' memory, and
    # index_select gathers faster than numpy's fancy indexing or torch's tensor[idx])
    observations, next_observations = to_tensor(observations), to_tensor(next_observations)
    states, next_states = to_tensor(states), to_tensor(next_states)
    actions, rewards, terminals = to_tensor(actions), to_tensor(rewards), to_tensor(terminals)

    nets = build_networks(meta, args, device)
    q_net, q_target, actors, actor_targets = (nets[k] for k in ("q_net", "q_target", "actors", "actor_targets"))
    for net in (q_target, actor_targets):
        net.requires_grad_(False)
    fused = {"fused": True} if device.type == "cuda" else {}  # on CUDA one kernel updates all parameters
    q_optimizer = torch.optim.Adam(q_net.parameters(), lr=args.critic_lr, **fused)
    actor_optimizer = torch.optim.Adam(actors.parameters(), lr=args.actor_lr, **fused)  # per parameter: one per actor

    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", osd_common.hyperparameter_table(args))
    print(f"matd3_bc: {run_name}; dataset {data.path} ({n_transitions} transitions); device {device}")

    # ---- training
    eval_seed = args.seed + 10_000  # evaluation episodes differ from any seed used in training
    eval_history: list[tuple[int, dict]] = []
    eval_time = 0.0
    losses: dict[str, torch.Tensor] = {}  # detached tensors, read (.item()) only when logged
    start_time = time.time()
    progress = tqdm(range(args.total_steps), desc="matd3_bc", smoothing=0.05)
    for step in progress:
        idx = torch.as_tensor(batch_rng.integers(0, n_transitions, size=args.batch_size), device=device)
        obs_b, state_b, action_b = (array.index_select(0, idx) for array in (observations, states, actions))
        reward_b, next_state_b, next_obs_b, terminal_b = (array.index_select(0, idx) for array in (
            rewards, next_states, next_observations, terminals))
        loss_q = critic_loss(q_net, q_target, actor_targets, state_b, action_b, reward_b, next_state_b, next_obs_b,
                             terminal_b, act_mask, args.gamma, args.policy_noise, args.noise_clip)
        q_optimizer.zero_grad()
        loss_q.backward()
        q_optimizer.step()
        losses["q"] = loss_q.detach()

        if (step + 1) % args.policy_freq == 0:  # TD3's delayed actor and target updates
            loss_pi, parts = actor_loss(actors, q_net, obs_b, state_b, action_b, act_mask, args.alpha, args.others)
            actor_optimizer.zero_grad()
            loss_pi.backward()
            actor_optimizer.step()
            polyak_update(q_target, q_net, args.tau)
            polyak_update(actor_targets, actors, args.tau)
            losses.update(actor=loss_pi.detach(), actor_bc=parts["bc"], actor_q=parts["q"])
            q_value, lmbda = parts["q_value"], parts["lambda"]

        if (step + 1) % args.log_every == 0 or step == args.total_steps - 1:  # the loop's only host syncs
            logged = {name: value.item() for name, value in losses.items()}
            osd_common.check_finite(PROGRAM, logged, step, fix="lower the learning rates (rewards of large scale make Q diverge)")
            sps = int((step + 1) / (time.time() - start_time))
            for name, value in logged.items():
                writer.add_scalar(f"losses/{name}", value, step)
            if "actor" in logged:
                writer.add_scalar("charts/q_value", q_value.item(), step)
                writer.add_scalar("charts/lambda", lmbda.item(), step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.set_postfix({**{k: f"{v:.3g}" for k, v in logged.items()}, "SPS": sps})
        if evaluable and ((step + 1) % args.eval_every == 0 or step == args.total_steps - 1):
            eval_start = time.time()
            # the last evaluation is the recorded final score: more episodes, so that evaluation noise
            # does not swamp the differences between seeds and algorithms
            episodes = args.final_eval_episodes if step == args.total_steps - 1 else args.eval_episodes
            result = osd_common.evaluate_actors(actors, obs_normalizer, device, episodes, eval_seed, meta)
            eval_time += time.time() - eval_start
            eval_history.append((step + 1, result))
            writer.add_scalar("charts/episodic_return", result["return_mean"], step)
            writer.add_scalar("charts/normalized_score", result["normalized_score"], step)
            tqdm.write(f"step {step + 1}: return {result['return_mean']:.2f} ± {result['return_std']:.2f}, "
                       f"normalized score {result['normalized_score']:.1f}")
    progress.close()
    train_time = time.time() - start_time - eval_time
    last_score = eval_history[-1][1]["normalized_score"] if eval_history else float("nan")
    best_score = max((r["normalized_score"] for _, r in eval_history), default=float("nan"))
    actor_updates = args.total_steps // args.policy_freq
    print(f"training done: {args.total_steps} critic + {actor_updates} actor steps in {train_time:.0f}s "
          f"(+{eval_time:.0f}s evaluating, SPS {args.total_steps / max(train_time, 1e-9):.0f}); "
          f"normalized score last {last_score:.1f}, best {best_score:.1f}")

    # ---- checkpoint: networks, normalizers, Args and dataset meta (the layout of osd_mpe.py)
    checkpoint_path = None
    if args.save_model:
        checkpoint_path = osd_common.save_checkpoint(args, run_name, nets, {"obs": obs_normalizer, "state": state_normalizer}, meta, algorithm=ALGORITHM,
                                                     final_normalized_score=last_score, best_normalized_score=best_score)
    writer.close()

    # ---- run record for benchmarks/ (written whole, then renamed)
    if args.record is not None:
        record = osd_common.make_record(
            algorithm=ALGORITHM, args=args, meta=meta, dataset_path=data.path, seed=args.seed,
            eval_history=eval_history, updates=args.total_steps, train_time_s=train_time,
            wall_time_s=time.time() - wall_start, device=device, run_name=run_name, checkpoint=checkpoint_path)
        print(f"wrote record {osd_common.write_record(args.record, record)}")
