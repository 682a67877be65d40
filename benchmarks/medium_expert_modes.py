"""Which half of HalfCheetah `medium-expert` do OMSD's actors follow, and can its critic choose? (issue 19)

`medium-expert` pools the episodes of two TD3 teams (datasets/mamujoco_data.py): a medium checkpoint and
the expert, with action noise 0.1. Episodes are labelled by their normalized score: above 90 the expert's,
else the medium team's (90 lies between the two teams' score clusters, docs/q_term_notes.md §5.9.1). For
osd_mamujoco.py checkpoints trained on the file, this prints:

(1) held-out episodes (reset seeds 30,000+, neither training's nor the runs' evaluations): mean, median
    and share under 50 of the normalized score: failures show apart from the typical episode;
(2) on each half's states, the mean |a - a_team| per action entry from the actors' action to each team's
    noise-free action: whom the actors imitate where;
(3) with the first checkpoint's critic (the mean of the target twins, as in the actors' loss): on each
    half's states, mean Q at each team's action and at the data's, and the share of states where Q
    prefers the expert team's action to the medium team's;
(4) the in-sample advantage A = min_k Q(s, a) - V(s) on each half, and the share of the sampling mass that
    weights exp(A / T), clipped at 100 (IQL's form), put on the expert half, per --temperatures; the same
    for the scripts' phase-1b weights of the value Q(s, a) (docs/algorithm.md eq. (6.1)), per
    --value-temperatures.

(5) with --behavior-samples K: on --sample-states states of each half, K joint actions sampled from the
    first checkpoint's behavior model (deterministic DDIM, 25 steps, agent by agent): the mean distance of
    the nearest sample to each team's action, and of the sample Q ranks best. Does the behavior model hold
    the expert's action on the medium team's states, for a choice among its samples to find? With
    --sample-first-steps N the states are drawn from the first N steps of episodes only, where the two
    teams' states still overlap (both start at rest).

(6) with --failures: the first checkpoint's held-out episodes again, those under 50 against the others and
    against the data's episodes: the share whose torso pitched past 90 degrees (the cheetah on its back),
    the share standing still from some step to the end (stuck), the mean forward speed, how far their
    states lie from the data's, and per failed episode when it got stuck and in what pitch.

The value-weighted fine-tune these weights led to is the scripts' phase 1b (`--value-weighted-steps`,
docs/algorithm.md §6); its first version, a fine-tune of a checkpoint's behavior model here (`--tilt-out`,
also with advantage weights), is at commit 3eb2561 (docs/q_term_notes.md §5.9.1).

    python benchmarks/medium_expert_modes.py --checkpoints checkpoints/<run>.pt [more.pt ...]
    python benchmarks/medium_expert_modes.py --checkpoints checkpoints/<run>.pt --failures
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from critic_check import CHUNK, episode_starts, load_run, steps_in_episode  # noqa: E402
from spread_coordination import REPO  # noqa: E402

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "datasets"))
import osd_common  # noqa: E402
from mamujoco_data import expert_policy, medium_policy, stack_agents  # noqa: E402  (datasets/)

HELD_OUT_SEED = 30_000
EXPERT_ABOVE = 90.0  # an episode scoring above this is the expert team's (between the teams' clusters)
FAILED_BELOW = 50.0  # a held-out episode under this counts as failed (under the medium team's cluster)
PITCH, SPEED = 1, 8  # HalfCheetah's global state is qpos[1:] then qvel: the torso's pitch, its forward speed
FLIP_PITCH = np.pi / 2  # a torso pitched past this is on its back
STILL_SPEED, STILL_STEPS = 0.5, 100  # forward speed under this for the last this many steps or more: stuck


def half_labels(rewards, terminals, timeouts, ref_random: float, ref_expert: float) -> np.ndarray:
    """Per transition: True where its episode scores above EXPERT_ABOVE (the expert half)."""
    starts = episode_starts(terminals, timeouts)
    ends = np.concatenate([starts[1:], [len(rewards)]])
    labels = np.zeros(len(rewards), dtype=bool)
    for start, end in zip(starts, ends):
        score = osd_common.normalized_score(float(np.sum(rewards[start:end])), ref_random, ref_expert)
        labels[start:end] = score > EXPERT_ABOVE
    return labels


def unpad(actions: np.ndarray, act_dims) -> np.ndarray:
    """[T, N, A] zero-padded per-agent actions -> [T, sum(act_dims)] joint actions."""
    return np.concatenate([actions[:, i, :dim] for i, dim in enumerate(act_dims)], axis=-1)


def distances(actions: np.ndarray, team_actions: dict[str, np.ndarray], expert_half: np.ndarray) -> dict:
    """{team: {"expert half": d, "medium half": d}}: mean |a - a_team| per entry of joint actions [T, A]."""
    return {team: {half: float(np.abs(actions - target)[mask].mean())
                   for half, mask in (("expert half", expert_half), ("medium half", ~expert_half))}
            for team, target in team_actions.items()}


def sampling_weights(score: np.ndarray, temperature: float) -> np.ndarray:
    """min(exp(score / T), 100), IQL's clipped form (the exponent capped first, against overflow)."""
    return np.minimum(np.exp(np.minimum(score / temperature, 50.0)), 100.0)


