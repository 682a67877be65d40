"""A multi-step coordination task small enough for CI: two agents must keep one convention for an episode.

Two agents walk on a line, both starting near 0; two targets sit at -1 and +1, and the team's reward
each step is how well both targets are covered, -(min_i |x_i + 1| + min_i |x_i - 1|) / 2, as in
spread. The data holds two conventions in equal shares and nothing else: in convention A agent 0 walks
to -1 and agent 1 to +1, in convention B the other way round (scripted, action noise 0.1). At the first
step nothing in the state tells the conventions apart, so the two agents must pick one together and
then keep it: an episode *clashes* when both end on the same side. Each agent sees both positions,
its own first (o_i = (x_i, x_j)); the global state is (x_0, x_1).

Every algorithmic piece is osd_mpe.py's own (behavior_loss, value_loss, q_loss, actor_loss, the
networks); this file supplies only the task, its data and the loop sizes. It imports the algorithm's
functions on purpose, as the other didactic games (bandit.py, coordination_game.py) do.

    python benchmarks/convention_walk.py                                 # both decompositions, seeds 0-2
    python benchmarks/convention_walk.py --seeds 0 1 2 3 4 --weighting sigma2
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from osd_mpe import (  # noqa: E402
    Actor, Args, BehaviorScoreNet, TwinQ, ValueNet, actor_loss, behavior_loss, polyak_update, prefix_masks, q_loss,
    value_loss)

N_AGENTS = 2


@dataclass
class WalkConfig:
    decomposition: str = "sequential"
    seed: int = 0
    # the actor's score regularizer: osd_mpe.py's defaults unless a flag says otherwise
    t_min: float = Args.t_min
    t_max: float = Args.t_max
    weighting: str = Args.weighting
    beta: float = 0.01  # as spread's multimodal tiers: the regularizer decides the convention
    random_order: bool = False
    horizon: int = 6
    step_size: float = 0.3  # x <- x + step_size * a
    start_spread: float = 0.1  # starts uniform in [-start_spread, start_spread]
    noise: float = 0.1  # action noise of the scripted conventions
    episodes: int = 1000
    batch_size: int = 256
    width: int = 128
    behavior_steps: int = 2000
    critic_steps: int = 1000
    actor_steps: int = 1000
    actor_lr: float = 1e-3
    eval_episodes: int = 500


def scripted_action(position: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The conventions' controller: walk to the target, slowing down near it."""
    return (3.0 * (target - position)).clamp(-1, 1)


