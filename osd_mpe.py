"""OMSD on the multi-agent particle environments (mpe2), in one file.

Qiao et al., "Offline Multi-agent Reinforcement Learning via Score Decomposition", arXiv 2505.05968,
built on SRPO's score-regularized policy extraction. Four parts, each under its own banner below:
1. behavior model: one conditional diffusion noise predictor for all agents (docs/algorithm.md §3);
2. sequential decomposition: agent i's behavior score is conditioned on its predecessors' actions (§2);
3. critics: twin joint-action Q(s, a_1..a_N) and V(s), trained in-sample with IQL (§4);
4. actors: decentralized a_i = pi_i(o_i), pulled toward high Q and the conditional behavior score (§5);
then the training phases (§6: behavior model and critics; the value-weighted fine-tune where the
per-tier table turns it on; actors). Why each default: docs/osd_mpe_notes.md.

    python osd_mpe.py --seed 1                                # mpe/simple_spread, tier mixed; --help: every flag
    python osd_mpe.py --decomposition independent --seed 1    # the ablation: every prefix mask 0
    tensorboard --logdir runs
"""

import functools
import math
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

import osd_common

PROGRAM = "osd_mpe"


# ---- Arguments
@dataclass
class Args:
    exp_name: str = "osd_mpe"  # the name of this experiment (part of the run name)
    seed: int = 1  # seed of python, numpy, torch and the batch sampler (at least 0)
    torch_deterministic: bool = True  # if toggled, `torch.backends.cudnn.deterministic=True`
    device: Literal["auto", "cpu", "cuda"] = "auto"  # where to train: auto picks cuda when torch sees one
    torch_threads: int = 0  # CPU threads for torch (0: torch's default); pass 1 when other jobs share the cores
    # data
    task: str = "mpe/simple_spread"  # mpe/simple_spread, mpe/simple_tag, mpe/simple_world_comm; a team of 4: <task>-N4
    tier: str = "mixed"  # the dataset tier, one of osd_common.TIERS (`python datasets/generate.py --help`)
    dataset: str | None = None  # path to a dataset .npz; overrides --task/--tier (the task is read from the data)
    build_dataset: bool = True  # build a named dataset missing from the cache (about a minute)
    # algorithm variant
    decomposition: Literal["sequential", "independent"] = "sequential"  # independent: no prefix (the ablation)
    random_order: bool = False  # sample a new agent order per batch, in behavior training and actor updates (§3)
    behavior_condition: Literal["state", "obs"] = "state"  # behavior model sees the global state or the own obs
    # budgets: None takes the value of --preset (PRESETS)
    preset: Literal["default", "paper"] = "default"  # default (about 30 min on 2 CPU cores) or the authors' (§6)
    pretrain_steps: int | None = None  # phase-1 steps of the behavior model (None: --preset's)
    critic_steps: int | None = None  # phase-1 steps of the critics (None: --preset's)
    policy_steps: int | None = None  # phase-2 actor steps (None: --preset's)
    eval_every: int | None = None  # evaluate every this many actor steps (None: --preset's)
    eval_episodes: int | None = None  # episodes per evaluation during training (None: --preset's)
    final_eval_episodes: int | None = None  # episodes of the final evaluation and of --eval-only (None: --preset's)
    behavior_batch_size: int | None = None  # behavior-model batch size (None: --preset's)
    critic_batch_size: int | None = None  # critic batch size (None: --preset's)
    actor_batch_size: int | None = None  # actor batch size (None: --preset's)
    # networks and optimizers
    score_width: int = 256  # width of the behavior score network
    score_blocks: int = 2  # residual blocks of the behavior score network
    hidden_dim: int = 256  # width of the critics' and actors' 2-layer MLPs
    behavior_lr: float = 3e-4  # AdamW learning rate of the behavior model (cosine decay to 1e-5)
    critic_lr: float = 3e-4  # Adam learning rate of Q and V
    actor_lr: float = 3e-4  # Adam learning rate of each actor (cosine decay to 0)
    # critics (§4)
    gamma: float = 0.99  # discount factor
    expectile: float | None = None  # IQL expectile of V's regression on min_k Q_target; None: the tier's, EXPECTILE_BY_TIER
    tau: float = 0.005  # Polyak rate of the target Q
    # value-weighted behavior fine-tune after phase 1 (our addition, docs/algorithm.md §6)
    value_weighted_steps: int | None = None  # phase 1b: behavior steps on batches drawn by Q (0: off; None: VALUE_WEIGHTED_STEPS_BY_TIER)
    value_weighted_temperature: float = 0.07  # phase 1b's T: weights min(exp(z / T), 100), z = Q(s, a) standardized over the data
    # actors (§5)
    beta: float | None = None  # weight (at least 0) of the Q term in (5.2); None: the tier's, BETA_BY_TIER
    q_normalization: Literal["batch", "sample", "none"] = "batch"  # Q gradient to RMS 1 per agent or sample
    t_min: float = 0.02  # smallest diffusion time sampled for the actor's behavior regularizer
    t_max: float = 0.98  # largest diffusion time sampled for the actor's behavior regularizer
    subtract_noise: bool = False  # use eps_hat - eps in (5.2) (SRPO's lower-variance form) instead of eps_hat
    weighting: Literal["sigma2", "score", "uniform"] = "score"  # w(t): alpha_t/sigma_t, sigma_t^2 or 1 (§5)
    # logging, checkpoints, evaluation
    log_every: int = 500  # log losses every this many steps
    save_model: bool = True  # save a checkpoint at the end of training
    checkpoint_dir: str = "checkpoints"  # where checkpoints go (<dir>/<run_name>.pt)
    eval_only: bool = False  # skip training: evaluate --checkpoint, with the seed it was trained with
    checkpoint: str | None = None  # checkpoint to evaluate with --eval-only
    pretrained: str | None = None  # skip phase 1: reuse this checkpoint's behavior model and critics (same data)
    capture_video: bool = False  # with --eval-only: save one rendered episode as videos/<checkpoint name>.gif
    record: str | None = None  # write the run record (osd_common.RECORD_SCHEMA) to this JSON file