def expert_mass(score: np.ndarray, expert_half: np.ndarray, temperature: float) -> float:
    """Share of the sampling mass that sampling_weights(score, T) put on the expert half."""
    weights = sampling_weights(score, temperature)
    return float(weights[expert_half].sum() / weights.sum())


@torch.no_grad()
def team_joint_actions(data) -> dict[str, np.ndarray]:
    """The two behavior teams' noise-free joint actions [T, A] on the data's states."""
    obs = np.concatenate([data.observations[:, i, :dim] for i, dim in enumerate(data.meta["obs_dims"])], axis=-1)
    obs = torch.as_tensor(obs, dtype=torch.float32)
    teams = {"expert team": expert_policy(), "medium team": medium_policy()}
    return {name: torch.cat([team.actor(obs[i:i + CHUNK]) for i in range(0, len(obs), CHUNK)]).numpy()
            for name, team in teams.items()}


@torch.no_grad()
def actor_joint_actions(script, nets, checkpoint, data) -> np.ndarray:
    norm = checkpoint["normalizers"]
    obs = torch.as_tensor((data.observations - norm["obs_mean"]) / norm["obs_std"], dtype=torch.float32)
    width = data.actions.shape[-1]
    actions = torch.cat([script.joint_action(nets["actors"], obs[i:i + CHUNK], width) for i in range(0, len(obs), CHUNK)])
    return unpad(actions.numpy(), data.meta["act_dims"])


@torch.no_grad()
def critic_values(nets, checkpoint, data, joint_actions: dict[str, np.ndarray]):
    """(mean-twin target Q at each joint action set [T], in-sample advantage min_k Q(s, a_data) - V(s) [T])."""
    norm = checkpoint["normalizers"]
    state = torch.as_tensor((data.states - norm["state_mean"]) / norm["state_std"], dtype=torch.float32)
    act_dims = data.meta["act_dims"]

    def q_of(padded: np.ndarray, reduce) -> np.ndarray:
        flat = torch.as_tensor(padded.reshape(len(padded), -1))
        return torch.cat([reduce(*nets["q_target"](state[i:i + CHUNK], flat[i:i + CHUNK])).reshape(-1)
                          for i in range(0, len(flat), CHUNK)]).numpy()

    values = {name: q_of(stack_agents(joint, act_dims), lambda q1, q2: 0.5 * (q1 + q2)) for name, joint in joint_actions.items()}
    values["data"] = q_of(data.actions, lambda q1, q2: 0.5 * (q1 + q2))
    v = torch.cat([nets["v_net"](state[i:i + CHUNK]).reshape(-1) for i in range(0, len(state), CHUNK)]).numpy()
    return values, q_of(data.actions, torch.min) - v


