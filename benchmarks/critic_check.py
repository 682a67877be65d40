"""Does an OMSD run's critic tell good actions from bad, and do its actors go where it points?

Three checks on an osd_mpe.py or osd_mamujoco.py checkpoint and the dataset it was trained on
(docs/algorithm.md §4, §5; issue 19, item 1). Q is the mean of the two target twins, the Q whose gradient
the actors' loss (5.2) follows; states and observations are standardized with the checkpoint's own
statistics. It rebuilds the networks with the script that wrote the checkpoint, loaded by path
(spread_coordination.load_script): a diagnostic of that script's own networks.

(a) Ranking. Over the dataset's episodes, the Spearman rank correlation between Q(s_0, a_0) at each
    episode's first transition and that episode's discounted Monte-Carlo return sum_t gamma^t r_t, with
    the run's gamma. Every episode was training data (none is held out), so this measures how well the
    critic fits the data's values, not how it generalizes. A return cut by a timeout is summed up to the
    timeout, where the critic bootstraps through it; from the first step, with gamma 0.99, the two differ
    by a factor gamma^T of the episode's tail (MPE: T = 25, MaMuJoCo: T = 1000).
(b) Where the actors go. On dataset states, the mean of Q(s, pi(o)) - Q(s, a_data) and the share of states
    where it is positive: is the actor at actions the critic values above the data's?
(c) V against Q. Mean V(s) and mean Q(s, a_data) on the same states. IQL fits V to an upper expectile
    (tau > 0.5) of Q over the data's actions, so V should sit somewhat above the mean Q.
(d) Q against the return to go. On dataset states at least L steps before their episode's timeout, with
    gamma^L <= 0.01 (L = 459 at gamma 0.99), the discounted return to go sum_k gamma^k r_{t+k} is within
    1% of what a bootstrapping critic should learn for the data's own policy: its mean against mean
    Q(s, a_data) says whether the critic has converged to the data's values, and their Spearman rho
    whether it ranks states. States before a terminal count at any distance. MPE episodes (25 steps) are
    too short for this check: it reports no states there.

    python benchmarks/critic_check.py --checkpoint checkpoints/<run>.pt
    python benchmarks/critic_check.py --checkpoint checkpoints/<run>.pt --dataset path/to/data.npz --states 5000

(e) Phase 1b's weights. docs/algorithm.md eq. (6.1) at the run's --value-weighted-temperature over every
    transition: the effective share of the data they keep, and the share of their sampling mass on the
    first EARLY_STEPS steps of episodes against those steps' share of the data.

It prints a markdown table.
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

CHUNK = 4096  # rows per forward pass: bounds memory on million-transition datasets
EARLY_STEPS = 50  # (e): the first steps of every episode, where a running team is still slow


def average_ranks(values) -> np.ndarray:
    """Ranks 0..n-1 of `values`, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    run_starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_values)) + 1])
    run_ends = np.concatenate([run_starts[1:], [len(values)]])
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((run_starts + run_ends - 1) / 2.0, run_ends - run_starts)
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation (Pearson's on average ranks); nan if either side is constant or n < 2."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 2:
        return float("nan")
    rank_x, rank_y = average_ranks(x), average_ranks(y)
    if rank_x.std() == 0 or rank_y.std() == 0:
        return float("nan")
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def episode_starts(terminals: np.ndarray, timeouts: np.ndarray) -> np.ndarray:
    """Row of each episode's first transition (episodes end at a terminal or a timeout)."""
    ends = np.flatnonzero((terminals > 0) | (timeouts > 0))
    return np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)


def steps_in_episode(starts: np.ndarray, n_transitions: int) -> np.ndarray:
    """Each transition's step within its episode (0 at an episode's first transition)."""
    return np.arange(n_transitions) - np.repeat(starts, np.diff(np.append(starts, n_transitions)))