PRESETS = {
    "default": dict(pretrain_steps=50_000, critic_steps=50_000, policy_steps=20_000, eval_every=2_000,
                    eval_episodes=10, final_eval_episodes=100, behavior_batch_size=256, critic_batch_size=256, actor_batch_size=256),
    # the authors' budgets for MPE (docs/algorithm.md §3, §4, §6)
    "paper": dict(pretrain_steps=2_000_000, critic_steps=500_000, policy_steps=100_000, eval_every=500,
                  eval_episodes=10, final_eval_episodes=100, behavior_batch_size=512, critic_batch_size=1024, actor_batch_size=512),
}


# Per-tier defaults, chosen on tuning seed 0 where measured (docs/osd_mpe_notes.md §8.1, §12, §14.1, §14.3;
# docs/q_term_notes.md §5.8.2, §5.9.2). A key is a tier (every MPE task) or a (task, tier) pair (that task only;
# it wins over the tier's): a value measured on one task is not assumed for the others.
# The Q term's weight: 0.01 where the regularizer must keep the expert conventions apart (mixed-expert-noisy,
# chosen there; the balanced tiers took it untuned), 0.3 on `mixed`, whose medium and random episodes leave room
# for the critic, and 1.0 on tag `random` with the 0.9 expectile below; every other tier keeps 0.3 until measured.
BETA_BY_TIER = {"mixed": 0.3, "balanced": 0.01, "mixed-balanced": 0.01, "mixed-expert-noisy": 0.01,
                ("mpe/simple_tag", "random"): 1.0}
DEFAULT_BETA = 0.3
# IQL's expectile: on tag's uniform data V at 0.7 is about the value of acting at random from the next step,
# and the Q term has nothing to climb; at 0.9 it leans toward the best actions the data holds.
EXPECTILE_BY_TIER = {("mpe/simple_tag", "random"): 0.9}
DEFAULT_EXPECTILE = 0.7
# Phase 1b's steps (docs/algorithm.md §6), 0 elsewhere: on for spread `mixed`; tag and world `mixed` unmeasured.
VALUE_WEIGHTED_STEPS_BY_TIER = {("mpe/simple_spread", "mixed"): 10_000}


