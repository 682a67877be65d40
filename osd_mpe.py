"""OMSD on the multi-agent particle environments, in one file.

Offline cooperative multi-agent RL by sequential score decomposition (Qiao et al., arXiv 2505.05968),
built on SRPO's score-regularized policy extraction. The file reads top to bottom as the algorithm of
docs/algorithm.md §1-§6:

1. a conditional diffusion behavior model, one network for all agents: agent i's noise predictor is
   conditioned on the global state and on the clean actions of the agents before it (§3);
2. joint-action critics trained in-sample with IQL: twin Q(s, a_1..a_N) and V(s) (§4);
3. deterministic decentralized actors a_i = pi_i(o_i), each pulled toward high Q and toward the behavior
   density *conditional on what its predecessors' actors do now* (§5, eq. (5.2)).
`--decomposition independent` drops the conditioning (every prefix mask 0): the per-agent marginal
regularization that the paper argues mis-coordinates on multimodal data.

Run:
    python osd_mpe.py --seed 1                                  # mpe/simple_spread, tier mixed
    python osd_mpe.py --task mpe/simple_tag --tier medium --seed 1
    python osd_mpe.py --dataset path/to/data.npz --decomposition independent
    python osd_mpe.py --preset paper                            # the authors' budgets (§6): GPU hours
    python osd_mpe.py --eval-only --checkpoint checkpoints/<run>.pt --capture-video
    tensorboard --logdir runs

Default budget (`--preset default`): 50,000 phase-1 steps (behavior model and critics together) and
20,000 actor steps at batch 256, evaluating 10 episodes every 2,000 actor steps and 100 at the end.
Measured on simple_spread with one thread, two runs sharing a 2-core machine: phase 1 at 32 steps/s
(26 minutes), phase 2 at 60 steps/s with its evaluations (6 minutes), 31 minutes a run. On a shared
machine pass `--torch-threads 1`: two threads competing with another job ran more than 30x slower.
`--preset paper` gives the authors' budgets (behavior 2e6 steps, critics 5e5, actors 1e5), which are
GPU hours. `--pretrained CKPT` reuses a run's behavior model and critics, so a
sweep of --beta or --weighting costs only phase 2.

Choices where docs/algorithm.md leaves one open, and deviations from the authors' code, each measured
(commands and numbers in docs/osd_mpe_notes.md):
- `--weighting score` (w(t) = alpha_t / sigma_t) instead of the authors' sigma_t^2, t ~ U(0.02, 0.98) as
  theirs (§5, §7). On the paper's bandit (beta = 0, 10 seeds) sequential ended in one joint mode on 10/10
  seeds with `score` (independent: opposite modes on 6/10) and between the modes on 10/10 with `sigma2`
  (both variants); on the coordination game sequential coordinated in 99.9% of contexts with `score`
  and 3.4% with `sigma2` (benchmarks/bandit.py, benchmarks/coordination_game.py).
- `--q-normalization batch`, beta per tier: mpe2's rewards are not OMAR's, so the paper's beta values do
  not transfer; with the Q gradient divided by its per-agent batch RMS, beta is scale-free. On
  simple_spread `mixed` at the default budget, beta 0.01 beat 0.3 by 7 normalized points (seed 1, the
  same phase 1), so `mixed` defaults to 0.01; the other tiers keep 0.3 until measured (BETA_BY_TIER).
- Score network: one network for all agents with the global state, as §3 specifies; two residual blocks
  (the authors' depth) rather than SRPO's three, for speed (it runs on batch x N rows).
- The actors' loss sums (5.2) over agents; each L_i reaches only actor i, so one backward pass serves all,
  then one Adam and one cosine schedule per actor, as in the authors' code.
- One batch of indices per phase-1 step serves both the behavior model and the critics when their batch
  sizes match: cheaper, and the same in expectation.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------


@dataclass
class Args:
    exp_name: str = "osd_mpe"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment: torch, numpy, random and the batch sampler"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True` (CPU runs are deterministic either way)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where to train: `auto` picks cuda when available"""
    torch_threads: int = 0
    """CPU threads for torch (0 keeps torch's default); use 1 when sharing the machine"""

    # data
    task: str = "mpe/simple_spread"
    """the task: mpe/simple_spread, mpe/simple_tag or mpe/simple_world_comm"""
    tier: str = "mixed"
    """the dataset tier: expert, medium, medium-replay, random, mixed, balanced, mixed-balanced, expert-noisy, expert-noisy-replay or mixed-expert-noisy"""
    dataset: str | None = None
    """path to a dataset .npz; overrides --task/--tier (the task is read from the dataset)"""
    build_dataset: bool = True
    """build a named dataset that is not in the cache yet (about a minute; --no-build-dataset to refuse)"""

    # algorithm variant
    decomposition: Literal["sequential", "independent"] = "sequential"
    """sequential: agent i's behavior score is conditioned on its predecessors' actions (§2);
    independent: on nothing (every prefix mask 0), the marginal ablation"""
    random_order: bool = False
    """sample a new agent order per batch, in behavior training and in actor updates (§3)"""
    behavior_condition: Literal["state", "obs"] = "state"
    """condition the behavior model on the global state (ours) or the agent's own obs (authors')"""

    # budgets: None means "take it from --preset"
    preset: Literal["default", "paper"] = "default"
    """budget preset: default (under an hour on 2 CPU cores) or paper (the authors' budgets, §6)"""
    pretrain_steps: int | None = None
    """phase-1 steps of the behavior model (default preset 50_000, paper 2_000_000)"""
    critic_steps: int | None = None
    """phase-1 steps of the critics (default preset 50_000, paper 500_000)"""
    policy_steps: int | None = None
    """phase-2 actor steps (default preset 20_000, paper 100_000)"""
    eval_every: int | None = None
    """evaluate every this many actor steps (default preset 2_000, paper 500)"""
    eval_episodes: int | None = None
    """episodes per evaluation (both presets 10)"""
    final_eval_episodes: int | None = None
    """episodes of the last evaluation, the run's recorded final score, and of --eval-only (both presets 100: one spread
    episode's return varies so much that 10 episodes leave about +-7 normalized points of noise)"""
    behavior_batch_size: int | None = None
    """behavior-model batch size (default preset 256, paper 512)"""
    critic_batch_size: int | None = None
    """critic batch size (default preset 256, paper 1024)"""
    actor_batch_size: int | None = None
    """actor batch size (default preset 256, paper 512)"""

    # networks and optimizers
    score_width: int = 256
    """width of the behavior score network"""
    score_blocks: int = 2
    """residual blocks of the behavior score network (2, as the authors' trunk; 3 costs 1.4x the time)"""
    hidden_dim: int = 256
    """width of the critics' and actors' 2-layer MLPs"""
    behavior_lr: float = 3e-4
    """AdamW learning rate of the behavior model (cosine decay to 1e-5)"""
    critic_lr: float = 3e-4
    """Adam learning rate of Q and V"""
    actor_lr: float = 3e-4
    """Adam learning rate of each actor (cosine decay to 0)"""

    # critics (§4)
    gamma: float = 0.99
    """discount factor"""
    expectile: float = 0.7
    """IQL expectile of V's regression on min_k Q_target"""
    tau: float = 0.005
    """Polyak rate of the target Q"""

    # actors (§5)
    beta: float | None = None
    """weight of the Q-gradient term in (5.2): small beta = strong behavior regularization (with
    --q-normalization batch or sample the Q push has unit RMS per action entry); default per tier,
    BETA_BY_TIER: 0.01 on mixed-expert-noisy (the MPE mixed it was chosen on, seed 1, docs/osd_mpe_notes.md
    §8), mixed, balanced and mixed-balanced, 0.3 on every other tier and on your own data"""
    q_normalization: Literal["batch", "sample", "none"] = "batch"
    """how the Q gradient g of (5.2) is scaled before beta multiplies it (§5): batch divides each agent's g
    by its RMS over the batch and the agent's action dims, making beta scale-free; sample divides each
    sample's g by its own RMS over the agent's action dims (SRPO's optional regq, as in the authors'
    code); none keeps the raw gradient"""
    t_min: float = 0.02
    """smallest diffusion time sampled for the actor's score regularizer"""
    t_max: float = 0.98
    """largest diffusion time sampled for the actor's score regularizer"""
    subtract_noise: bool = False
    """use eps_hat - eps in (5.2) (SRPO's form: same expected gradient, lower variance) instead of the
    authors' raw eps_hat"""
    weighting: Literal["sigma2", "score", "uniform"] = "score"
    """w(t) in (5.2): score = alpha_t / sigma_t (weights small t most: mode-seeking; measured default),
    sigma2 = sigma_t^2 (the authors' default: leaves actors between modes on the bandit), uniform = 1"""

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
    pretrained: str | None = None
    """skip phase 1: take the behavior model and critics from this checkpoint (same dataset), e.g. to
    sweep --beta or --weighting over one pretraining, as the authors froze theirs"""
    capture_video: bool = False
    """with --eval-only: save one rendered episode as videos/<run_name>.gif"""
    record: str | None = None
    """write the run record (final/best normalized score, eval curve, wall time, updates/s, commit,
    machine; schema in osd_common.RECORD_SCHEMA) to this JSON file at the end; benchmarks/grid.py uses it"""


