"""A two-agent, one-step coordination game where only the behavior model can teach coordination.

docs/algorithm.md §7. Each sample is a random context s ~ N(0, I_4), seen by both agents (o_1 = o_2 = s).
The data holds two equally good joint modes, (+m, +m) and (-m, -m) with m = 0.6 and a little noise,
each with probability 1/2 whatever the context, and NOTHING else: no mismatched joint action is ever
in the data. The reward -sum_i (|a_i| - m)^2 depends on each |a_i| alone, so it is the same for a
matched and a mismatched joint action, and the learned critic cannot tell them apart. Evaluation,
on held-out contexts, counts a context as *coordinated* when both actors' actions sit in the same mode
(|a_i| > m / 2, same sign) and *mis-coordinated* when they sit in opposite modes.

A didactic game: it imports every piece from osd_mpe.py: BehaviorScoreNet with behavior_loss, TwinQ/ValueNet
with q_loss and value_loss, Actor with actor_loss (eq. (5.2)); only the data and the loop sizes are the game's.

    python benchmarks/coordination_game.py                        # defaults of osd_mpe.py, 5 seeds
    python benchmarks/coordination_game.py --t-max 0.98 --weighting sigma2 --seeds 0 1 2
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


@dataclass
class GameConfig:
    decomposition: str = "sequential"
    seed: int = 0
    # the actor's score regularizer: osd_mpe.py's defaults unless a flag says otherwise
    t_min: float = Args.t_min
    t_max: float = Args.t_max
    weighting: str = Args.weighting
    beta: float = 0.05  # the game's own: a small Q push, so that the regularizer decides the mode
    q_normalization: str = Args.q_normalization
    context_dim: int = 4
    context_scale: float = 1.0  # contexts ~ N(0, scale^2 I)
    mode: float = 0.6  # the two joint modes are (+mode, +mode) and (-mode, -mode)
    noise: float = 0.1  # std of the data around each mode
    n_data: int = 4096
    batch_size: int = 256
    width: int = 128  # of the behavior net and of the actors
    behavior_steps: int = 1000
    critic_steps: int = 300
    actor_steps: int = 400
    actor_lr: float = 1e-3
    eval_contexts: int = 1000


N_AGENTS = 2


def game_data(n: int, cfg: GameConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Contexts [n, C], matched joint actions [n, 2, 1] and the |a_i|-only reward [n]."""
    contexts = cfg.context_scale * torch.randn(n, cfg.context_dim, generator=generator)
    sign = torch.randint(0, 2, (n, 1), generator=generator).float() * 2 - 1  # one mode per sample, shared
    actions = (sign * cfg.mode + cfg.noise * torch.randn(n, 2, generator=generator)).clamp(-1, 1)[..., None]
    return contexts, actions, game_reward(actions)


def game_reward(actions: torch.Tensor) -> torch.Tensor:
    """Blind to coordination: the same for (+m, +m) and (+m, -m)."""
    return -((actions.abs() - 0.6) ** 2).sum(dim=(1, 2))