def walk_step(positions: torch.Tensor, actions: torch.Tensor, cfg: WalkConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [B, 2], actions [B, 2] -> next positions and the team reward (coverage of both targets)."""
    next_positions = (positions + cfg.step_size * actions).clamp(-1.5, 1.5)
    reward = -((next_positions + 1).abs().min(-1).values + (next_positions - 1).abs().min(-1).values) / 2
    return next_positions, reward


def observe(positions: torch.Tensor) -> torch.Tensor:
    """[B, 2] positions -> [B, 2 agents, 2]: each agent sees its own position first."""
    return torch.stack([positions, positions.flip(-1)], dim=1)


def walk_data(cfg: WalkConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Transitions of cfg.episodes scripted episodes, half convention A (agent 0 to -1), half B."""
    sign = (torch.arange(cfg.episodes) % 2).float() * 2 - 1  # interleaved, equal shares
    targets = torch.stack([-sign, sign], dim=-1)
    positions = (torch.rand(cfg.episodes, 2, generator=generator) * 2 - 1) * cfg.start_spread
    columns = {key: [] for key in ("states", "actions", "rewards", "next_states", "terminals")}
    for step in range(cfg.horizon):
        actions = (scripted_action(positions, targets)
                   + cfg.noise * torch.randn(cfg.episodes, 2, generator=generator)).clamp(-1, 1)
        next_positions, reward = walk_step(positions, actions, cfg)
        for key, value in (("states", positions), ("actions", actions), ("rewards", reward),
                           ("next_states", next_positions), ("terminals", torch.zeros(cfg.episodes))):
            columns[key].append(value)
        positions = next_positions
    return {key: torch.cat(values) for key, values in columns.items()}


def train(cfg: WalkConfig) -> nn.ModuleList:
    """Phase 1 (behavior model and critics), then phase 2 (actors), on the walk's data."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    data = walk_data(cfg, generator)
    n = len(data["rewards"])
    act_mask = torch.ones(N_AGENTS, 1)

    def prefix_mask() -> torch.Tensor:
        order = torch.randperm(N_AGENTS, generator=generator).tolist() if cfg.random_order else None
        return prefix_masks(N_AGENTS, cfg.decomposition, order)

    def condition(states: torch.Tensor) -> torch.Tensor:
        return states[:, None, :].expand(-1, N_AGENTS, -1)

    score_net = BehaviorScoreNet(N_AGENTS, 1, 2, width=cfg.width, n_blocks=2)
    q_net, q_target, v_net = TwinQ(2, N_AGENTS, cfg.width), TwinQ(2, N_AGENTS, cfg.width), ValueNet(2, cfg.width)
    q_target.load_state_dict(q_net.state_dict())
    behavior_optimizer = torch.optim.Adam(score_net.parameters(), lr=1e-3)
    behavior_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(behavior_optimizer, cfg.behavior_steps)
    q_optimizer, v_optimizer = torch.optim.Adam(q_net.parameters(), lr=1e-3), torch.optim.Adam(v_net.parameters(), lr=1e-3)
    for step in range(max(cfg.behavior_steps, cfg.critic_steps)):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=generator)
        states, actions = data["states"][idx], data["actions"][idx][..., None]
        if step < cfg.behavior_steps:
            loss = behavior_loss(score_net, actions, condition(states), prefix_mask(), act_mask)
            behavior_optimizer.zero_grad()
            loss.backward()
            behavior_optimizer.step()
            behavior_schedule.step()
        if step < cfg.critic_steps:
            loss_v = value_loss(v_net, q_target, states, actions, 0.7)
            v_optimizer.zero_grad()
            loss_v.backward()
            v_optimizer.step()
            loss_q = q_loss(q_net, v_net, states, actions, data["rewards"][idx], data["next_states"][idx],
                            data["terminals"][idx], 0.9)
            q_optimizer.zero_grad()
            loss_q.backward()
            q_optimizer.step()
            polyak_update(q_target, q_net, 0.01)
    for net in (score_net, q_target):
        net.requires_grad_(False)

    actors = nn.ModuleList([Actor(2, 1, cfg.width) for _ in range(N_AGENTS)])
    actor_optimizers = [torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr) for actor in actors]
    for _ in range(cfg.actor_steps):
        states = data["states"][torch.randint(0, n, (cfg.batch_size,), generator=generator)]
        loss, _ = actor_loss(actors, score_net, q_target, observe(states), states, condition(states), prefix_mask(),
                             act_mask, cfg.beta, cfg.t_min, cfg.t_max, cfg.weighting, "batch")
        for opt in actor_optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in actor_optimizers:
            opt.step()
    return actors


@torch.no_grad()
def evaluate(cfg: WalkConfig, actors: nn.ModuleList) -> dict[str, float]:
    """Decentralized rollouts from held-out starts: how often the team ends covering both targets, how
    often both agents end on one side (a clash), and how often an agent's last step points away from its
    first one (it switched convention mid-episode)."""
    generator = torch.Generator().manual_seed(10_000 + cfg.seed)
    positions = (torch.rand(cfg.eval_episodes, 2, generator=generator) * 2 - 1) * cfg.start_spread
    first_actions, total = None, torch.zeros(cfg.eval_episodes)
    for _ in range(cfg.horizon):
        obs = observe(positions)
        actions = torch.cat([actor(obs[:, i]) for i, actor in enumerate(actors)], dim=-1)
        first_actions = actions if first_actions is None else first_actions
        positions, reward = walk_step(positions, actions, cfg)
        total += reward
    side = torch.sign(positions)
    covered = ((positions + 1).abs().min(-1).values < 0.3) & ((positions - 1).abs().min(-1).values < 0.3)
    return {"covered": covered.float().mean().item(),
            "clash": (side[:, 0] == side[:, 1]).float().mean().item(),
            "switched": (torch.sign(first_actions) != side).float().mean().item(),
            "return": total.mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = WalkConfig()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--decompositions", nargs="+", default=["sequential", "independent"])
    for name in ("t_min", "t_max", "beta", "noise", "start_spread"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    for name in ("actor_steps", "behavior_steps", "horizon"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--weighting", default=defaults.weighting, choices=["sigma2", "score", "uniform"])
    parser.add_argument("--random-order", action="store_true")
    cli = parser.parse_args()
    torch.set_num_threads(1)
    overrides = {k: getattr(cli, k) for k in ("t_min", "t_max", "beta", "noise", "start_spread", "actor_steps",
                                              "behavior_steps", "horizon", "weighting", "random_order")}
    for decomposition in cli.decompositions:
        rows = []
        for seed in cli.seeds:
            cfg = replace(defaults, decomposition=decomposition, seed=seed, **overrides)
            start = time.time()
            result = evaluate(cfg, train(cfg))
            rows.append(result)
            print(f"{decomposition:11s} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items())
                  + f" ({time.time() - start:.0f}s)", flush=True)
        mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
        print(f"{decomposition:11s} MEAN over {len(rows)} seeds: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    print("config:", {k: v for k, v in asdict(cfg).items() if k not in ("decomposition", "seed")})


if __name__ == "__main__":
    main()