def returns_to_go(rewards: np.ndarray, terminals: np.ndarray, timeouts: np.ndarray,
                  gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """(sum_k gamma^k r_{t+k} to the episode's end, whether that end is within 1% of the infinite-horizon
    value) for every transition: a terminal ends the value; a timeout truncates it, by at most gamma^L
    (relative) for a state L or more steps before it, so those states count when gamma^L <= 0.01."""
    horizon = int(np.ceil(np.log(0.01) / np.log(gamma))) if 0 < gamma < 1 else 0
    values, usable = np.zeros(len(rewards)), np.zeros(len(rewards), dtype=bool)
    running, steps_left, ends_in_terminal = 0.0, 0, False
    for row in range(len(rewards) - 1, -1, -1):
        if terminals[row] > 0 or timeouts[row] > 0:  # the last transition of an episode
            running, steps_left, ends_in_terminal = 0.0, 0, bool(terminals[row] > 0)
        running = float(rewards[row]) + gamma * running
        steps_left += 1
        values[row], usable[row] = running, ends_in_terminal or steps_left > horizon
    return values, usable


def load_run(checkpoint_path: str, dataset: str | None = None):
    """(the script module, checkpoint, its Args, its networks in eval mode, its dataset), checked to belong
    together. The script is the one that wrote the checkpoint: osd_mpe.py for MPE, osd_mamujoco.py else."""
    path = pathlib.Path(checkpoint_path)
    if not path.is_file():
        raise SystemExit(f"critic_check: --checkpoint {path} does not exist (a training run writes "
                         "checkpoints/<run>.pt unless --no-save-model)")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if not {"score_net", "q_target", "v_net", "actors"} <= set(checkpoint):
        raise SystemExit(f"critic_check: --checkpoint {path} is not an osd_mpe.py or osd_mamujoco.py checkpoint "
                         "(it lacks the behavior model, target Q, V or actors)")
    meta = checkpoint["meta"]
    script = load_script("osd_mpe.py" if meta["task"].startswith("mpe/") else "osd_mamujoco.py")
    args = osd_common.checkpoint_args(script.Args, checkpoint["args"])
    try:
        if dataset is not None:
            data_path = osd_common.resolve_dataset_path(dataset)
        elif args.dataset:
            data_path = osd_common.resolve_dataset_path(args.dataset)
        else:
            data_path = osd_common.dataset_path(meta["task"], meta["tier"])
        data = osd_common.load_dataset(data_path)
    except (osd_common.DatasetError, osd_common.TaskError) as error:
        raise SystemExit(f"critic_check: the dataset of {path}: {error} (pass the run's file with --dataset)") from None
    if data.meta.get("sha256") != meta.get("sha256"):
        raise SystemExit(f"critic_check: {data_path} is not the dataset {path} was trained on (sha256 "
                         f"{data.meta.get('sha256', '?')[:12]} against {meta.get('sha256', '?')[:12]}); pass the "
                         "run's own file with --dataset")
    nets = script.build_networks(meta, args, torch.device("cpu"))
    for name, net in nets.items():
        net.load_state_dict(checkpoint[name])
        net.eval()
    return script, checkpoint, args, nets, data


@torch.no_grad()
def check(checkpoint_path: str, dataset: str | None = None, n_states: int = 10_000, seed: int = 0) -> dict:
    """The three checks of the module docstring, as a dict of numbers."""
    script, checkpoint, args, nets, data = load_run(checkpoint_path, dataset)
    norm = checkpoint["normalizers"]
    act_mask = torch.as_tensor(data.act_mask, dtype=torch.float32)

    def inputs(rows: np.ndarray):
        state = torch.as_tensor((data.states[rows] - norm["state_mean"]) / norm["state_std"], dtype=torch.float32)
        obs = torch.as_tensor((data.observations[rows] - norm["obs_mean"]) / norm["obs_std"] * data.obs_mask,
                              dtype=torch.float32)
        return state, obs, torch.as_tensor(data.actions[rows], dtype=torch.float32)

    def q_value(state: torch.Tensor, joint: torch.Tensor) -> torch.Tensor:
        return 0.5 * sum(nets["q_target"](state, joint))  # the Q of actor_loss (5.2)

    def evaluate(rows: np.ndarray) -> dict[str, np.ndarray]:
        out = {"q_data": [], "q_actor": [], "v": []}
        for chunk in np.array_split(rows, max(1, int(np.ceil(len(rows) / CHUNK)))):
            state, obs, actions = inputs(chunk)
            actor_actions = script.joint_action(nets["actors"], obs, act_mask.shape[-1])  # zero-padded
            out["q_data"].append(q_value(state, actions))
            out["q_actor"].append(q_value(state, actor_actions))
            out["v"].append(nets["v_net"](state))
        return {key: torch.cat(values).double().numpy() for key, values in out.items()}

    starts = episode_starts(data.terminals, data.timeouts)
    to_go, usable = returns_to_go(data.rewards, data.terminals, data.timeouts, args.gamma)
    returns = to_go[starts]  # each episode's discounted return, from its first transition
    first = evaluate(starts)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(data.rewards), size=min(n_states, len(data.rewards)), replace=False))
    sampled = evaluate(rows)
    gap = sampled["q_actor"] - sampled["q_data"]
    far = rows[usable[rows]]  # (d): the sampled states whose return to go is within 1% of their value
    far_q = evaluate(far)["q_data"] if len(far) else np.zeros(0)
    # (e) phase 1b's weights (6.1) over every transition, at the run's temperature: what share of the
    # sampling mass the first EARLY_STEPS steps of episodes keep, against their share of the data
    q_all = []
    for chunk in np.array_split(np.arange(len(data.rewards)), max(1, int(np.ceil(len(data.rewards) / CHUNK)))):
        state, _, actions = inputs(chunk)
        q_all.append(q_value(state, actions))
    q_all = torch.cat(q_all)
    weights = script.value_sampling_weights(q_all, args.value_weighted_temperature).double().numpy()
    early = steps_in_episode(starts, len(weights)) < EARLY_STEPS
    return {
        "value_weighted_temperature": args.value_weighted_temperature,
        "effective_share": float(weights.sum() ** 2 / (weights**2).sum() / len(weights)),
        "early_data_share": float(early.mean()), "early_weight_share": float(weights[early].sum() / weights.sum()),
        "checkpoint": str(checkpoint_path), "task": checkpoint["meta"]["task"], "tier": checkpoint["meta"].get("tier"),
        "decomposition": args.decomposition, "beta": args.beta, "gamma": args.gamma, "expectile": args.expectile,
        "episodes": len(starts), "spearman_q0_return": spearman(first["q_data"], returns),
        "mean_return": float(returns.mean()), "mean_q0": float(first["q_data"].mean()),
        "states": len(rows), "mean_q_data": float(sampled["q_data"].mean()),
        "std_q_data": float(sampled["q_data"].std()), "mean_q_actor": float(sampled["q_actor"].mean()),
        "actor_minus_data": float(gap.mean()), "actor_above_data": float((gap > 0).mean()),
        "mean_v": float(sampled["v"].mean()), "v_minus_q_data": float((sampled["v"] - sampled["q_data"]).mean()),
        "to_go_states": len(far), "mean_return_to_go": float(to_go[far].mean()) if len(far) else float("nan"),
        "mean_q_data_far": float(far_q.mean()) if len(far) else float("nan"),
        "spearman_q_return_to_go": spearman(far_q, to_go[far]),
    }