@torch.no_grad()
def behavior_sample_reach(script, nets, checkpoint, data, teams: dict[str, np.ndarray], expert_half: np.ndarray,
                          samples: int, n_states: int, first_steps: int = 0, seed: int = 0) -> dict:
    """{half: {"nearest to <team>": d, "Q's best to <team>": d}}: per state, `samples` behavior-model joint
    actions; distances per entry of joint actions, averaged over `n_states` random states of the half (of
    the first `first_steps` steps of its episodes, when above 0)."""
    from spread_conventions import sample_behavior_actions  # the behavior model's DDIM sampler

    args = osd_common.checkpoint_args(script.Args, checkpoint["args"])
    norm, act_dims = checkpoint["normalizers"], data.meta["act_dims"]
    n_agents = data.meta["n_agents"]
    act_mask = torch.as_tensor(data.act_mask, dtype=torch.float32)
    prefix = script.prefix_masks(n_agents, args.decomposition)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    starts = episode_starts(data.terminals, data.timeouts)
    step_in_episode = steps_in_episode(starts, len(data.rewards))
    early = step_in_episode < first_steps if first_steps > 0 else np.ones(len(data.rewards), dtype=bool)
    out = {}
    for half, mask in (("expert half", expert_half & early), ("medium half", ~expert_half & early)):
        if mask.sum() < n_states:
            raise SystemExit(f"medium_expert_modes: --sample-states {n_states} is more than the {int(mask.sum())} "
                             f"states of the {half}" + (f" in the first {first_steps} steps" if first_steps else "")
                             + "; pass a smaller --sample-states or a larger --sample-first-steps")
        rows = np.repeat(rng.choice(np.flatnonzero(mask), size=n_states, replace=False), samples)
        state = torch.as_tensor((data.states[rows] - norm["state_mean"]) / norm["state_std"], dtype=torch.float32)
        obs = torch.as_tensor((data.observations[rows] - norm["obs_mean"]) / norm["obs_std"], dtype=torch.float32)
        condition = state[:, None, :].expand(-1, n_agents, -1) if args.behavior_condition == "state" else obs
        sampled = sample_behavior_actions(script, nets["score_net"], condition, prefix, act_mask, n_steps=25)
        q = 0.5 * sum(nets["q_target"](state, sampled.reshape(len(sampled), -1)))
        best = q.reshape(n_states, samples).argmax(-1)
        joint = unpad(sampled.numpy(), act_dims).reshape(n_states, samples, -1)
        result = {}
        for team, target in teams.items():
            gap = np.abs(joint - target[rows].reshape(n_states, samples, -1)).mean(-1)  # [states, samples]
            result[f"nearest to {team}"] = float(gap.min(-1).mean())
            result[f"Q's best to {team}"] = float(gap[np.arange(n_states), best.numpy()].mean())
        out[half] = result
    return out


def pitch_and_speed(states: np.ndarray) -> tuple[float, float, int]:
    """(largest |torso pitch|, mean forward speed, the first step from which the cheetah stands still to the
    episode's end, -1 if it does not) over one episode's global states [T, 17]."""
    moving = np.flatnonzero(np.abs(states[:, SPEED]) >= STILL_SPEED)
    still_from = int(moving[-1]) + 1 if len(moving) else 0
    stuck = still_from if len(states) - still_from >= STILL_STEPS else -1
    return float(np.abs(states[:, PITCH]).max()), float(states[:, SPEED].mean()), stuck