PRESETS = {
    "default": dict(pretrain_steps=50_000, critic_steps=50_000, policy_steps=20_000, eval_every=2_000,
                    eval_episodes=10, final_eval_episodes=100, behavior_batch_size=256, critic_batch_size=256, actor_batch_size=256),
    # the authors' budgets for MPE (docs/algorithm.md §3, §4, §6)
    "paper": dict(pretrain_steps=2_000_000, critic_steps=500_000, policy_steps=100_000, eval_every=500,
                  eval_episodes=10, final_eval_episodes=100, behavior_batch_size=512, critic_batch_size=1024, actor_batch_size=512),
}


# docs/osd_mpe_notes.md §8: on spread `mixed` (default budget, seed 1, the same phase 1 for each value)
# sequential scored 81 with beta 0.3 and 88-90 with 0.01; the other multimodal tiers take mixed's value
# (§12); the remaining tiers keep 0.3 until they are measured.
BETA_BY_TIER = {"mixed": 0.01, "balanced": 0.01, "mixed-balanced": 0.01, "mixed-expert-noisy": 0.01}
DEFAULT_BETA = 0.3


def resolve_budgets(args: Args) -> Args:
    """Fill every budget left at None from the chosen preset; flags given explicitly win."""
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    # a bad budget stops here with its flag named, not later as a division by zero or an empty run
    at_least = {"pretrain_steps": 0, "critic_steps": 0}
    for name in PRESETS[args.preset]:
        value, low = getattr(args, name), at_least.get(name, 1)
        if value < low:
            raise SystemExit(f"osd_mpe: --{name.replace('_', '-')} is {value}; it must be at least {low}")
    return args


# ---------------------------------------------------------------------------------------------------
# Diffusion: VP-SDE (docs/algorithm.md §3)
# ---------------------------------------------------------------------------------------------------

BETA_MIN, BETA_MAX = 0.1, 20.0
BEHAVIOR_T_MIN = 1e-3  # t ~ U(1e-3, 1) in behavior training (§3)