def format_table(result: dict) -> str:
    """The checks as a markdown table, under a line naming the run."""
    r = result
    lines = [f"critic check of {pathlib.Path(r['checkpoint']).name}: {r['task']} {r['tier']}, {r['decomposition']}, "
             f"beta {r['beta']}, gamma {r['gamma']}, expectile {r['expectile']}", "",
             "| check | value |", "|---|---|",
             f"| (a) Spearman rho of Q(s_0, a_0) with the discounted return, over {r['episodes']} episodes "
             f"(all training data, none held out) | {r['spearman_q0_return']:+.3f} |",
             f"| mean discounted return / mean Q(s_0, a_0) | {r['mean_return']:.3f} / {r['mean_q0']:.3f} |",
             f"| (b) mean Q(s, pi(o)) - Q(s, a_data), over {r['states']} dataset states | "
             f"{r['actor_minus_data']:+.3f} ({r['actor_minus_data'] / max(r['std_q_data'], 1e-12):+.2f} std of "
             f"Q(s, a_data)) |",
             f"| share of those states where Q(s, pi(o)) > Q(s, a_data) | {100 * r['actor_above_data']:.1f}% |",
             f"| mean Q(s, pi(o)) / mean Q(s, a_data) (std over states) | {r['mean_q_actor']:.3f} / "
             f"{r['mean_q_data']:.3f} ({r['std_q_data']:.3f}) |",
             f"| (c) mean V(s) - Q(s, a_data) | {r['v_minus_q_data']:+.3f} |",
             f"| mean V(s) | {r['mean_v']:.3f} |",
             f"| (d) mean discounted return to go / mean Q(s, a_data), over {r['to_go_states']} of those states "
             f"far enough from a timeout | {r['mean_return_to_go']:.3f} / {r['mean_q_data_far']:.3f} |",
             f"| Spearman rho of Q(s, a_data) with the return to go, same states | "
             f"{r['spearman_q_return_to_go']:+.3f} |",
             f"| (e) phase 1b's weights (6.1) at T {r['value_weighted_temperature']:g}: effective share of the data | "
             f"{r['effective_share']:.2f} |",
             f"| their sampling mass on the first {EARLY_STEPS} steps of episodes / those steps' share of the data | "
             f"{100 * r['early_weight_share']:.1f}% / {100 * r['early_data_share']:.1f}% |"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an osd_mpe.py or osd_mamujoco.py checkpoint (.pt)")
    parser.add_argument("--dataset", default=None,
                        help="the run's dataset (a .npz path or <task>/<tier>); default: the one the run names")
    parser.add_argument("--states", type=int, default=10_000, help="dataset states sampled for checks (b) and (c)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the state sample")
    cli = parser.parse_args()
    if cli.states < 1:
        parser.error(f"--states is {cli.states}; it must be at least 1")
    torch.set_num_threads(1)
    print(format_table(check(cli.checkpoint, cli.dataset, cli.states, cli.seed)))


if __name__ == "__main__":
    main()
