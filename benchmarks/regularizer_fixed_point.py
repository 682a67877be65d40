"""How close can the behavior regularizer alone bring an action to the data? Actors against its fixed point.

For an OMSD checkpoint (osd_mpe.py or osd_mamujoco.py) and dataset states, this script compares with the
dataset's own actions:
  actor        the checkpoint's decentralized actors on the states' observations
  BC actor     a baselines/bc.py checkpoint's actors (--bc-checkpoint), the same way
  fixed point  free actions, one per state and agent, parametrized as tanh(u) like the actors and
               optimized (Adam) on the score term of eq. (5.2) alone, with fresh t and noise every step:
               where the regularizer pulls an action when nothing else limits it (no network, no Q term)
It prints the mean |a - a_data|, the share with the data's sign and the share at |a| > 0.99, per t range.

    python benchmarks/regularizer_fixed_point.py --checkpoint checkpoints/<omsd run>.pt --bc-checkpoint checkpoints/<bc run>.pt

A diagnostic: it rebuilds the networks with the script that trained them, loaded by path (critic_check.load_run,
which also checks the dataset is the run's own), and uses that
script's loss pieces (vp_alpha_sigma, score_weight, prefix_masks).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import osd_common  # noqa: E402
from critic_check import load_run  # noqa: E402  (the checkpoint, its script, networks and dataset, checked)

T_RANGES = ((0.02, 0.98), (0.02, 0.3), (0.005, 0.1), (0.002, 0.05))


def compare(name: str, actions: torch.Tensor, data_actions: torch.Tensor, act_mask: torch.Tensor) -> None:
    real = act_mask.expand_as(actions).bool()
    error = (actions - data_actions).abs()[real].mean().item()
    same_sign = ((actions * data_actions) > 0)[real].float().mean().item()
    at_bounds = (actions.abs() > 0.99)[real].float().mean().item()
    print(f"| {name} | {error:.3f} | {same_sign:.1%} | {at_bounds:.1%} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="an OMSD checkpoint (.pt)")
    parser.add_argument("--bc-checkpoint", default=None, help="a baselines/bc.py checkpoint of the same dataset")
    parser.add_argument("--states", type=int, default=512, help="dataset transitions to look at")
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps of the free actions")
    parser.add_argument("--seed", type=int, default=0, help="seed of the states, t and the noise")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    script, checkpoint, saved_args, nets, data = load_run(args.checkpoint)
    meta = checkpoint["meta"]
    score_net, actors = nets["score_net"], nets["actors"]
    n_agents = meta["n_agents"]

    def standardized(array, normalizers, key):
        return torch.as_tensor(osd_common.Normalizer(normalizers[f"{key}_mean"], normalizers[f"{key}_std"])(array),
                               dtype=torch.float32)

    index = np.random.default_rng(args.seed).choice(len(data.rewards), args.states, replace=False)
    obs_mask = torch.as_tensor(data.obs_mask, dtype=torch.float32)
    observations = standardized(data.observations[index], checkpoint["normalizers"], "obs") * obs_mask
    state = standardized(data.states[index], checkpoint["normalizers"], "state")
    condition = (state[:, None].expand(-1, n_agents, -1) if saved_args.behavior_condition == "state"
                 else observations)
    data_actions = torch.as_tensor(data.actions[index], dtype=torch.float32)
    act_mask = torch.as_tensor(data.act_mask, dtype=torch.float32)
    prefix_mask = script.prefix_masks(n_agents, saved_args.decomposition)

    print(f"{args.checkpoint}: {args.states} states of {data.path}\n")
    print("| actions | mean abs error to the data | data's sign | at abs(a) > 0.99 |")
    print("|---|---|---|---|")
    compare("data", data_actions, data_actions, act_mask)
    with torch.no_grad():
        compare("actor", script.joint_action(actors, observations, act_mask.shape[-1]), data_actions, act_mask)
    if args.bc_checkpoint:
        bc = torch.load(args.bc_checkpoint, map_location="cpu", weights_only=False)
        bc_actors = torch.nn.ModuleList([script.Actor(meta["obs_dims"][i], meta["act_dims"][i], bc["args"]["hidden_dim"])
                                         for i in range(n_agents)])
        bc_actors.load_state_dict(bc["actors"])
        bc_obs = standardized(data.observations[index], bc["normalizers"], "obs")
        with torch.no_grad():
            compare("BC actor", script.joint_action(bc_actors, bc_obs * obs_mask, act_mask.shape[-1]),
                    data_actions, act_mask)
    for t_min, t_max in T_RANGES:
        free = torch.zeros_like(data_actions, requires_grad=True)  # a = tanh(free), as an actor's output
        optimizer = torch.optim.Adam([free], lr=1e-2)
        for _ in range(args.steps):
            actions = torch.tanh(free)
            current = actions.detach()
            t = torch.rand(len(index), n_agents) * (t_max - t_min) + t_min
            alpha, sigma = script.vp_alpha_sigma(t)
            noise = torch.randn_like(current) * act_mask
            with torch.no_grad():
                eps_hat = score_net(alpha[..., None] * current + sigma[..., None] * noise, t, condition,
                                    current, prefix_mask) * act_mask
            weight = script.score_weight(t, saved_args.weighting)
            loss = (weight[..., None] * eps_hat * actions).sum(-1).mean(0).sum()  # the score term of (5.2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        compare(f"fixed point, t ~ U({t_min}, {t_max})", torch.tanh(free).detach(), data_actions, act_mask)
    return 0


if __name__ == "__main__":
    sys.exit(main())
