"""A one-step game whose best action only the critic knows: a check that OMSD's Q term works.

docs/algorithm.md §5, eq. (5.2). Two agents act in [-1, 1] (one action dim each) on a context
s ~ N(0, I_2) that both see (o_1 = o_2 = s) and the reward ignores. The data's joint actions are uniform
over the action box, so the behavior regularizer prefers no action inside it: the uniform density is flat
there, and once noised its score points to the box's centre. The reward
r = -(a_1 - 0.5)^2 - (a_2 + 0.3)^2 has one optimum, inside the box at (0.5, -0.3), away from the centre.
Actors can reach it only by following the critic's gradient: with a suitable beta they end near it, with
beta 0 (no Q term) they do not, and with the sign of the Q term flipped they run away from it.

A didactic game: it imports every algorithmic piece from osd_mpe.py: BehaviorScoreNet with behavior_loss,
TwinQ/ValueNet with q_loss and value_loss, Actor with actor_loss; only the data, the reward and the loop sizes
are the game's.
tests/test_q_optimum_game.py runs it.

    python benchmarks/q_optimum_game.py                                       # beta 0 and the game's beta
    python benchmarks/q_optimum_game.py --betas 0 0.03 0.1 0.3 1 --q-normalization sample --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from osd_mpe import (  # noqa: E402
    Q_NORMALIZATIONS, Actor, Args, BehaviorScoreNet, TwinQ, ValueNet, actor_loss, behavior_loss, prefix_masks, q_loss,
    value_loss)

N_AGENTS, CONTEXT_DIM = 2, 2
OPTIMUM = (0.5, -0.3)  # the reward's one maximum, inside the action box


@dataclass
class GameConfig:
    seed: int = 0
    beta: float = 0.3  # osd_mpe.py's DEFAULT_BETA
    q_normalization: str = Args.q_normalization
    # the actor's score regularizer: osd_mpe.py's defaults
    t_min: float = Args.t_min
    t_max: float = Args.t_max
    weighting: str = Args.weighting
    n_data: int = 4096
    batch_size: int = 256
    width: int = 64  # of the behavior net, the critics and the actors
    behavior_steps: int = 400
    critic_steps: int = 1000  # the actors go to the critic's argmax, so the critic must place it well
    actor_steps: int = 300
    actor_lr: float = 1e-3
    eval_contexts: int = 1000


def game_reward(actions: torch.Tensor) -> torch.Tensor:
    """r = -(a_1 - 0.5)^2 - (a_2 + 0.3)^2 for joint actions [n, 2, 1]."""
    optimum = torch.tensor(OPTIMUM)
    return -((actions[..., 0] - optimum) ** 2).sum(-1)


def as_condition(context: torch.Tensor) -> torch.Tensor:
    """The global state (= the context) for every agent: [B, C] -> [B, N, C]."""
    return context[:, None, :].expand(-1, N_AGENTS, -1)


def train_models(cfg: GameConfig) -> dict:
    """Phase 1 on uniform data."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    contexts = torch.randn(cfg.n_data, CONTEXT_DIM, generator=generator)
    actions = (torch.rand(cfg.n_data, N_AGENTS, 1, generator=generator) * 2 - 1)  # uniform over the box
    return train_phase1(cfg, contexts, actions, game_reward(actions), generator)


def train_phase1(cfg, contexts: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor,
                 generator: torch.Generator) -> dict:
    """Phase 1 of a one-step game on its data: the behavior model (sequential masks) and the critics. Every
    transition is terminal, so Q regresses on the reward. `cfg` gives the sizes (n_data, batch_size, width,
    behavior_steps, critic_steps)."""
    mask, act_mask = prefix_masks(N_AGENTS, "sequential"), torch.ones(N_AGENTS, 1)
    score_net = BehaviorScoreNet(N_AGENTS, 1, CONTEXT_DIM, width=cfg.width, n_blocks=2)
    q_net, q_target = TwinQ(CONTEXT_DIM, N_AGENTS, cfg.width), TwinQ(CONTEXT_DIM, N_AGENTS, cfg.width)
    v_net = ValueNet(CONTEXT_DIM, cfg.width)
    behavior_optimizer = torch.optim.Adam(score_net.parameters(), lr=1e-3)
    q_optimizer = torch.optim.Adam(q_net.parameters(), lr=1e-3)
    v_optimizer = torch.optim.Adam(v_net.parameters(), lr=1e-3)
    terminal = torch.ones(cfg.batch_size)
    for step in range(max(cfg.behavior_steps, cfg.critic_steps)):
        idx = torch.randint(0, cfg.n_data, (cfg.batch_size,), generator=generator)
        if step < cfg.behavior_steps:
            loss = behavior_loss(score_net, actions[idx], as_condition(contexts[idx]), mask, act_mask)
            behavior_optimizer.zero_grad()
            loss.backward()
            behavior_optimizer.step()
        if step < cfg.critic_steps:
            loss_v = value_loss(v_net, q_target, contexts[idx], actions[idx], 0.7)
            v_optimizer.zero_grad()
            loss_v.backward()
            v_optimizer.step()
            loss_q = q_loss(q_net, v_net, contexts[idx], actions[idx], rewards[idx], contexts[idx], terminal, 0.99)
            q_optimizer.zero_grad()
            loss_q.backward()
            q_optimizer.step()
            q_target.load_state_dict(q_net.state_dict())  # one step: no bootstrapping to stabilize
    score_net.requires_grad_(False)
    q_target.requires_grad_(False)
    return {"score_net": score_net, "q_target": q_target, "contexts": contexts}