@torch.no_grad()
def held_out_rollouts(nets, checkpoint, episodes: int) -> list[dict]:
    """`episodes` decentralized episodes of the checkpoint's actors from reset seeds HELD_OUT_SEED+ (neither
    training's nor the runs' own evaluations): each one's normalized score and global states."""
    meta, norm = checkpoint["meta"], checkpoint["normalizers"]
    act = osd_common.make_act_fn(nets["actors"], osd_common.Normalizer(norm["obs_mean"], norm["obs_std"]),
                                 torch.device("cpu"))
    env = osd_common.make_env(meta["task"], agent_obsk=osd_common.dataset_agent_obsk(meta))
    rollouts = []
    for episode in range(episodes):
        obs, state = env.reset(seed=HELD_OUT_SEED + episode)
        states, total, done = [state], 0.0, False
        while not done:
            obs, state, reward, terminated, truncated = env.step(act(obs))
            states.append(state)
            total, done = total + reward, terminated or truncated
        rollouts.append({"score": osd_common.normalized_score(total, meta["ref_random"], meta["ref_expert"]),
                         "states": np.asarray(states[:-1])})
    env.close()
    return rollouts


def nearest_data_distance(queries: np.ndarray, data_states: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Per query state, the RMS per entry of the standardized difference to its nearest data state."""
    reference = torch.as_tensor(data_states / scale, dtype=torch.float32)
    out = [torch.cdist(torch.as_tensor(queries[i:i + 1024] / scale, dtype=torch.float32), reference).min(-1).values
           for i in range(0, len(queries), 1024)]
    return torch.cat(out).numpy() / np.sqrt(data_states.shape[1])


def failure_anatomy(rollouts: list[dict], data, reference_states: int = 50_000, seed: int = 0) -> dict:
    """What the failed held-out episodes (score under FAILED_BELOW) of `rollouts` (held_out_rollouts) have that
    the others do not: the share whose torso pitched past FLIP_PITCH (on its back), the share stuck (standing
    still to the end), the mean forward speed, and how far their states lie from the data's
    (nearest_data_distance to `reference_states` random data states), against the same for the data's own
    episodes; and per failed episode its score, the step it got stuck from and its final pitch."""
    starts = episode_starts(data.terminals, data.timeouts)
    ends = np.concatenate([starts[1:], [len(data.rewards)]])
    meta = data.meta
    data_rows = [(osd_common.normalized_score(float(data.rewards[a:b].sum()), meta["ref_random"], meta["ref_expert"]),
                  *pitch_and_speed(data.states[a:b])) for a, b in zip(starts, ends)]
    rows = [(r["score"], *pitch_and_speed(r["states"])) for r in rollouts]
    rng = np.random.default_rng(seed)
    reference = data.states[rng.choice(len(data.states), size=min(reference_states, len(data.states)), replace=False)]
    scale = data.states.std(0) + 1e-6
    failed = np.array([row[0] < FAILED_BELOW for row in rows])
    distance = [float(np.median(nearest_data_distance(r["states"], reference, scale))) for r in rollouts]

    def summary(table, mask) -> dict:
        table = [row for row, keep in zip(table, mask) if keep]
        if not table:
            return {"episodes": 0}
        scores, pitch, speed, stuck = (np.array(column) for column in zip(*table))
        return {"episodes": len(table), "flipped": float((pitch > FLIP_PITCH).mean()), "speed": float(speed.mean()),
                "score": float(scores.mean()), "stuck": float((stuck >= 0).mean())}

    data_failed = np.array([row[0] < FAILED_BELOW for row in data_rows])
    return {"data, every episode": summary(data_rows, np.ones(len(data_rows), dtype=bool)),
            "data, failed": summary(data_rows, data_failed),
            "held-out, failed": {**summary(rows, failed), "distance": float(np.mean(np.array(distance)[failed])) if failed.any() else float("nan")},
            "held-out, the others": {**summary(rows, ~failed), "distance": float(np.mean(np.array(distance)[~failed]))},
            "failed episodes": [{"score": r["score"], "stuck from": row[3],
                                 "final pitch": float(r["states"][-STILL_STEPS:, PITCH].mean())}
                                for r, row, bad in zip(rollouts, rows, failed) if bad]}


def held_out(rollouts: list[dict]) -> dict:
    """Mean, median and share under FAILED_BELOW of the rollouts' normalized scores."""
    scores = np.array([r["score"] for r in rollouts])
    return {"mean": float(scores.mean()), "median": float(np.median(scores)), "failed": float((scores < FAILED_BELOW).mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, help="osd_mamujoco.py checkpoints on one medium-expert file")
    parser.add_argument("--episodes", type=int, default=100, help="held-out episodes per checkpoint (0: skip)")
    parser.add_argument("--temperatures", type=float, nargs="*", default=[0.3, 1.0, 3.0, 10.0],
                        help="temperatures T of the advantage weights exp(A / T) to report")
    parser.add_argument("--behavior-samples", type=int, default=0,
                        help="behavior-model samples per state for (5) (0: skip)")
    parser.add_argument("--sample-first-steps", type=int, default=0,
                        help="draw (5)'s states from the first this many steps of episodes (0: any step)")
    parser.add_argument("--sample-states", type=int, default=200, help="states per half for (5)")
    parser.add_argument("--failures", action="store_true",
                        help="(6): what the failed held-out episodes of the first checkpoint have that the others lack")
    parser.add_argument("--value-temperatures", type=float, nargs="*", default=[0.07, 0.2, 0.7],
                        help="temperatures of the scripts' phase-1b weights (docs/algorithm.md eq. (6.1)) to report")
    args = parser.parse_args(argv)
    if args.failures and args.episodes < 1:
        parser.error("--failures looks at the held-out episodes: pass --episodes 1 or more (default 100)")
    torch.set_num_threads(1)
    torch.manual_seed(0)

    runs = [load_run(path) for path in args.checkpoints]
    data = runs[0][4]
    if data.meta.get("tier") != "medium-expert" or not data.meta["task"].startswith("mamujoco/HalfCheetah"):
        raise SystemExit(f"medium_expert_modes: {args.checkpoints[0]} was trained on {data.meta['task']} "
                         f"{data.meta.get('tier')}, not HalfCheetah medium-expert (whose two teams this compares)")
    if any(run[4].meta.get("sha256") != data.meta.get("sha256") for run in runs[1:]):
        raise SystemExit("medium_expert_modes: the checkpoints were trained on different files; pass runs of one file")
    expert_half = half_labels(data.rewards, data.terminals, data.timeouts, data.meta["ref_random"], data.meta["ref_expert"])
    teams = team_joint_actions(data)
    data_joint = unpad(data.actions, data.meta["act_dims"])
    print(f"{data.path} (sha256 {data.meta['sha256'][:8]}..., data score {data.meta['normalized_score']:.1f}): "
          f"{expert_half.mean():.0%} of transitions in the expert half\n")
    print("| checkpoint | held-out mean | median | under 50 | to expert team (expert / medium half) | to medium team (expert / medium half) |")
    print("|---|---|---|---|---|---|")
    rows = [("the data's actions", None, distances(data_joint, teams, expert_half))]
    rollouts = []  # per checkpoint, its held-out episodes (rolled out once: the table and --failures share them)
    for path, (script, checkpoint, _, nets, _) in zip(args.checkpoints, runs):
        rollouts.append(held_out_rollouts(nets, checkpoint, args.episodes) if args.episodes else [])
        rows.append((pathlib.Path(path).name, held_out(rollouts[-1]) if args.episodes else None,
                     distances(actor_joint_actions(script, nets, checkpoint, data), teams, expert_half)))
    for name, episodes, near in rows:
        score = (f"{episodes['mean']:.1f} | {episodes['median']:.1f} | {episodes['failed']:.0%}" if episodes else "- | - | -")
        print(f"| {name} | {score} | {near['expert team']['expert half']:.3f} / {near['expert team']['medium half']:.3f} | "
              f"{near['medium team']['expert half']:.3f} / {near['medium team']['medium half']:.3f} |")

    script, checkpoint, _, nets, _ = runs[0]
    values, advantage = critic_values(nets, checkpoint, data, teams)
    print(f"\nThe critic of {pathlib.Path(args.checkpoints[0]).name} (mean of the target twins):\n")
    print("| states | Q at the expert team's action | at the medium team's | at the data's | Q prefers the expert team's | mean advantage of the data's action |")
    print("|---|---|---|---|---|---|")
    for half, mask in (("expert half", expert_half), ("medium half", ~expert_half)):
        prefers = np.mean(values["expert team"][mask] > values["medium team"][mask])
        print(f"| {half} | {values['expert team'][mask].mean():.1f} | {values['medium team'][mask].mean():.1f} | "
              f"{values['data'][mask].mean():.1f} | {prefers:.0%} | {advantage[mask].mean():.2f} |")
    quantiles = np.percentile(advantage, [5, 50, 95])
    print(f"\nadvantage 5% / 50% / 95%: {quantiles[0]:.2f} / {quantiles[1]:.2f} / {quantiles[2]:.2f}; sampling mass "
          "on the expert half with weights min(exp(A / T), 100): "
          + ", ".join(f"T {t:g}: {expert_mass(advantage, expert_half, t):.2f}" for t in args.temperatures)
          + f" (uniform: {expert_half.mean():.2f})")
    q_data = torch.as_tensor(values["data"])
    value_mass = {t: float(weights[expert_half].sum() / weights.sum())
                  for t in args.value_temperatures for weights in [script.value_sampling_weights(q_data, t).numpy()]}
    print("sampling mass on the expert half with phase 1b's weights (6.1), min(exp(z / T), 100) with z the "
          "standardized Q(s, a): " + ", ".join(f"T {t:g}: {mass:.2f}" for t, mass in value_mass.items()))
    if args.behavior_samples:
        reach = behavior_sample_reach(script, nets, checkpoint, data, teams, expert_half, args.behavior_samples,
                                      args.sample_states, args.sample_first_steps)
        where = f" of the first {args.sample_first_steps} steps of episodes" if args.sample_first_steps else ""
        print(f"\n{args.behavior_samples} behavior-model samples per state, {args.sample_states} states per half{where} "
              "(distance per action entry):\n")
        print("| states | nearest sample to the expert team's action | to the medium team's | "
              "Q's best sample to the expert team's | to the medium team's |")
        print("|---|---|---|---|---|")
        for half, result in reach.items():
            cells = [result[f"{kind} to {team}"] for kind in ("nearest", "Q's best") for team in ("expert team", "medium team")]
            print(f"| {half} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")
    if args.failures:
        anatomy = failure_anatomy(rollouts[0], data)
        print(f"\nFailed episodes (score under {FAILED_BELOW:g}) of {pathlib.Path(args.checkpoints[0]).name}, "
              f"held-out, against the data's (distance: median over an episode's states of the RMS standardized "
              "distance to the nearest of 50,000 data states):\n")
        print("| episodes | count | mean score | torso past 90 degrees (on its back) | standing still to the end | "
              "mean forward speed | distance to the data |")
        print("|---|---|---|---|---|---|---|")
        failed_episodes = anatomy.pop("failed episodes")
        for name, row in anatomy.items():
            if not row["episodes"]:
                print(f"| {name} | 0 | - | - | - | - | - |")
                continue
            distance = f"{row['distance']:.3f}" if "distance" in row else "-"
            print(f"| {name} | {row['episodes']} | {row['score']:.1f} | {row['flipped']:.0%} | {row['stuck']:.0%} | "
                  f"{row['speed']:.2f} | {distance} |")
        print(f"\nHeld-out failed episodes (score, standing still from step, mean torso pitch over the last "
              f"{STILL_STEPS} steps; the data's 1-99% pitch: {np.percentile(data.states[:, PITCH], 1):.2f} to "
              f"{np.percentile(data.states[:, PITCH], 99):.2f}): "
              + "; ".join(f"{e['score']:.1f}, {e['stuck from']}, {e['final pitch']:.2f}" for e in failed_episodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