# ---- Diffusion: VP-SDE (docs/algorithm.md §3)
BETA_MIN, BETA_MAX = 0.1, 20.0
BEHAVIOR_T_MIN = 1e-3  # t ~ U(1e-3, 1) in behavior training (§3)


def vp_alpha_sigma(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_t and sigma_t of the VP-SDE with a linear beta schedule: x_t = alpha_t a + sigma_t eps."""
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


# ---- Sequential decomposition: who conditions on whom (docs/algorithm.md §2)
def prefix_masks(n_agents: int, decomposition: str, order: list[int] | None = None) -> torch.Tensor:
    """m[i, j] = 1 iff agent j acts before agent i in `order` (sequential); all zeros (independent).
    `order` lists agent ids in the order they act (default 0..N-1); a worked example: docs/algorithm.md §2."""
    if decomposition == "independent":
        return torch.zeros(n_agents, n_agents)
    if decomposition != "sequential":
        raise ValueError(f"unknown decomposition {decomposition!r}; valid: sequential, independent")
    order = list(range(n_agents)) if order is None else list(order)
    position = torch.empty(n_agents)
    position[torch.tensor(order)] = torch.arange(n_agents, dtype=torch.float32)
    return (position[None, :] < position[:, None]).float()


def prefix_condition(prefix_actions: torch.Tensor, prefix_mask: torch.Tensor) -> torch.Tensor:
    """c_i = (a_j * m_ij, m_ij)_j for every agent i: the clean actions of i's predecessors (the others
    zeroed) followed by the mask row itself. prefix_actions [B, N, A]; prefix_mask [N, N] or [B, N, N].
    Returns [B, N, N*A + N]. With independent masks (all 0) every c_i is 0: the marginal ablation."""
    batch, n_agents = prefix_actions.shape[:2]
    mask = prefix_mask.expand(batch, n_agents, n_agents)
    masked_prefix = prefix_actions[:, None, :, :] * mask[..., None]  # [B, N(i), N(j), A]
    return torch.cat([masked_prefix.flatten(2), mask], dim=-1)


# ---- Behavior model: one conditional noise predictor for all agents (docs/algorithm.md §3)
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


class BehaviorScoreNet(nn.Module):
    """eps_psi(x_t, t | cond_i, c_i, i) for every agent i of a batch at once (docs/algorithm.md §3): from agent i's
    noised action x_t, the time t, a condition (the global state or its own obs), the prefix c_i and a one-hot id,
    it predicts the noise eps; the score of the diffused conditional behavior is -eps_psi / sigma_t."""

    def __init__(self, n_agents: int, act_dim: int, cond_dim: int, width: int = 256, n_blocks: int = 2,
                 time_dim: int = 64):
        super().__init__()
        self.n_agents, self.act_dim = n_agents, act_dim
        # a small MLP on the Fourier features (as SRPO's), narrower than the trunk: it runs per (sample, agent)
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
        prefix = prefix_condition(prefix_actions, prefix_mask)  # c_i: agent i sees only its predecessors
        agent_id = self.agent_ids.expand(batch, -1, -1)
        h = self.input_projection(torch.cat([noised_actions, condition, prefix, agent_id], dim=-1))
        h = h + self.time_embedding(t)
        return self.head(self.blocks(h))


def behavior_loss(score_net: BehaviorScoreNet, actions: torch.Tensor, condition: torch.Tensor,
                  prefix_mask: torch.Tensor, act_mask: torch.Tensor) -> torch.Tensor:
    """Denoising score matching over the batch, the agents and t ~ U(1e-3, 1); actions [B, N, A] (zero-padded)."""
    batch, n_agents, _ = actions.shape
    t = torch.rand(batch, n_agents, device=actions.device) * (1.0 - BEHAVIOR_T_MIN) + BEHAVIOR_T_MIN
    alpha, sigma = vp_alpha_sigma(t)
    noise = torch.randn_like(actions) * act_mask
    noised = alpha[..., None] * actions + sigma[..., None] * noise
    predicted = score_net(noised, t, condition, actions, prefix_mask) * act_mask
    # docs/algorithm.md §3, eq. (3.1): E || eps_psi(alpha_t a_i + sigma_t eps, t | s, c_i, i) - eps ||^2
    return ((predicted - noise) ** 2).sum(-1).mean()


# ---- Critics: twin joint-action Q and V, trained in-sample with IQL (docs/algorithm.md §4)
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


def value_loss(v_net: ValueNet, q_target: TwinQ, state: torch.Tensor, joint_actions: torch.Tensor, expectile: float):
    """Expectile regression of V(s) on min_k Q_target(s, a) with dataset actions."""
    with torch.no_grad():
        target = torch.min(*q_target(state, joint_actions))
    diff = target - v_net(state)
    # docs/algorithm.md §4: |tau - 1(diff < 0)| diff^2 (IQL's expectile loss)
    weight = torch.abs(expectile - (diff < 0).float())
    return (weight * diff**2).mean()


def q_loss(q_net: TwinQ, v_net: ValueNet, state, joint_actions, reward, next_state, terminal, gamma: float):
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


VALUE_WEIGHT_MAX = 100.0  # IQL's cap on exponential weights: no few transitions take over the batches
VALUE_WEIGHTED_LR = 1e-4  # constant AdamW rate of the fine-tune (phase 1 ended its cosine at 1e-5)


def value_sampling_weights(q_data: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per transition, min(exp(z / T), VALUE_WEIGHT_MAX) with z = (Q - median Q) / std Q over the data:
    the higher the critic values a transition, the more often phase 1b draws it (docs/algorithm.md §6, eq. (6.1)).
    Standardizing makes T the same on every reward scale."""
    z = (q_data - q_data.median()) / q_data.std().clamp_min(1e-8)
    return torch.exp(torch.clamp(z / temperature, max=math.log(VALUE_WEIGHT_MAX))).clamp_max(VALUE_WEIGHT_MAX)


