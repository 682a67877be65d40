"""A one-step game whose data pool a good team and a poor one: a check of the value-weighted behavior fine-tune.

docs/algorithm.md §6, phase 1b (our addition). Two agents act in [-1, 1] (one action dim each) on a context
s ~ N(0, I_2) that both see. A quarter of the data's joint actions come from a good team, around (+0.6, +0.6),
the rest from a poor one, around (-0.6, -0.6) (std 0.1 each), on the same contexts. The reward
r = -(a_1 - 0.6)^2 - (a_2 - 0.6)^2 is highest at the good team's action. With beta 0 the actors follow the
behavior model alone, a mode seeker: on most contexts they settle on the denser mode, the poor team's. The fine-tune redraws the behavior model's batches with value_sampling_weights of the critic's
Q at the data's actions, so the good team's transitions dominate and the actors follow the good team.
(On HalfCheetah `medium-expert` the two teams visit different states and Q separates them by state;
here the states are shared and Q separates them by action: the same code, the simplest data that shows it.)

A didactic game: it imports every algorithmic piece from osd_mpe.py (behavior_loss and value_sampling_weights
here; phase 1 and the actors through q_optimum_game.py, which imports the rest) and writes the fine-tune
loop as the script's phase 1b does; only the data, the reward and the loop sizes are the game's.
tests/test_q_term.py runs it.

    python benchmarks/pooled_teams_game.py                    # without and with the fine-tune, seeds 0 and 1
    python benchmarks/pooled_teams_game.py --seeds 0 1 2 3 --finetune-steps 0 100 300 --temperature 0.07
"""

from __future__ import annotations

import argparse
import copy
import pathlib
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from osd_mpe import Args, behavior_loss, prefix_masks, value_sampling_weights  # noqa: E402
from q_optimum_game import CONTEXT_DIM, N_AGENTS, as_condition, train_actors, train_phase1  # noqa: E402

GOOD, POOR, TEAM_STD = 0.6, -0.6, 0.1  # each team's action (both agents) and its spread
GOOD_SHARE = 0.25  # of the data's transitions: the poor team's mode is the denser one
NEAR = 0.25  # an agent within this of the good team's action counts as following it


@dataclass
class GameConfig:
    seed: int = 0
    temperature: float = Args.value_weighted_temperature  # the scripts' default T
    # the actors: beta 0 (the behavior model alone), osd_mpe.py's regularizer defaults
    beta: float = 0.0
    q_normalization: str = Args.q_normalization
    t_min: float = Args.t_min
    t_max: float = Args.t_max
    weighting: str = Args.weighting
    n_data: int = 4096
    batch_size: int = 256
    width: int = 64  # of the behavior net, the critics and the actors
    behavior_steps: int = 600
    critic_steps: int = 600
    finetune_lr: float = 3e-4
    actor_steps: int = 300
    actor_lr: float = 1e-3
    eval_contexts: int = 1000


def game_reward(actions: torch.Tensor) -> torch.Tensor:
    """r = -(a_1 - 0.6)^2 - (a_2 - 0.6)^2 for joint actions [n, 2, 1]."""
    return -((actions[..., 0] - GOOD) ** 2).sum(-1)


def train_models(cfg: GameConfig) -> dict:
    """Phase 1 on the pooled data (q_optimum_game's one-step phase 1, on this game's data)."""
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    contexts = torch.randn(cfg.n_data, CONTEXT_DIM, generator=generator)
    team = torch.where(torch.rand(cfg.n_data, generator=generator) < GOOD_SHARE, GOOD, POOR)  # per transition
    actions = (team[:, None, None] + TEAM_STD * torch.randn(cfg.n_data, N_AGENTS, 1, generator=generator)).clamp(-1, 1)
    models = train_phase1(cfg, contexts, actions, game_reward(actions), generator)
    return {**models, "actions": actions, "good_team": team > 0}


def finetune(cfg: GameConfig, models: dict, steps: int, sign: float = 1.0) -> tuple[nn.Module, float]:
    """Phase 1b on a copy of the behavior model: batches drawn with value_sampling_weights of Q at the data's
    actions (sign -1 flips the weights' preference: the check that the test can fail). Returns the model and
    the share of the sampling mass on the good team's transitions."""
    score_net = copy.deepcopy(models["score_net"]).requires_grad_(True)
    contexts, actions = models["contexts"], models["actions"]
    with torch.no_grad():
        q_data = 0.5 * sum(models["q_target"](contexts, actions))
    weights = value_sampling_weights(sign * q_data, cfg.temperature)
    good_mass = (weights[models["good_team"]].sum() / weights.sum()).item()
    generator = torch.Generator().manual_seed(cfg.seed + 1)
    mask, act_mask = prefix_masks(N_AGENTS, "sequential"), torch.ones(N_AGENTS, 1)
    optimizer = torch.optim.AdamW(score_net.parameters(), lr=cfg.finetune_lr)
    for _ in range(steps):
        idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=generator)
        loss = behavior_loss(score_net, actions[idx], as_condition(contexts[idx]), mask, act_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return score_net.requires_grad_(False), good_mass


@torch.no_grad()
def evaluate_actors(cfg: GameConfig, actors: nn.ModuleList) -> dict:
    """Over held-out contexts: the share where both agents act within NEAR of the good team's action, and
    the mean reward."""
    generator = torch.Generator().manual_seed(10_000 + cfg.seed)
    contexts = torch.randn(cfg.eval_contexts, CONTEXT_DIM, generator=generator)
    joint = torch.stack([actor(contexts) for actor in actors], dim=1)  # [n, 2, 1]
    follows_good = ((joint[..., 0] - GOOD).abs() < NEAR).all(-1)
    return {"good_share": follows_good.float().mean().item(), "mean_reward": game_reward(joint).mean().item()}


def run_game(cfg: GameConfig, finetune_steps: tuple[int, ...], sign: float = 1.0) -> dict[int, dict]:
    """One phase 1, then per fine-tune length (0: none) a fine-tuned copy and a pair of beta-0 actors."""
    models = train_models(cfg)
    results = {}
    for steps in finetune_steps:
        score_net, good_mass = finetune(cfg, models, steps, sign)
        actors = train_actors(cfg, {**models, "score_net": score_net}, cfg.seed)
        results[steps] = {**evaluate_actors(cfg, actors), "good_mass": good_mass}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = GameConfig()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--finetune-steps", type=int, nargs="+", default=[0, 300])
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    print(f"good team at {GOOD}, poor team at {POOR}; share of {defaults.eval_contexts} held-out contexts where both "
          f"agents act within {NEAR} of the good team's action (beta 0)")
    print("| seed | fine-tune steps | sampling mass on the good team | contexts following the good team | mean reward |")
    print("|---|---|---|---|---|")
    for seed in cli.seeds:
        cfg = GameConfig(seed=seed, temperature=cli.temperature)
        start = time.time()
        for steps, r in run_game(cfg, tuple(cli.finetune_steps)).items():
            print(f"| {seed} | {steps} | {r['good_mass']:.2f} | {r['good_share']:.2f} | {r['mean_reward']:.3f} |", flush=True)
        print(f"(seed {seed}: {time.time() - start:.0f}s)", file=sys.stderr, flush=True)
    print("config:", {k: v for k, v in asdict(cfg).items() if k != "seed"})


if __name__ == "__main__":
    main()