def train_models(cfg: GameConfig) -> dict:
    """Phase 1 on the game's data: behavior model (masks of cfg.decomposition) and critics. The game has
    one step, so every transition is terminal and Q regresses on the reward."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    contexts, actions, rewards = game_data(cfg.n_data, cfg, generator)
    mask, act_mask = prefix_masks(N_AGENTS, cfg.decomposition), torch.ones(N_AGENTS, 1)
    score_net = BehaviorScoreNet(N_AGENTS, 1, cfg.context_dim, width=cfg.width, n_blocks=2)
    q_net, q_target = TwinQ(cfg.context_dim, N_AGENTS), TwinQ(cfg.context_dim, N_AGENTS)
    v_net = ValueNet(cfg.context_dim)
    behavior_optimizer = torch.optim.Adam(score_net.parameters(), lr=1e-3)
    behavior_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(behavior_optimizer, cfg.behavior_steps)
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
            behavior_schedule.step()
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


def as_condition(context: torch.Tensor) -> torch.Tensor:
    """The global state (= the context) for every agent: [B, C] -> [B, N, C]."""
    return context[:, None, :].expand(-1, N_AGENTS, -1)


def train_actors(cfg: GameConfig, models: dict, actor_seed: int) -> nn.ModuleList:
    """Phase 2: two decentralized actors on the context, against the frozen models, eq. (5.2)."""
    torch.manual_seed(actor_seed)
    generator = torch.Generator().manual_seed(actor_seed)
    contexts, mask, act_mask = models["contexts"], prefix_masks(N_AGENTS, cfg.decomposition), torch.ones(N_AGENTS, 1)
    actors = nn.ModuleList([Actor(cfg.context_dim, 1, cfg.width) for _ in range(N_AGENTS)])
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


def evaluate_actors(cfg: GameConfig, actors: nn.ModuleList, seed: int) -> dict:
    """Mode of each agent on held-out contexts: +1 above m/2, -1 below -m/2, 0 between the modes."""
    generator = torch.Generator().manual_seed(10_000 + seed)
    test_contexts = cfg.context_scale * torch.randn(cfg.eval_contexts, cfg.context_dim, generator=generator)
    with torch.no_grad():
        a1, a2 = (actor(test_contexts)[:, 0] for actor in actors)
    mode1 = torch.where(a1 > cfg.mode / 2, 1, torch.where(a1 < -cfg.mode / 2, -1, 0))
    mode2 = torch.where(a2 > cfg.mode / 2, 1, torch.where(a2 < -cfg.mode / 2, -1, 0))
    in_modes = (mode1 != 0) & (mode2 != 0)
    return {
        "coordinated": (in_modes & (mode1 == mode2)).float().mean().item(),
        "miscoordinated": (in_modes & (mode1 != mode2)).float().mean().item(),
        "between_modes": (~in_modes).float().mean().item(),
        "mean_abs_action": torch.cat([a1, a2]).abs().mean().item(),
        "agent1_positive": (mode1 == 1).float().mean().item(),
        "agent2_positive": (mode2 == 1).float().mean().item(),
    }


def run_game(cfg: GameConfig, actor_seeds: tuple[int, ...] = (0,)) -> list[dict]:
    """One behavior model and critic (seed cfg.seed), then one actor pair per actor seed."""
    models = train_models(cfg)
    return [evaluate_actors(cfg, train_actors(cfg, models, 1000 * cfg.seed + seed), seed) for seed in actor_seeds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = GameConfig()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="behavior-model/critic seeds")
    parser.add_argument("--actor-seeds", type=int, default=4, help="actor pairs trained per behavior model")
    for name in ("t_min", "t_max", "beta", "context_scale"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    for name in ("actor_steps", "behavior_steps", "context_dim"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--weighting", default=defaults.weighting, choices=["sigma2", "score", "uniform"])
    parser.add_argument("--q-normalization", default=defaults.q_normalization, choices=Q_NORMALIZATIONS)
    parser.add_argument("--decompositions", nargs="+", default=["sequential", "independent"])
    cli = parser.parse_args()
    torch.set_num_threads(1)
    for decomposition in cli.decompositions:
        rows = []
        for seed in cli.seeds:
            cfg = GameConfig(decomposition=decomposition, seed=seed, t_min=cli.t_min, t_max=cli.t_max,
                             weighting=cli.weighting, beta=cli.beta, q_normalization=cli.q_normalization,
                             actor_steps=cli.actor_steps, behavior_steps=cli.behavior_steps,
                             context_dim=cli.context_dim, context_scale=cli.context_scale)
            start = time.time()
            results = run_game(cfg, tuple(range(cli.actor_seeds)))
            for actor_seed, result in enumerate(results):
                print(f"{decomposition:11s} seed {seed} actor {actor_seed}: "
                      + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
            print(f"  ({time.time() - start:.0f}s)", flush=True)
            rows += results
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        print(f"{decomposition:11s} MEAN over {len(rows)} (seed, actor seed) pairs: "
              + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()), flush=True)
    print("config:", {k: v for k, v in asdict(cfg).items() if k not in ("decomposition", "seed")})


if __name__ == "__main__":
    main()