def train_actors(cfg: GameConfig, models: dict, actor_seed: int) -> nn.ModuleList:
    """Phase 2: two decentralized actors on the context, against the frozen models, eq. (5.2)."""
    torch.manual_seed(actor_seed)
    generator = torch.Generator().manual_seed(actor_seed)
    contexts, mask, act_mask = models["contexts"], prefix_masks(N_AGENTS, "sequential"), torch.ones(N_AGENTS, 1)
    actors = nn.ModuleList([Actor(CONTEXT_DIM, 1, cfg.width) for _ in range(N_AGENTS)])
    actor_optimizers = [torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr) for actor in actors]
    for _ in range(cfg.actor_steps):
        context = contexts[torch.randint(0, cfg.n_data, (cfg.batch_size,), generator=generator)]
        loss, _ = actor_loss(actors, models["score_net"], models["q_target"], as_condition(context), context,
                             as_condition(context), mask, act_mask, cfg.beta, cfg.t_min, cfg.t_max, cfg.weighting,
                             cfg.q_normalization)
        for opt in actor_optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in actor_optimizers:
            opt.step()
    return actors


@torch.no_grad()
def evaluate_actors(cfg: GameConfig, actors: nn.ModuleList, seed: int) -> dict:
    """Per agent, the mean action and the mean |a_i - optimum_i| over held-out contexts."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    contexts = torch.randn(cfg.eval_contexts, CONTEXT_DIM, generator=generator)
    result = {}
    for i, actor in enumerate(actors):
        action = actor(contexts)[:, 0]
        result[f"agent{i + 1}_mean_action"] = action.mean().item()
        result[f"agent{i + 1}_error"] = (action - OPTIMUM[i]).abs().mean().item()
    result["max_error"] = max(result[f"agent{i + 1}_error"] for i in range(N_AGENTS))
    return result


def run_game(cfg: GameConfig, betas: tuple[float, ...], actor_seed: int = 0) -> dict[float, dict]:
    """One behavior model and critic (seed cfg.seed), then one actor pair per beta from the same seed."""
    models = train_models(cfg)
    results = {}
    for beta in betas:
        beta_cfg = GameConfig(**{**asdict(cfg), "beta": beta})
        results[beta] = evaluate_actors(beta_cfg, train_actors(beta_cfg, models, 1000 * cfg.seed + actor_seed),
                                        actor_seed)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = GameConfig()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="behavior-model/critic seeds")
    parser.add_argument("--betas", type=float, nargs="+", default=[0.0, defaults.beta])
    parser.add_argument("--q-normalization", default=defaults.q_normalization, choices=Q_NORMALIZATIONS)
    parser.add_argument("--weighting", default=defaults.weighting, choices=["sigma2", "score", "uniform"])
    for name in ("behavior_steps", "critic_steps", "actor_steps"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    cli = parser.parse_args()
    torch.set_num_threads(1)
    print(f"optimum {OPTIMUM}; error = mean |a_i - optimum_i| over {defaults.eval_contexts} held-out contexts")
    print("| seed | beta | agent 1 mean action | agent 2 mean action | agent 1 error | agent 2 error |")
    print("|---|---|---|---|---|---|")
    for seed in cli.seeds:
        cfg = GameConfig(seed=seed, q_normalization=cli.q_normalization, weighting=cli.weighting,
                         behavior_steps=cli.behavior_steps, critic_steps=cli.critic_steps,
                         actor_steps=cli.actor_steps)
        start = time.time()
        for beta, r in run_game(cfg, tuple(cli.betas)).items():
            print(f"| {seed} | {beta:g} | {r['agent1_mean_action']:+.3f} | {r['agent2_mean_action']:+.3f} | "
                  f"{r['agent1_error']:.3f} | {r['agent2_error']:.3f} |", flush=True)
        print(f"(seed {seed}: {time.time() - start:.0f}s)", file=sys.stderr, flush=True)
    print("config:", {k: v for k, v in asdict(cfg).items() if k not in ("seed", "beta")})


if __name__ == "__main__":
    main()
