"""How hard does a trained behavior model pull each agent, given what its predecessors do?

OMSD regularizes agent i with the score of the behavior policy conditioned on its predecessors' current
actions (docs/algorithm.md §2, §5). How strong that signal is depends on those actions: when the
predecessors act as the data's good episodes do, the data says a lot about agent i; when they act as the
data's random episodes do, it may say almost nothing. This script measures it on an osd_mpe.py
checkpoint. For states drawn from the run's dataset it evaluates the actor's regularizer direction
E_t,eps[ w(t) eps_hat_i ] (the gradient of eq. (5.2)'s score term with respect to a_i) and prints the
norm of its mean over the states, per agent, for four joint actions:

  zero            every agent at action 0, near where freshly initialized actors start
  leader=data     the first agent in the order takes its dataset action, the others 0
  leader=uniform  the first agent takes a uniform random action, the others 0
  actors          the checkpoint's own trained actors

and the trained actors' mean |action| per agent (0 is the middle of the action box). It loads osd_mpe.py by
path (spread_coordination.load_script) to rebuild the checkpoint's networks and use its diffusion schedule.

    python benchmarks/regularizer_pull.py --checkpoint checkpoints/<run>.pt
    python benchmarks/regularizer_pull.py --checkpoint checkpoints/<run>.pt --states 4000 --draws 32

With `--decomposition independent` checkpoints the prefix is masked out, so the leader's action changes
nothing: its agents after the first get the same pull in the first three rows, to the last digit (every
row uses the same (t, eps) draws). Numbers are means over `--draws` draws per state; seeded.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from spread_coordination import REPO, load_script  # noqa: E402

sys.path.insert(0, str(REPO))
import osd_common  # noqa: E402


def load_run(checkpoint_path: str):
    """(osd_mpe module, checkpoint, its Args, its networks, its dataset), checked to belong together."""
    osd_mpe = load_script("osd_mpe.py")
    path = pathlib.Path(checkpoint_path)
    if not path.exists():
        raise SystemExit(f"regularizer_pull: --checkpoint {path} does not exist (checkpoints/ holds the runs "
                         "made on this machine; a run writes one unless --no-save-model)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "score_net" not in checkpoint:
        raise SystemExit(f"regularizer_pull: {path} has no behavior model (score_net): pass an osd_mpe.py "
                         "checkpoint, not a baseline's")
    args, meta = osd_common.checkpoint_args(osd_mpe.Args, checkpoint["args"]), checkpoint["meta"]
    try:
        data_path = (osd_common.resolve_dataset_path(args.dataset) if args.dataset
                     else osd_common.dataset_path(meta["task"], meta["tier"]))
        data = osd_common.load_dataset(data_path)
    except (osd_common.DatasetError, osd_common.TaskError) as error:
        raise SystemExit(f"regularizer_pull: the dataset of {path}: {error}") from None
    if data.meta.get("sha256") != meta.get("sha256"):
        raise SystemExit(f"regularizer_pull: {data_path} is not the dataset {path} was trained on (sha256 "
                         f"{data.meta.get('sha256', '?')[:12]} against {meta.get('sha256', '?')[:12]}); "
                         "regenerate it with datasets/generate.py or pass the run's own file")
    nets = osd_mpe.build_networks(meta, args, torch.device("cpu"))
    for name, net in nets.items():
        net.load_state_dict(checkpoint[name])
        net.eval()
    return osd_mpe, checkpoint, args, nets, data


@torch.no_grad()
def measure(checkpoint_path: str, n_states: int = 2000, draws: int = 16, seed: int = 0) -> dict:
    osd_mpe, checkpoint, args, nets, data = load_run(checkpoint_path)
    torch.manual_seed(seed + 1)  # the uniform leader action
    rows = np.random.default_rng(seed).choice(len(data.rewards), size=min(n_states, len(data.rewards)), replace=False)
    norm = checkpoint["normalizers"]
    f32 = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    obs = f32((data.observations[rows] - norm["obs_mean"]) / norm["obs_std"] * data.obs_mask)
    state = f32((data.states[rows] - norm["state_mean"]) / norm["state_std"])
    act_mask, n_agents = f32(data.act_mask), data.actions.shape[1]
    condition = state[:, None, :].expand(-1, n_agents, -1) if args.behavior_condition == "state" else obs
    prefix_mask = osd_mpe.prefix_masks(n_agents, args.decomposition)  # the fixed order 0..N-1
    leader = 0

    def pull(joint: torch.Tensor) -> list[float]:
        """|| mean over states of E_t,eps[w(t) eps_hat_i] || per agent, at the joint action `joint`."""
        torch.manual_seed(seed)  # the same (t, eps) draws for every row: the rows differ by the actions alone
        total = torch.zeros_like(joint)
        for _ in range(draws):
            t = torch.rand(joint.shape[:2]) * (args.t_max - args.t_min) + args.t_min
            alpha, sigma = osd_mpe.vp_alpha_sigma(t)
            noised = alpha[..., None] * joint + sigma[..., None] * torch.randn_like(joint) * act_mask
            eps_hat = nets["score_net"](noised, t, condition, joint, prefix_mask) * act_mask
            total += osd_mpe.score_weight(t, args.weighting)[..., None] * eps_hat
        return (total / draws).mean(0).norm(dim=-1).tolist()

    zero = torch.zeros(len(rows), n_agents, act_mask.shape[-1])
    leader_data, leader_uniform = zero.clone(), zero.clone()
    leader_data[:, leader] = f32(data.actions[rows, leader])
    leader_uniform[:, leader] = (torch.rand(len(rows), act_mask.shape[-1]) * 2 - 1) * act_mask[leader]
    actors = osd_mpe.joint_action(nets["actors"], obs, act_mask.shape[-1])
    return {
        "decomposition": args.decomposition, "task": checkpoint["meta"]["task"], "tier": checkpoint["meta"]["tier"],
        "final_normalized_score": checkpoint.get("final_normalized_score"),
        "pull": {"zero": pull(zero), "leader=data": pull(leader_data), "leader=uniform": pull(leader_uniform),
                 "actors": pull(actors)},
        "actor_mean_abs_action": [(actors[:, i].abs().sum(0) / len(rows)).sum().item() / act_mask[i].sum().item()
                                  for i in range(n_agents)],
    }


def format_result(name: str, result: dict) -> str:
    n_agents = len(result["actor_mean_abs_action"])
    lines = [f"{name}: {result['task']} {result['tier']}, {result['decomposition']}, final normalized score "
             f"{result['final_normalized_score']:.1f}",
             "| joint action | " + " | ".join(f"agent {i}" for i in range(n_agents)) + " |",
             "|---|" + "---|" * n_agents]
    for label, values in result["pull"].items():
        lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    lines.append("| actors' mean abs action | " + " | ".join(f"{v:.2f}" for v in result["actor_mean_abs_action"]) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", nargs="+", required=True, help="osd_mpe.py checkpoints (.pt)")
    parser.add_argument("--states", type=int, default=2000, help="dataset states to average over")
    parser.add_argument("--draws", type=int, default=16, help="draws of (t, eps) per state")
    parser.add_argument("--seed", type=int, default=0, help="seed of the states and the draws")
    args = parser.parse_args(argv)
    if args.states < 1 or args.draws < 1:
        parser.error("--states and --draws must be at least 1")
    torch.set_num_threads(1)
    for path in args.checkpoint:
        print(format_result(pathlib.Path(path).name, measure(path, args.states, args.draws, args.seed)) + "\n")


if __name__ == "__main__":
    main()
