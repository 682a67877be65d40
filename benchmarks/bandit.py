"""The paper's didactic bandit (docs/algorithm.md §7), with osd_mpe.py's own networks and losses.

Two agents see a constant 5-D observation and act in [-1, 1]; the team reward is a_1 * a_2. The data is
half N((0.8, 0.8), 0.1^2 I) and half N((-0.8, -0.8), 0.1^2 I), not clipped. As in the paper, beta = 0:
no Q term, so the actors are moved by the behavior regularizer alone, and the question is only whether
they end in one joint mode (reward about +0.64) or in two different ones (about -0.64) or between the
modes (about 0). The paper reports independent regularization 0 ± 1 and OMSD 1 ± 0 over 10 seeds.

For each seed: one behavior model per decomposition (sequential masks, or all masks 0), then one actor
pair per weighting w(t), from the same actor initialization. A didactic game: it imports the algorithm's
functions from osd_mpe.py (networks, behavior_loss, actor_loss, prefix_masks); only the data and the loop
sizes are its own.

    python benchmarks/bandit.py --seeds 0 1 2 3 4 5 6 7 8 9
    python benchmarks/bandit.py --seeds 0 1 --t-max 0.2 --actor-lr 0.01
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from osd_mpe import Actor, BehaviorScoreNet, TwinQ, actor_loss, behavior_loss, prefix_masks  # noqa: E402

N_AGENTS, OBS_DIM = 2, 5


def bandit_data(n: int, generator: torch.Generator) -> torch.Tensor:
    """Joint actions [n, 2, 1]: one shared mode (+0.8 or -0.8) per sample, noise 0.1 per agent."""
    sign = torch.randint(0, 2, (n, 1), generator=generator).float() * 2 - 1
    return (sign * 0.8 + 0.1 * torch.randn(n, N_AGENTS, generator=generator))[..., None]


def train_behavior(decomposition: str, seed: int, steps: int, width: int, batch_size: int) -> BehaviorScoreNet:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    data = bandit_data(10_000, generator)
    net = BehaviorScoreNet(N_AGENTS, 1, OBS_DIM, width=width, n_blocks=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    mask, act_mask, condition = prefix_masks(N_AGENTS, decomposition), torch.ones(N_AGENTS, 1), torch.ones(batch_size, N_AGENTS, OBS_DIM)
    for _ in range(steps):
        actions = data[torch.randint(0, len(data), (batch_size,), generator=generator)]
        loss = behavior_loss(net, actions, condition, mask, act_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.requires_grad_(False)


def train_actors(score_net, decomposition: str, seed: int, weighting: str, t_min: float, t_max: float,
                 steps: int, lr: float, batch_size: int) -> tuple[float, float]:
    """beta = 0: the Q term is multiplied by 0, so an untrained critic serves (as in the paper)."""
    torch.manual_seed(10_000 + seed)  # the same actor initialization for every weighting of a seed
    actors = nn.ModuleList([Actor(OBS_DIM, 1, 256) for _ in range(N_AGENTS)])
    q_target = TwinQ(OBS_DIM, N_AGENTS).requires_grad_(False)
    optimizers = [torch.optim.Adam(actor.parameters(), lr=lr) for actor in actors]
    obs = torch.ones(batch_size, N_AGENTS, OBS_DIM)  # the constant observation, also the state
    for _ in range(steps):
        loss, _ = actor_loss(actors, score_net, q_target, obs, obs[:, 0], obs, prefix_masks(N_AGENTS, decomposition),
                             torch.ones(N_AGENTS, 1), 0.0, t_min, t_max, weighting, "none")
        for opt in optimizers:
            opt.zero_grad()
        loss.backward()
        for opt in optimizers:
            opt.step()
    with torch.no_grad():
        a1, a2 = (actor(torch.ones(1, OBS_DIM))[0, 0].item() for actor in actors)
    return a1, a2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--weightings", nargs="+", default=["sigma2", "score"])
    parser.add_argument("--decompositions", nargs="+", default=["sequential", "independent"])
    parser.add_argument("--t-min", type=float, default=0.02)
    parser.add_argument("--t-max", type=float, default=0.98)
    parser.add_argument("--behavior-steps", type=int, default=2000)
    parser.add_argument("--actor-steps", type=int, default=3000)
    parser.add_argument("--actor-lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=128, help="of the behavior network")
    parser.add_argument("--batch-size", type=int, default=256)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    rewards = {(d, w): [] for d in cli.decompositions for w in cli.weightings}
    for seed in cli.seeds:
        for decomposition in cli.decompositions:
            start = time.time()
            score_net = train_behavior(decomposition, seed, cli.behavior_steps, cli.width, cli.batch_size)
            for weighting in cli.weightings:
                a1, a2 = train_actors(score_net, decomposition, seed, weighting, cli.t_min, cli.t_max,
                                      cli.actor_steps, cli.actor_lr, cli.batch_size)
                rewards[decomposition, weighting].append(a1 * a2)
                print(f"seed {seed} {decomposition:11s} w={weighting:7s}: actions ({a1:+.2f}, {a2:+.2f}), "
                      f"reward {a1 * a2:+.2f}", flush=True)
            print(f"  ({time.time() - start:.0f}s)", flush=True)
    print(f"\nreward a1*a2 over seeds {cli.seeds} (t ~ U({cli.t_min}, {cli.t_max}), actor lr {cli.actor_lr}, "
          f"{cli.actor_steps} actor steps, {cli.behavior_steps} behavior steps):")
    print("| decomposition | w(t) | reward mean ± std | coordinated (reward > 0.3) | between modes (|reward| <= 0.3) |")
    print("|---|---|---|---|---|")
    for (decomposition, weighting), values in rewards.items():
        std = statistics.pstdev(values) if len(values) > 1 else 0.0
        coordinated = sum(v > 0.3 for v in values)
        between = sum(abs(v) <= 0.3 for v in values)
        print(f"| {decomposition} | {weighting} | {statistics.mean(values):+.2f} ± {std:.2f} | "
              f"{coordinated}/{len(values)} | {between}/{len(values)} |")


if __name__ == "__main__":
    main()