# ---- Actors: deterministic decentralized policies and the score-regularized loss (docs/algorithm.md §5)
Q_NORMALIZATIONS = ("batch", "sample", "none")  # how actor_loss scales the Q gradient g (Args.q_normalization)
ACTION_BOUND = 0.99  # an action entry with |a| above this counts as saturated at the tanh bound (diagnostics)
ACTOR_DIAGNOSTICS = {"score_push_rms": "losses", "q_push_rms": "losses", "action_at_bounds": "charts"}  # -> section


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
               subtract_noise: bool = False, diagnostics: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over agents of L_i in (5.2), every agent of the batch at once.

    Returns the loss (its gradient reaches each actor only through its own a_i) and detached parts for
    logging: the score term, the Q term and Q(s, a_cur). With `diagnostics`, also per-agent [N] tensors
    (ACTOR_DIAGNOSTICS): the RMS of the two pushes on a_i, w(t) eps_hat and beta g, over the batch and the
    agent's real action dims, and the share of action entries with |a| > ACTION_BOUND (no random numbers).
    """
    if q_normalization not in Q_NORMALIZATIONS:
        raise ValueError(f"unknown q_normalization {q_normalization!r}; valid: {', '.join(Q_NORMALIZATIONS)}")
    live_actions = joint_action(actors, observations, act_mask.shape[-1])  # a_i = pi_i(o_i), with grad
    # a_cur: the actors' joint action, detached. It conditions agent i's score on its predecessors' current
    # actions, but no gradient flows back to them through it: our choice (docs/algorithm.md §5)
    current_actions = live_actions.detach()
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


# ---- Networks: all of a run's, sized from its dataset's (or checkpoint's) meta
def build_networks(meta: dict, args: Args, device) -> dict[str, nn.Module]:
    """Every network of the algorithm; used by training, --eval-only and the diagnostics in benchmarks/."""
    n_agents, obs_dims, act_dims, state_dim = meta["n_agents"], meta["obs_dims"], meta["act_dims"], meta["state_dim"]
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


# ---- Main: data, phase 1 (behavior model + critics), phase 2 (actors), checkpoint and record
if __name__ == "__main__":
    args = osd_common.resolve_budgets(PROGRAM, tyro.cli(Args), PRESETS)
    wall_start = time.time()
    device = osd_common.seed_and_device(PROGRAM, args)
    if args.eval_only:  # the checkpoint's networks, rebuilt with its own Args, evaluated with its own seed
        osd_common.run_eval_only(PROGRAM, args, device, Args, build_networks)
        raise SystemExit(0)

    # ---- data: a named MPE dataset (built on first use) or your own file; the env follows the data
    data = osd_common.load_training_data(PROGRAM, args, osd_common.MPE_TASKS)  # sets args.task, args.tier
    meta = data.meta
    # OMAR's MPE data trains but has no env here: no evaluation (and no --record)
    evaluable = osd_common.check_env_fits_data(PROGRAM, data, args.task, args.record is not None)

    algorithm = osd_common.omsd_algorithm_name(args)  # from the flags, before the tier's beta fills in
    def tier_default(table: dict, default):  # the (task, tier) entry, else the tier's, else the default
        return table.get((args.task, meta.get("tier")), table.get(meta.get("tier"), default))

    if args.beta is None:  # the tier's defaults unless the flag is given
        args.beta = tier_default(BETA_BY_TIER, DEFAULT_BETA)
    if args.expectile is None:
        args.expectile = tier_default(EXPECTILE_BY_TIER, DEFAULT_EXPECTILE)
    if args.value_weighted_steps is None:
        args.value_weighted_steps = tier_default(VALUE_WEIGHTED_STEPS_BY_TIER, 0)
    # ---- the data on the training device, standardized once with dataset statistics (docs/algorithm.md §6)
    run_name = f"{args.task.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"
    n_agents, n_transitions = meta["n_agents"], len(data.rewards)
    obs_normalizer = osd_common.Normalizer(data.observations.mean(0), data.observations.std(0))
    state_normalizer = osd_common.Normalizer(data.states.mean(0), data.states.std(0))

    # the whole dataset moves to the device once: a batch is then a gather there, not a copy per step
    to_tensor = functools.partial(torch.as_tensor, dtype=torch.float32, device=device)
    observations = to_tensor(obs_normalizer(data.observations) * data.obs_mask)  # padding stays exactly 0
    states, next_states = to_tensor(state_normalizer(data.states)), to_tensor(state_normalizer(data.next_states))
    actions, rewards, terminals = to_tensor(data.actions), to_tensor(data.rewards), to_tensor(data.terminals)
    act_mask = torch.as_tensor(data.act_mask, device=device)
    batch_rng = np.random.default_rng(args.seed)  # the batch sampler: seeded, independent of torch

    def sample_indices(batch_size: int) -> torch.Tensor:
        return torch.as_tensor(batch_rng.integers(0, n_transitions, size=batch_size), device=device)

    def behavior_condition(state: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Per-agent condition [B, N, C]: the global state for every agent, or each agent's own obs."""
        return state[:, None, :].expand(-1, n_agents, -1) if args.behavior_condition == "state" else obs

    fixed_prefix_mask = prefix_masks(n_agents, args.decomposition).to(device)

    def batch_prefix_mask() -> torch.Tensor:
        """The prefix masks of this batch: the fixed order 0..N-1, or a new order per batch (--random-order)."""
        if not args.random_order:
            return fixed_prefix_mask
        return prefix_masks(n_agents, args.decomposition, batch_rng.permutation(n_agents).tolist()).to(device)

    nets = build_networks(meta, args, device)
    score_net, q_net, q_target, v_net, actors = (nets[k] for k in ("score_net", "q_net", "q_target", "v_net", "actors"))
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", osd_common.hyperparameter_table(args))
    print(f"{PROGRAM}: {run_name}; dataset {data.path} ({n_transitions} transitions); device {device}")

    # ---- phase 1: behavior model and critics train together (docs/algorithm.md §6)
    fused = {"fused": True} if device.type == "cuda" else {}  # CUDA: one kernel updates a whole network
    behavior_optimizer = torch.optim.AdamW(score_net.parameters(), lr=args.behavior_lr, **fused)
    behavior_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(behavior_optimizer, max(args.pretrain_steps, 1), eta_min=1e-5)
    q_optimizer = torch.optim.Adam(q_net.parameters(), lr=args.critic_lr, **fused)
    v_optimizer = torch.optim.Adam(v_net.parameters(), lr=args.critic_lr, **fused)
    phase1_steps = max(args.pretrain_steps, args.critic_steps)
    value_weighted_steps = args.value_weighted_steps  # phase 1b's steps in this run
    if args.pretrained is not None:  # phase 1 of another run on the same data, with the same networks
        must_match = ("decomposition", "random_order", "behavior_condition", "score_width", "score_blocks", "hidden_dim", "expectile")
        pretrained = osd_common.load_pretrained(PROGRAM, args.pretrained, meta, data.path, args, must_match, device)
        for name in ("score_net", "q_net", "q_target", "v_net"):
            nets[name].load_state_dict(pretrained[name])
        args.pretrain_steps = args.critic_steps = phase1_steps = 0
        # a behavior model fine-tuned in that run (phase 1b) is reused as it is, never fine-tuned twice
        finetuned_before = (pretrained["args"].get("value_weighted_steps") or 0,
                            pretrained["args"].get("value_weighted_temperature"))
        if finetuned_before[0] > 0:
            if (args.value_weighted_steps, args.value_weighted_temperature) != finetuned_before:
                raise SystemExit(f"{PROGRAM}: --pretrained {args.pretrained} holds a behavior model fine-tuned with "
                                 f"--value-weighted-steps {finetuned_before[0]} --value-weighted-temperature "
                                 f"{finetuned_before[1]}; pass the same two flags, or a checkpoint without a fine-tune")
            value_weighted_steps = 0
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
            # one batch serves both models when their batch sizes match: cheaper, the same in expectation
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
            osd_common.check_finite(PROGRAM, losses, step, "phase-1")
            sps = int((step + 1) / (time.time() - start_time))
            for name, value in losses.items():
                writer.add_scalar(f"losses/{name}", value, step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.set_postfix({**{k: f"{v:.3g}" for k, v in losses.items()}, "SPS": sps})
    progress.close()
    phase1_time = time.time() - start_time
    print(f"phase 1 done: {phase1_steps} steps in {phase1_time:.0f}s (SPS {phase1_steps / max(phase1_time, 1e-9):.0f})")

    # ---- phase 1b (optional, our addition): the behavior model fine-tuned on value-weighted batches
    # (docs/algorithm.md §6). Where the data pool teams of different skill, the behavior model holds each
    # team's actions on its own states, and the regularizer pulls the actors to whichever team a state
    # resembles; the Q term, a gradient at the actors' own action, cannot move them across. Drawing the
    # fine-tune's batches by the critic's value of each transition shifts the behavior model toward the
    # transitions of the better team before the actors are trained.
    if value_weighted_steps > 0:
        with torch.no_grad():  # Q at the data's actions, mean of the target twins (as in the actors' loss)
            q_data = torch.cat([0.5 * sum(q_target(states[i:i + 65_536], actions[i:i + 65_536]))
                                for i in range(0, n_transitions, 65_536)])
        weights = value_sampling_weights(q_data, args.value_weighted_temperature).double().cpu().numpy()
        cumulative = np.cumsum(weights)
        effective = cumulative[-1] ** 2 / np.sum(weights**2) / n_transitions  # Kish's effective sample share
        print(f"phase 1b: {value_weighted_steps} behavior steps on value-weighted batches (T "
              f"{args.value_weighted_temperature}); effective sample share {effective:.2f}")
        writer.add_scalar("charts/value_weighted_effective_share", effective, phase1_steps)
        finetune_optimizer = torch.optim.AdamW(score_net.parameters(), lr=VALUE_WEIGHTED_LR, **fused)
        start_time = time.time()
        progress = tqdm(range(value_weighted_steps), desc="phase 1b: value-weighted behavior", smoothing=0.05)
        for step in progress:
            drawn = np.searchsorted(cumulative, batch_rng.random(args.behavior_batch_size) * cumulative[-1], side="right")
            idx = torch.as_tensor(np.minimum(drawn, n_transitions - 1), device=device)
            obs_b, state_b = observations.index_select(0, idx), states.index_select(0, idx)
            loss = behavior_loss(score_net, actions.index_select(0, idx), behavior_condition(state_b, obs_b),
                                 batch_prefix_mask(), act_mask)
            finetune_optimizer.zero_grad()
            loss.backward()
            finetune_optimizer.step()
            if (step + 1) % args.log_every == 0 or step == value_weighted_steps - 1:
                losses = {"value_weighted_behavior": loss.item()}
                osd_common.check_finite(PROGRAM, losses, step, "phase-1b")
                writer.add_scalar("losses/value_weighted_behavior", losses["value_weighted_behavior"], phase1_steps + step)
                progress.set_postfix({"loss": f"{losses['value_weighted_behavior']:.3g}"})
        progress.close()
        phase1_time += time.time() - start_time
        print(f"phase 1b done: {value_weighted_steps} steps in {time.time() - start_time:.0f}s")

    # ---- phase 2: actors against the frozen behavior model and critics (docs/algorithm.md §5, §6)
    for net in (score_net, q_target, v_net, q_net):
        net.eval()
        net.requires_grad_(False)
    actor_optimizers = [torch.optim.Adam(actor.parameters(), lr=args.actor_lr, **fused) for actor in actors]
    actor_schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(args.policy_steps, 1)) for opt in actor_optimizers]
    eval_seed = args.seed + 10_000  # evaluation episodes differ from any seed used in training
    best_score, last_score, eval_history, eval_time = -math.inf, float("nan"), [], 0.0
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
            osd_common.check_finite(PROGRAM, losses, step, "phase-2")
            sps = int((step + 1) / (time.time() - start_time))
            for name, value in losses.items():
                writer.add_scalar(f"losses/{name}", value, step)
            actor_diagnostics = {name: parts[name].tolist() for name in ACTOR_DIAGNOSTICS}  # per agent
            for name, section in ACTOR_DIAGNOSTICS.items():
                for agent, value in enumerate(actor_diagnostics[name]):
                    writer.add_scalar(f"{section}/{name}_agent{agent}", value, step)
            writer.add_scalar("charts/actor_SPS", sps, step)
            writer.add_scalar("charts/SPS", sps, phase1_steps + step)
            progress.set_postfix({"score": f"{losses['actor_score']:.3g}", "Q": f"{-losses['actor_q']:.3g}", "SPS": sps})
        if evaluable and ((step + 1) % args.eval_every == 0 or step == args.policy_steps - 1):
            eval_start = time.time()
            # the last evaluation is the recorded final score: more episodes, less evaluation noise
            episodes = args.final_eval_episodes if step == args.policy_steps - 1 else args.eval_episodes
            result = osd_common.evaluate_actors(actors, obs_normalizer, device, episodes, eval_seed, meta)
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

    # ---- checkpoint (networks, normalizers, Args, dataset meta) and run record
    normalizers = {"obs": obs_normalizer, "state": state_normalizer}
    checkpoint = osd_common.save_checkpoint(args, run_name, nets, normalizers, meta, final_normalized_score=last_score,
                                            best_normalized_score=best_score) if args.save_model else None
    if args.record is not None:
        osd_common.write_record(args.record, osd_common.make_record(
            algorithm=algorithm, args=args, meta=meta, dataset_path=data.path,
            seed=args.seed, eval_history=eval_history, updates=phase1_steps + args.policy_steps, train_time_s=train_time,
            wall_time_s=time.time() - wall_start, device=device, run_name=run_name, checkpoint=checkpoint,
            actor_diagnostics=actor_diagnostics))
        print(f"saved run record {args.record}")
    writer.close()