def vp_alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t and sigma_t of the VP-SDE with a linear beta schedule: x_t = alpha_t a + sigma_t eps."""
    # docs/algorithm.md §3
    log_alpha = -0.25 * t**2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
    alpha = torch.exp(log_alpha)
    sigma = torch.sqrt(1.0 - alpha**2)
    return alpha, sigma


def score_weight(t: torch.Tensor, weighting: str) -> torch.Tensor:
    """w(t) of the actor's score regularizer (5.2)."""
    alpha, sigma = vp_alpha_sigma(t)
    if weighting == "sigma2":
        return sigma**2  # the authors' and SRPO's default: weights large t most
    if weighting == "score":
        return alpha / sigma  # SRPO's "score" weighting: weights small t (sharp modes) most
    if weighting == "uniform":
        return torch.ones_like(t)
    raise ValueError(f"unknown weighting {weighting!r}; valid: sigma2, score, uniform")


# ---------------------------------------------------------------------------------------------------
# Behavior model: one conditional noise predictor for all agents (docs/algorithm.md §3)
# ---------------------------------------------------------------------------------------------------


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier features of the diffusion time t in [0, 1] (fixed, not trained)."""

    def __init__(self, dim: int = 64, scale: float = 30.0):
        super().__init__()
        self.register_buffer("frequencies", torch.randn(dim // 2) * scale)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * t[..., None] * self.frequencies
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class ResidualBlock(nn.Module):
    """Pre-norm residual MLP block: h + Linear(SiLU(Linear(LayerNorm(h))))."""

    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.net(h)


def prefix_masks(n_agents: int, decomposition: str, order: list[int] | None = None) -> torch.Tensor:
    """m[i, j] = 1 iff agent j acts before agent i in `order` (sequential); all zeros (independent).

    `order` lists agent ids in the order they act (default 0..N-1).
    """
    if decomposition == "independent":
        return torch.zeros(n_agents, n_agents)
    if decomposition != "sequential":
        raise ValueError(f"unknown decomposition {decomposition!r}; valid: sequential, independent")
    order = list(range(n_agents)) if order is None else list(order)
    position = torch.empty(n_agents)
    position[torch.tensor(order)] = torch.arange(n_agents, dtype=torch.float32)
    return (position[None, :] < position[:, None]).float()


class BehaviorScoreNet(nn.Module):
    """eps_psi(x_t, t | cond_i, c_i, i) for every agent i of a batch at once (docs/algorithm.md §3).

    Inputs per agent i: its noised action x_t, the time t, a condition (the global state, or the
    agent's own observation), the prefix c_i = (a_j * m_ij, m_ij)_j of clean predecessor actions with
    their mask, and a one-hot agent id. The network predicts the noise eps; the score of the diffused
    conditional behavior is -eps_psi / sigma_t.
    """

    def __init__(self, n_agents: int, act_dim: int, cond_dim: int, width: int = 256, n_blocks: int = 2,
                 time_dim: int = 64):
        super().__init__()
        self.n_agents, self.act_dim = n_agents, act_dim
        # a small MLP on the Fourier features (as in SRPO); it runs once per (sample, agent), so it is kept
        # narrower than the trunk
        self.time_embedding = nn.Sequential(GaussianFourierEmbedding(time_dim), nn.Linear(time_dim, 2 * time_dim),
                                            nn.SiLU(), nn.Linear(2 * time_dim, width))
        prefix_dim = n_agents * act_dim + n_agents  # c_i: masked actions of all agents, then the mask
        self.input_projection = nn.Linear(act_dim + cond_dim + prefix_dim + n_agents, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width) for _ in range(n_blocks)])
        self.head = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, act_dim))
        self.register_buffer("agent_ids", torch.eye(n_agents))

    def forward(self, noised_actions: torch.Tensor, t: torch.Tensor, condition: torch.Tensor,
                prefix_actions: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
        """noised_actions [B, N, A]; t [B, N]; condition [B, N, C]; prefix_actions [B, N, A] (a joint
        action; row j is agent j's clean action); prefix_mask [N, N] or [B, N, N]. Returns eps [B, N, A]."""
        batch = noised_actions.shape[0]
        mask = prefix_mask.expand(batch, self.n_agents, self.n_agents)
        # c_i = (a_j * m_ij, m_ij)_j: agent i sees only its predecessors' actions
        masked_prefix = prefix_actions[:, None, :, :] * mask[..., None]  # [B, N(i), N(j), A]
        prefix = torch.cat([masked_prefix.flatten(2), mask], dim=-1)
        agent_id = self.agent_ids.expand(batch, -1, -1)
        h = self.input_projection(torch.cat([noised_actions, condition, prefix, agent_id], dim=-1))
        h = h + self.time_embedding(t)
        return self.head(self.blocks(h))


def behavior_loss(score_net: BehaviorScoreNet, actions: torch.Tensor, condition: torch.Tensor,
                  prefix_mask: torch.Tensor, act_mask: torch.Tensor) -> torch.Tensor:
    """Denoising score matching over the batch, the agents and t ~ U(1e-3, 1).

    actions [B, N, A] clean dataset actions (zero-padded); act_mask [N, A] marks real action dims.
    """
    batch, n_agents, _ = actions.shape
    t = torch.rand(batch, n_agents, device=actions.device) * (1.0 - BEHAVIOR_T_MIN) + BEHAVIOR_T_MIN
    alpha, sigma = vp_alpha_sigma(t)
    noise = torch.randn_like(actions) * act_mask
    noised = alpha[..., None] * actions + sigma[..., None] * noise
    predicted = score_net(noised, t, condition, actions, prefix_mask) * act_mask
    # docs/algorithm.md §3, eq. (3.1): E || eps_psi(alpha_t a_i + sigma_t eps, t | s, c_i, i) - eps ||^2
    return ((predicted - noise) ** 2).sum(-1).mean()


@torch.no_grad()
def sample_behavior_actions(score_net: BehaviorScoreNet, condition: torch.Tensor, prefix_mask: torch.Tensor,
                            act_mask: torch.Tensor, order: list[int] | None = None,
                            n_steps: int = 50) -> torch.Tensor:
    """Sample joint actions from the behavior model, agent by agent in `order` (docs/algorithm.md §3).

    Each agent runs a deterministic DDIM (first-order DPM-Solver) reverse pass from t = 1 to 1e-3,
    conditioned on the actions already sampled for its predecessors. For tests and sanity checks.
    """
    batch, n_agents = condition.shape[0], condition.shape[1]
    order = list(range(n_agents)) if order is None else list(order)
    joint = torch.zeros(batch, n_agents, act_mask.shape[-1], device=condition.device)
    times = torch.linspace(1.0, BEHAVIOR_T_MIN, n_steps + 1, device=condition.device)
    for agent in order:
        x = torch.randn(batch, act_mask.shape[-1], device=condition.device) * act_mask[agent]
        for t_now, t_next in zip(times[:-1], times[1:]):
            alpha_now, sigma_now = vp_alpha_sigma(t_now)
            alpha_next, sigma_next = vp_alpha_sigma(t_next)
            noised = joint.clone()
            noised[:, agent] = x
            eps = score_net(noised, t_now.expand(batch, n_agents), condition, joint, prefix_mask)[:, agent]
            clean = ((x - sigma_now * eps) / alpha_now).clamp(-1, 1)
            x = (alpha_next * clean + sigma_next * eps) * act_mask[agent]
        joint[:, agent] = x.clamp(-1, 1)
    return joint


# ---------------------------------------------------------------------------------------------------
# Critics: twin joint-action Q and V, trained in-sample with IQL (docs/algorithm.md §4)
# ---------------------------------------------------------------------------------------------------


def mlp(in_dim: int, out_dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, out_dim))


class TwinQ(nn.Module):
    """Q_1, Q_2 (s, a_1..a_N): the global state and the flattened joint action."""

    def __init__(self, state_dim: int, joint_act_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.q1 = mlp(state_dim + joint_act_dim, 1, hidden_dim)
        self.q2 = mlp(state_dim + joint_act_dim, 1, hidden_dim)

    def forward(self, state: torch.Tensor, joint_actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([state, joint_actions.flatten(1)], dim=-1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class ValueNet(nn.Module):
    """V(s)."""

    def __init__(self, state_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.v = mlp(state_dim, 1, hidden_dim)

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.v(state).squeeze(-1)


def value_loss(v_net: ValueNet, q_target: TwinQ, state: torch.Tensor, joint_actions: torch.Tensor,
               expectile: float) -> torch.Tensor:
    """Expectile regression of V(s) on min_k Q_target(s, a) with dataset actions."""
    with torch.no_grad():
        target = torch.min(*q_target(state, joint_actions))
    diff = target - v_net(state)
    # docs/algorithm.md §4: |tau - 1(diff < 0)| diff^2 (IQL's expectile loss)
    weight = torch.abs(expectile - (diff < 0).float())
    return (weight * diff**2).mean()


def q_loss(q_net: TwinQ, v_net: ValueNet, state, joint_actions, reward, next_state, terminal,
           gamma: float) -> torch.Tensor:
    """TD regression of both twins on r + gamma (1 - terminal) V(s'); timeouts bootstrap (§4)."""
    with torch.no_grad():
        target = reward + gamma * (1.0 - terminal) * v_net(next_state)
    q1, q2 = q_net(state, joint_actions)
    return F.mse_loss(q1, target) + F.mse_loss(q2, target)


@torch.no_grad()
def polyak_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """target <- (1 - tau) target + tau source, every parameter in one multi-tensor op (fewer GPU launches)."""
    target_params, source_params = list(target.parameters()), list(source.parameters())
    torch._foreach_mul_(target_params, 1.0 - tau)
    torch._foreach_add_(target_params, source_params, alpha=tau)


# ---------------------------------------------------------------------------------------------------
# Actors: deterministic decentralized policies and the score-regularized loss (docs/algorithm.md §5)
# ---------------------------------------------------------------------------------------------------


Q_NORMALIZATIONS = ("batch", "sample", "none")  # how actor_loss scales the Q gradient g (Args.q_normalization)
ACTION_BOUND = 0.99  # an action entry with |a| above this counts as saturated at the tanh bound (diagnostics)
# the per-agent diagnostics of actor_loss -> their TensorBoard section (<section>/<name>_agent<i>)
ACTOR_DIAGNOSTICS = {"score_push_rms": "losses", "q_push_rms": "losses", "action_at_bounds": "charts"}


class Actor(nn.Module):
    """a_i = pi_i(o_i): a tanh MLP on the agent's own (normalized) observation."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.obs_dim = obs_dim
        self.net = mlp(obs_dim, act_dim, hidden_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs[..., : self.obs_dim]))


def joint_action(actors: nn.ModuleList, observations: torch.Tensor, max_act_dim: int) -> torch.Tensor:
    """All actors on their own observations [B, N, O] -> zero-padded joint action [B, N, A]."""
    actions = [F.pad(actor(observations[:, i]), (0, max_act_dim - actor.net[-1].out_features))
               for i, actor in enumerate(actors)]
    return torch.stack(actions, dim=1)


def actor_loss(actors: nn.ModuleList, score_net: BehaviorScoreNet, q_target: TwinQ, observations: torch.Tensor,
               state: torch.Tensor, condition: torch.Tensor, prefix_mask: torch.Tensor, act_mask: torch.Tensor,
               beta: float, t_min: float, t_max: float, weighting: str, q_normalization: str,
               subtract_noise: bool = False,
               diagnostics: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over agents of L_i in (5.2), every agent of the batch at once.

    Returns the loss (its gradient reaches each actor only through its own a_i) and detached parts
    for logging: the score term, the Q term and Q(s, a_cur). `q_normalization` is one of
    Q_NORMALIZATIONS (Args.q_normalization). With `diagnostics`, the parts also hold per-agent [N]
    tensors: score_push_rms and q_push_rms, the RMS over the batch and the agent's real action dims of
    the two pushes on a_i, w(t) eps_hat and beta g, and action_at_bounds, the share of the actor's
    action entries with |a| > ACTION_BOUND; they are computed after the loss and draw no random numbers.
    """
    if q_normalization not in Q_NORMALIZATIONS:
        raise ValueError(f"unknown q_normalization {q_normalization!r}; valid: {', '.join(Q_NORMALIZATIONS)}")
    live_actions = joint_action(actors, observations, act_mask.shape[-1])  # a_i = pi_i(o_i), with grad
    current_actions = live_actions.detach()  # a_cur: the actors' joint action, detached
    batch, n_agents, _ = live_actions.shape

    # eps_hat = sg(eps_psi(x_t, t | s, c_i(a_cur), i)),  x_t = alpha_t a_i + sigma_t eps,  t ~ U(t_min, t_max)
    t = torch.rand(batch, n_agents, device=state.device) * (t_max - t_min) + t_min
    alpha, sigma = vp_alpha_sigma(t)
    noise = torch.randn_like(current_actions) * act_mask
    noised = alpha[..., None] * current_actions + sigma[..., None] * noise
    with torch.no_grad():
        eps_hat = score_net(noised, t, condition, current_actions, prefix_mask) * act_mask
        if subtract_noise:  # SRPO's eps_hat - eps: the same gradient in expectation, less variance
            eps_hat = eps_hat - noise

    # g = sg(grad_{a_i} Q(s, a_cur with slot i := a_i)), Q = mean of the target twins. Slot i := a_i
    # equals a_cur in value, so one backward pass through Q(s, a_cur) gives every agent's g at once.
    q_input = current_actions.clone().requires_grad_(True)
    q_value = 0.5 * sum(q_target(state, q_input))
    q_grad = torch.autograd.grad(q_value.sum(), q_input)[0] * act_mask
    if q_normalization == "batch":  # divide by the per-agent batch RMS, so beta is scale-free (§5)
        mean_square = (q_grad**2).sum(dim=(0, 2)) / (batch * act_mask.sum(-1)).clamp(min=1.0)
        q_grad = q_grad / torch.sqrt(mean_square + 1e-12)[None, :, None]
    elif q_normalization == "sample":  # SRPO's regq: each sample's g_i by its RMS over agent i's real dims
        mean_square = (q_grad**2).sum(-1) / act_mask.sum(-1).clamp(min=1.0)  # [B, N]
        q_grad = q_grad / torch.sqrt(mean_square + 1e-12)[..., None]  # padded dims are 0 and stay 0

    # docs/algorithm.md §5, eq. (5.2): L_i = mean_b[ w(t) <eps_hat, a_i> - beta <g, a_i> ]
    weight = score_weight(t, weighting)
    score_term = (weight * (eps_hat * live_actions).sum(-1)).mean(0).sum()
    q_term = (q_grad * live_actions).sum(-1).mean(0).sum()
    loss = score_term - beta * q_term
    parts = {"score": score_term.detach(), "q": q_term.detach(), "q_value": q_value.detach().mean()}
    if diagnostics:  # docs/algorithm.md §5: the sizes of the two pushes on a_i, and saturation of the tanh
        entries = batch * act_mask.sum(-1).clamp(min=1.0)  # real action entries per agent [N]
        parts["score_push_rms"] = torch.sqrt(((weight[..., None] * eps_hat) ** 2).sum(dim=(0, 2)) / entries)
        parts["q_push_rms"] = torch.sqrt(((beta * q_grad) ** 2).sum(dim=(0, 2)) / entries)
        parts["action_at_bounds"] = ((current_actions.abs() > ACTION_BOUND) * act_mask).sum(dim=(0, 2)) / entries
    return loss, parts


# ---------------------------------------------------------------------------------------------------
# Guards and small utilities
# ---------------------------------------------------------------------------------------------------


def check_finite(losses: dict[str, float], step: int, phase: str) -> None:
    """Stop the run with a clear message if any loss is NaN or infinite (checked when losses are logged:
    a NaN spreads to the weights, so the logged loss stays NaN from then on)."""
    for name, value in losses.items():
        if not math.isfinite(value):
            raise SystemExit(
                f"osd_mpe: loss '{name}' is {value} at {phase} step {step}. Training stopped "
                "(losses are checked when logged, every --log-every steps). Check the dataset for huge or "
                "non-finite values, or lower the learning rates."
            )


class Normalizer:
    """Standardization with dataset statistics; dimensions with (near) zero spread are left centered."""

    def __init__(self, mean: np.ndarray, std: np.ndarray):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.where(np.asarray(std) < 1e-6, 1.0, std).astype(np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) / self.std


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("osd_mpe: --device cuda was asked for, but torch sees no CUDA device "
                         f"(torch {torch.__version__}). Use --device cpu or --device auto.")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def build_networks(n_agents, obs_dims, act_dims, state_dim, args: Args, device) -> dict[str, nn.Module]:
    """Every network of the algorithm, sized from the dataset; used by training and by --eval-only."""
    max_obs_dim, max_act_dim = max(obs_dims), max(act_dims)
    cond_dim = state_dim if args.behavior_condition == "state" else max_obs_dim
    score_net = BehaviorScoreNet(n_agents, max_act_dim, cond_dim, args.score_width, args.score_blocks)
    q_net = TwinQ(state_dim, n_agents * max_act_dim, args.hidden_dim)
    q_target = TwinQ(state_dim, n_agents * max_act_dim, args.hidden_dim)
    q_target.load_state_dict(q_net.state_dict())
    v_net = ValueNet(state_dim, args.hidden_dim)
    actors = nn.ModuleList([Actor(obs_dims[i], act_dims[i], args.hidden_dim) for i in range(n_agents)])
    nets = dict(score_net=score_net, q_net=q_net, q_target=q_target, v_net=v_net, actors=actors)
    return {name: net.to(device) for name, net in nets.items()}


def make_act_fn(actors: nn.ModuleList, obs_normalizer: Normalizer, device):
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


def save_gif(frames: list[np.ndarray], path: str, fps: int = 10) -> None:
    """Write rgb frames as an animated GIF with pillow (installed with matplotlib)."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(frame, dtype=np.uint8)) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)


def evaluate_policy(actors, obs_normalizer, device, task, episodes, seed, meta, capture_video=False) -> dict:
    from osd_common import evaluate

    for actor in actors:
        actor.eval()
    result = evaluate(make_act_fn(actors, obs_normalizer, device), task, episodes=episodes, seed=seed,
                      ref_random=meta.get("ref_random"), ref_expert=meta.get("ref_expert"),
                      capture_video=capture_video)
    for actor in actors:
        actor.train()
    return result


def checkpoint_args(saved: dict) -> Args:
    """The Args a checkpoint was trained with. Checkpoints written before --q-normalization replaced the
    boolean --normalize-q hold normalize_q: True is batch, False is none."""
    saved = dict(saved)
    if "normalize_q" in saved:
        saved["q_normalization"] = "batch" if saved.pop("normalize_q") else "none"
    return Args(**saved)


def record_algorithm(args: Args) -> str:
    """The run record's algorithm name: omsd, or omsd-independent for the ablation, with -beta0 added
    when beta is 0 (no Q term: the behavior regularizer alone), so the name always says what ran."""
    name = "omsd" if args.decomposition == "sequential" else "omsd-independent"
    return f"{name}-beta0" if args.beta == 0 else name


def run_eval_only(args: Args, device: torch.device) -> None:
    """--eval-only: rebuild the actors from a checkpoint and evaluate them, without training."""
    import osd_common  # imported where it is used, as in the main block
    if args.checkpoint is None:
        raise SystemExit("osd_mpe: --eval-only needs --checkpoint PATH (a .pt written by a training run)")
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"osd_mpe: checkpoint {args.checkpoint!r} does not exist")
    checkpoint = torch.load(args.checkpoint, map_location=device, weights_only=False)
    saved_args = checkpoint_args(checkpoint["args"])
    meta = checkpoint["meta"]
    if not osd_common.can_evaluate(meta["task"]):
        raise SystemExit(f"osd_mpe: {args.checkpoint} was trained on {meta['task']} data, whose env is not built here "
                         "(OMAR's particle world): it cannot be evaluated")
    nets = build_networks(meta["n_agents"], meta["obs_dims"], meta["act_dims"], meta["state_dim"], saved_args, device)
    for name, net in nets.items():
        net.load_state_dict(checkpoint[name])
    obs_normalizer = Normalizer(checkpoint["normalizers"]["obs_mean"], checkpoint["normalizers"]["obs_std"])
    # as many episodes as the final evaluation of training, whose recorded score this reproduces
    episodes = args.final_eval_episodes if args.final_eval_episodes is not None else PRESETS[args.preset]["final_eval_episodes"]
    result = evaluate_policy(nets["actors"], obs_normalizer, device, meta["task"], episodes, args.seed + 10_000,
                             meta, capture_video=args.capture_video)
    print(f"eval-only {args.checkpoint}: return {result['return_mean']:.2f} ± {result['return_std']:.2f}, "
          f"normalized score {result['normalized_score']:.1f} over {episodes} episodes")
    if args.capture_video:
        os.makedirs("videos", exist_ok=True)
        name = os.path.splitext(os.path.basename(args.checkpoint))[0]
        save_gif(result["frames"], f"videos/{name}.gif")
        print(f"saved videos/{name}.gif ({len(result['frames'])} frames)")


# ---------------------------------------------------------------------------------------------------
# Main: data, phase 1 (behavior model + critics), phase 2 (actors), checkpoint
# ---------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    import tyro
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    import osd_common

    args = resolve_budgets(tyro.cli(Args))
    wall_start = time.time()

    # seeding and device
    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = pick_device(args.device)
    if args.eval_only:
        run_eval_only(args, device)
        raise SystemExit(0)

    # dataset and normalizers
    if args.dataset is None:
        if args.task not in osd_common.TASKS or not args.task.startswith("mpe/"):
            mpe_tasks = [task for task in osd_common.TASKS if task.startswith("mpe/")]
            raise SystemExit(f"osd_mpe: --task {args.task!r} is not an MPE task; valid tasks: {', '.join(mpe_tasks)}")
        if args.tier not in osd_common.TIERS:
            raise SystemExit(f"osd_mpe: --tier {args.tier!r} is not a tier; valid tiers: {', '.join(osd_common.TIERS)}")
        dataset_name = f"{args.task}/{args.tier}"
    else:
        dataset_name = args.dataset
    try:
        data = osd_common.load_dataset(dataset_name, build_if_missing=args.build_dataset)
    except osd_common.DatasetError as error:
        raise SystemExit(f"osd_mpe: {error}")
    meta = data.meta
    args.task = meta["task"]
    if args.beta is None:
        args.beta = BETA_BY_TIER.get(meta.get("tier"), DEFAULT_BETA)
    n_agents, obs_dims, act_dims, state_dim = meta["n_agents"], list(meta["obs_dims"]), list(meta["act_dims"]), meta["state_dim"]
    max_obs_dim, max_act_dim = data.observations.shape[-1], data.actions.shape[-1]
    # the env follows the data (its agent_obsk); OMAR's MPE data trains without evaluation
    evaluable = osd_common.check_env_fits_data("osd_mpe", data, args.task, args.record is not None)
    run_name = f"{args.task.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # docs/algorithm.md §6: observations and states standardized once with dataset statistics
    obs_normalizer = Normalizer(data.observations.mean(0), data.observations.std(0))
    state_normalizer = Normalizer(data.states.mean(0), data.states.std(0))
    observations = obs_normalizer(data.observations) * data.obs_mask  # padding stays exactly 0
    states, next_states = state_normalizer(data.states), state_normalizer(data.next_states)
    actions, rewards, terminals = data.actions, data.rewards, data.terminals
    act_mask = torch.as_tensor(data.act_mask, device=device)
    n_transitions = len(rewards)
    batch_rng = np.random.default_rng(args.seed)  # the batch sampler: seeded, independent of torch

    def to_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=device)

    # the whole dataset moves to the training device once: a batch is then a gather there, not a
    # host-to-device copy per step (on CPU these tensors share the numpy arrays' memory, and
    # index_select gathers faster than numpy's fancy indexing or torch's tensor[idx])
    observations, states, next_states = to_tensor(observations), to_tensor(states), to_tensor(next_states)
    actions, rewards, terminals = to_tensor(actions), to_tensor(rewards), to_tensor(terminals)

    def sample_indices(batch_size: int) -> torch.Tensor:
        return torch.as_tensor(batch_rng.integers(0, n_transitions, size=batch_size), device=device)

    def behavior_condition(state: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Per-agent condition [B, N, C]: the global state for every agent, or each agent's own obs."""
        if args.behavior_condition == "state":
            return state[:, None, :].expand(-1, n_agents, -1)
        return obs

    fixed_prefix_mask = prefix_masks(n_agents, args.decomposition).to(device)

    def batch_prefix_mask() -> torch.Tensor:
        if not args.random_order:
            return fixed_prefix_mask
        order = batch_rng.permutation(n_agents).tolist()
        return prefix_masks(n_agents, args.decomposition, order).to(device)

    nets = build_networks(n_agents, obs_dims, act_dims, state_dim, args, device)
    score_net, q_net, q_target, v_net, actors = (nets[k] for k in ("score_net", "q_net", "q_target", "v_net", "actors"))

    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(
        f"|{key}|{value}|" for key, value in dataclasses.asdict(args).items()))
    print(f"osd_mpe: {run_name}; dataset {data.path} ({n_transitions} transitions); device {device}")

    # ---- phase 1: behavior model and critics train together (docs/algorithm.md §6)
    # on CUDA one fused kernel updates all of a network's parameters; on CPU torch's default loop
    fused = {"fused": True} if device.type == "cuda" else {}
    behavior_optimizer = torch.optim.AdamW(score_net.parameters(), lr=args.behavior_lr, **fused)
    behavior_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(behavior_optimizer, max(args.pretrain_steps, 1), eta_min=1e-5)
    q_optimizer = torch.optim.Adam(q_net.parameters(), lr=args.critic_lr, **fused)
    v_optimizer = torch.optim.Adam(v_net.parameters(), lr=args.critic_lr, **fused)
    phase1_steps = max(args.pretrain_steps, args.critic_steps)
    if args.pretrained is not None:
        pretrained = torch.load(args.pretrained, map_location=device, weights_only=False)
        if pretrained["meta"].get("sha256") != meta.get("sha256"):
            raise SystemExit(f"osd_mpe: --pretrained {args.pretrained} was trained on another dataset "
                             f"({pretrained['meta'].get('sha256', '?')[:12]}), not {data.path}")
        must_match = ("decomposition", "random_order", "behavior_condition", "score_width", "score_blocks", "hidden_dim")
        differing = [f"--{k.replace('_', '-')} {pretrained['args'][k]}" for k in must_match
                     if pretrained["args"][k] != getattr(args, k)]
        if differing:
            raise SystemExit(f"osd_mpe: --pretrained {args.pretrained} was trained with {', '.join(differing)}; "
                             "pass the same flags")
        for name in ("score_net", "q_net", "q_target", "v_net"):
            nets[name].load_state_dict(pretrained[name])
        args.pretrain_steps = args.critic_steps = phase1_steps = 0
        print(f"phase 1 skipped: behavior model and critics from {args.pretrained}")
    start_time = time.time()
    progress = tqdm(range(phase1_steps), desc="phase 1: behavior + critics", smoothing=0.05)
    for step in progress:
        losses = {}
        if step < args.pretrain_steps:
            idx = sample_indices(args.behavior_batch_size)
            obs_b, state_b = observations.index_select(0, idx), states.index_select(0, idx)
            loss = behavior_loss(score_net, actions.index_select(0, idx), behavior_condition(state_b, obs_b),
                                 batch_prefix_mask(), act_mask)
            behavior_optimizer.zero_grad()
            loss.backward()
            behavior_optimizer.step()
            behavior_schedule.step()
            losses["behavior"] = loss.detach()  # a tensor: reading it (.item()) would wait for the GPU
        if step < args.critic_steps:
            if step >= args.pretrain_steps or args.critic_batch_size != args.behavior_batch_size:
                idx = sample_indices(args.critic_batch_size)
            state_b, action_b = states.index_select(0, idx), actions.index_select(0, idx)
            loss_v = value_loss(v_net, q_target, state_b, action_b, args.expectile)
            v_optimizer.zero_grad()
            loss_v.backward()
            v_optimizer.step()
            loss_q = q_loss(q_net, v_net, state_b, action_b, rewards.index_select(0, idx),
                            next_states.index_select(0, idx), terminals.index_select(0, idx), args.gamma)
            q_optimizer.zero_grad()
            loss_q.backward()
            q_optimizer.step()
            polyak_update(q_target, q_net, args.tau)
            losses["v"], losses["q"] = loss_v.detach(), loss_q.detach()
        if (step + 1) % args.log_every == 0 or step == phase1_steps - 1:  # the only host syncs of the loop
            losses = {name: value.item() for name, value in losses.items()}
            check_finite(losses, step, "phase-1")
            sps = int((step + 1) / (time.time() - start_time))
            for name, value in losses.items():
                writer.add_scalar(f"losses/{name}", value, step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.set_postfix({**{k: f"{v:.3g}" for k, v in losses.items()}, "SPS": sps})
    progress.close()
    print(f"phase 1 done: {phase1_steps} steps in {time.time() - start_time:.0f}s "
          f"(SPS {phase1_steps / max(time.time() - start_time, 1e-9):.0f})")

    # ---- phase 2: actors against the frozen behavior model and critics (docs/algorithm.md §5, §6)
    for net in (score_net, q_target, v_net, q_net):
        net.eval()
        net.requires_grad_(False)
    actor_optimizers = [torch.optim.Adam(actor.parameters(), lr=args.actor_lr, **fused) for actor in actors]
    actor_schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(args.policy_steps, 1)) for opt in actor_optimizers]
    eval_seed = args.seed + 10_000  # evaluation episodes differ from any seed used in training
    best_score, last_score = -math.inf, float("nan")
    eval_history, eval_time, phase1_time = [], 0.0, time.time() - start_time
    actor_diagnostics = {}  # the last logged per-agent diagnostics of actor_loss (ACTOR_DIAGNOSTICS)
    start_time = time.time()
    progress = tqdm(range(args.policy_steps), desc="phase 2: actors", smoothing=0.05)
    for step in progress:
        idx = sample_indices(args.actor_batch_size)
        obs_b, state_b = observations.index_select(0, idx), states.index_select(0, idx)
        log_now = (step + 1) % args.log_every == 0 or step == args.policy_steps - 1
        loss, parts = actor_loss(actors, score_net, q_target, obs_b, state_b, behavior_condition(state_b, obs_b),
                                 batch_prefix_mask(), act_mask, args.beta, args.t_min, args.t_max, args.weighting,
                                 args.q_normalization, args.subtract_noise, diagnostics=log_now)
        for opt in actor_optimizers:
            opt.zero_grad()
        loss.backward()  # each actor's gradient comes from its own L_i only
        for opt, schedule in zip(actor_optimizers, actor_schedules):
            opt.step()
            schedule.step()
        if log_now:  # the only host syncs of the loop
            losses = {"actor": loss.item(), "actor_score": parts["score"].item(), "actor_q": -parts["q_value"].item()}
            check_finite(losses, step, "phase-2")
            sps = int((step + 1) / (time.time() - start_time))
            for name, value in losses.items():
                writer.add_scalar(f"losses/{name}", value, step)
            # per agent; the last logged values (those of the last step) go into the run record
            actor_diagnostics = {name: parts[name].tolist() for name in ACTOR_DIAGNOSTICS}
            for name, section in ACTOR_DIAGNOSTICS.items():
                for agent, value in enumerate(actor_diagnostics[name]):
                    writer.add_scalar(f"{section}/{name}_agent{agent}", value, step)
            writer.add_scalar("charts/actor_SPS", sps, step)
            writer.add_scalar("charts/SPS", sps, phase1_steps + step)
            progress.set_postfix({"score": f"{losses['actor_score']:.3g}", "Q": f"{-losses['actor_q']:.3g}", "SPS": sps})
        if evaluable and ((step + 1) % args.eval_every == 0 or step == args.policy_steps - 1):
            eval_start = time.time()
            # the last evaluation is the recorded final score: more episodes, so that evaluation noise
            # does not swamp the differences between seeds and algorithms
            episodes = args.final_eval_episodes if step == args.policy_steps - 1 else args.eval_episodes
            result = evaluate_policy(actors, obs_normalizer, device, args.task, episodes, eval_seed, meta)
            eval_time += time.time() - eval_start
            eval_history.append((step + 1, result))
            last_score = result["normalized_score"]
            best_score = max(best_score, last_score)
            writer.add_scalar("charts/episodic_return", result["return_mean"], step)
            writer.add_scalar("charts/normalized_score", last_score, step)
            tqdm.write(f"actor step {step + 1}: return {result['return_mean']:.2f} ± {result['return_std']:.2f}, "
                       f"normalized score {last_score:.1f} ({episodes} episodes)")
    progress.close()
    print(f"phase 2 done: {args.policy_steps} steps in {time.time() - start_time:.0f}s; "
          + (f"normalized score last {last_score:.1f}, best {best_score:.1f}" if evaluable else "not evaluated"))
    train_time = phase1_time + time.time() - start_time - eval_time

    # ---- checkpoint (docs/algorithm.md §6): networks, normalizers, Args and dataset meta
    if args.save_model:
        os.makedirs(args.checkpoint_dir, exist_ok=True)
        path = os.path.join(args.checkpoint_dir, f"{run_name}.pt")
        torch.save({
            **{name: net.state_dict() for name, net in nets.items()},
            "normalizers": {"obs_mean": obs_normalizer.mean, "obs_std": obs_normalizer.std,
                            "state_mean": state_normalizer.mean, "state_std": state_normalizer.std},
            "args": dataclasses.asdict(args),
            "meta": {key: meta[key] for key in ("task", "tier", "n_agents", "obs_dims", "act_dims", "state_dim",
                                                "ref_random", "ref_expert", "references", "sha256") if key in meta},
            "final_normalized_score": last_score,
            "best_normalized_score": best_score,
        }, path)
        print(f"saved checkpoint {path}")
    if args.record is not None:
        osd_common.write_record(args.record, osd_common.make_record(
            algorithm=record_algorithm(args), args=args, meta=meta,
            dataset_path=data.path, seed=args.seed, eval_history=eval_history,
            updates=phase1_steps + args.policy_steps, train_time_s=train_time,
            wall_time_s=time.time() - wall_start, device=device, run_name=run_name,
            checkpoint=path if args.save_model else None, actor_diagnostics=actor_diagnostics))
        print(f"saved run record {args.record}")
    writer.close()
