"""Do trained spread teams coordinate? Landmark assignments of checkpoints, next to their scores.

The normalized score mixes two things: whether the three agents split the landmarks between them (the
coordination OMSD is about) and how close they get. This script measures the first directly. It rolls
out each checkpoint of a record folder on mpe/simple_spread and classifies every episode by where the
agents end up, as the data card classifies the data (datasets/generate.py, spread_assignment_shares):
at the last step, which landmark is each agent nearest to? A permutation ('012', '021', ...) means a
clean split, one agent per landmark; `overlap` means two agents sit nearest the same landmark, so one
landmark is left uncovered: a mis-coordinated episode.

    python benchmarks/spread_coordination.py --records benchmarks/records/default --tier mixed
    python benchmarks/spread_coordination.py --records benchmarks/records/short --tier mixed --episodes 200
    python benchmarks/spread_coordination.py --task mpe/simple_spread-N4 --records benchmarks/records/short --tier mixed

It reads each record's `checkpoint` (checkpoints/ is a local, git-ignored cache: the runs must have
been made on this machine), rebuilds the actors with the script that trained them (loaded by path,
load_script), and prints a
markdown table: per algorithm, mean ± std over seeds of the overlap share and of the normalized score
over the same episodes, then a second table with the score of clean and of overlap episodes apart and how
far from their landmarks the clean ones end. Episodes use seeds 20,000+ (neither training nor the runs' own
evaluations).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import pathlib
import statistics
import sys

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import osd_common  # noqa: E402

TASK = "mpe/simple_spread"
SCRIPTS = {"omsd": "osd_mpe.py", "omsd-independent": "osd_mpe.py", "omsd-beta0": "osd_mpe.py",
           "bc": "baselines/bc.py", "matd3-bc": "baselines/matd3_bc.py"}
EPISODE_SEED = 20_000


def load_script(relative: str):
    """Import an algorithm script as a module (its training lives under `if __name__ == "__main__"`)."""
    path = REPO / relative
    name = f"_osd_script_{path.stem}"
    if name not in sys.modules:  # registered before it runs: its dataclasses look themselves up there
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def load_act_fn(algorithm: str, checkpoint_path: str):
    """The decentralized policy of a checkpoint, rebuilt by the script that wrote it."""
    script = load_script(SCRIPTS[algorithm])
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    meta = checkpoint["meta"]
    saved_args = osd_common.checkpoint_args(script.Args, checkpoint["args"])  # older checkpoints' Args mapped
    actors = script.build_networks(meta, saved_args, torch.device("cpu"))["actors"]
    actors.load_state_dict(checkpoint["actors"])
    actors.eval()
    normalizer = osd_common.Normalizer(checkpoint["normalizers"]["obs_mean"], checkpoint["normalizers"]["obs_std"])
    return osd_common.make_act_fn(actors, normalizer, torch.device("cpu")), meta


def assignment(observations: list[np.ndarray]) -> str:
    """'ijk' if agent 0, 1, 2 is nearest landmark i, j, k (all different), else 'overlap'; n agents and
    landmarks alike. spread obs: [vel(2), pos(2), landmark_rel(n x 2), other_rel((n-1) x 2), comm((n-1) x 2)]."""
    n = len(observations)
    nearest = [int(np.linalg.norm(obs[4:4 + 2 * n].reshape(n, 2), axis=-1).argmin()) for obs in observations]
    return "".join(map(str, nearest)) if len(set(nearest)) == n else "overlap"


def final_distance(observations: list[np.ndarray]) -> float:
    """Mean over agents of the distance to the nearest landmark at this step (how close a split gets)."""
    n = len(observations)
    return float(np.mean([np.linalg.norm(obs[4:4 + 2 * n].reshape(n, 2), axis=-1).min() for obs in observations]))


def rollout_assignments(act_fn, meta: dict, episodes: int, action_noise: float = 0.0, task: str = TASK) -> dict:
    """Roll out `episodes` episodes; the share of each final assignment and the normalized score, also
    split into clean and overlap episodes (their share times their score makes up the whole), with the
    final distance to the nearest landmark in the clean ones.
    With `action_noise`, Gaussian noise of that std is added to every action (clipped to [-1, 1]): do
    deterministic actors that block each other recover when their symmetry is broken?"""
    if action_noise > 0:
        rng, deterministic = np.random.default_rng(0), act_fn

        def act_fn(observations):
            return [np.clip(a + action_noise * rng.standard_normal(a.shape), -1.0, 1.0).astype(np.float32)
                    for a in deterministic(observations)]
    env = osd_common.make_env(task)
    labels, returns, distances = [], [], []
    for episode in range(episodes):
        obs, _ = env.reset(seed=EPISODE_SEED + episode)
        total, done = 0.0, False
        while not done:
            obs, _, reward, terminated, truncated = env.step(act_fn(obs))
            total += reward
            done = terminated or truncated
        labels.append(assignment(obs))
        returns.append(total)
        distances.append(final_distance(obs))
    env.close()
    counts = collections.Counter(labels)
    ref_random = meta.get("ref_random")
    ref_expert = meta.get("ref_expert")
    if ref_random is None or ref_expert is None:
        ref_random, ref_expert = osd_common.reference_returns(task)
    overlap = np.array([label == "overlap" for label in labels])
    returns, distances = np.array(returns), np.array(distances)

    def score_of(mask):  # normalized score of the episodes in `mask` (None when there are none)
        return osd_common.normalized_score(float(returns[mask].mean()), ref_random, ref_expert) if mask.any() else None

    return {"shares": {k: v / episodes for k, v in counts.items()},
            "overlap": counts.get("overlap", 0) / episodes,
            "normalized_score": osd_common.normalized_score(float(np.mean(returns)), ref_random, ref_expert),
            "score_clean": score_of(~overlap), "score_overlap": score_of(overlap),
            "final_distance_clean": float(distances[~overlap].mean()) if (~overlap).any() else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=pathlib.Path, required=True, help="a folder of run records")
    parser.add_argument("--task", default=TASK, help="mpe/simple_spread, or a team size: mpe/simple_spread-N4")
    parser.add_argument("--tier", default="mixed", choices=osd_common.TIERS, help="the spread tier to look at")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per checkpoint")
    parser.add_argument("--action-noise", type=float, default=0.0,
                        help="std of Gaussian noise added to every action at execution (0: none)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help="also write every run's result here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    try:
        osd_common.check_task(args.task)
    except osd_common.TaskError as error:
        raise SystemExit(f"spread_coordination: --task: {error}") from None
    if osd_common.split_team_size(args.task)[0] != TASK:
        raise SystemExit(f"spread_coordination: --task {args.task}: landmark assignments exist on {TASK} "
                         f"and its team sizes ({TASK}-N4, ...) only")

    results = collections.defaultdict(list)
    for path in sorted(args.records.glob(f"*__{args.task.replace('/', '_')}__{args.tier}__*.json")):
        record = osd_common.load_record(path)
        checkpoint = record["checkpoint"]
        if record["algorithm"] not in SCRIPTS:
            continue
        if checkpoint and not pathlib.Path(checkpoint).is_file() and (REPO / checkpoint).is_file():
            checkpoint = str(REPO / checkpoint)  # relative to the repo root, where the grid runs its commands
        if not checkpoint or not pathlib.Path(checkpoint).is_file():
            print(f"spread_coordination: {path.name}: checkpoint {checkpoint!r} is not on this machine; skipped")
            continue
        act_fn, meta = load_act_fn(record["algorithm"], checkpoint)
        result = rollout_assignments(act_fn, meta, args.episodes, args.action_noise, args.task)
        result.update(algorithm=record["algorithm"], seed=record["seed"], record=str(path))
        results[record["algorithm"]].append(result)
        print(f"{path.name}: overlap {result['overlap']:.0%}, normalized score {result['normalized_score']:.1f}, "
              f"assignments {dict(sorted(result['shares'].items()))}")
    if not results:
        raise SystemExit(f"spread_coordination: no {args.task} {args.tier} record with a checkpoint in {args.records}")

    def cell(values):
        if len(values) == 1:
            return f"{values[0]:.1f} (n=1)"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f} (n={len(values)})"

    print(f"\n{args.task} {args.tier}, {args.episodes} episodes per run (seeds {EPISODE_SEED}+):\n")
    print("| algorithm | episodes with two agents on one landmark (%) | distinct assignments used | normalized score |")
    print("|---|---|---|---|")
    present = [(name, results[name]) for name in ("omsd", "omsd-independent", "matd3-bc", "bc") if results.get(name)]
    for algorithm, runs in present:
        used = [sum(1 for k, v in r["shares"].items() if k != "overlap" and v >= 0.05) for r in runs]
        print(f"| {algorithm} | {cell([100 * r['overlap'] for r in runs])} | "
              f"{'/'.join(str(u) for u in used)} | {cell([r['normalized_score'] for r in runs])} |")
    print("\nThe score split by episode kind, and how close the clean splits end:\n")
    print("| algorithm | score of clean episodes | score of overlap episodes | final distance to the nearest landmark, clean episodes |")
    print("|---|---|---|---|")
    for algorithm, runs in present:
        columns = [[r[key] for r in runs if r[key] is not None] for key in ("score_clean", "score_overlap")]
        distance = [r["final_distance_clean"] for r in runs if r["final_distance_clean"] is not None]
        print(f"| {algorithm} | {cell(columns[0]) if columns[0] else '-'} | {cell(columns[1]) if columns[1] else '-'} | "
              + (f"{statistics.mean(distance):.3f} ± {statistics.stdev(distance):.3f}" if len(distance) > 1 else
                 "/".join(f"{d:.3f}" for d in distance) or "-") + " |")
    if args.json is not None:
        args.json.write_text(json.dumps({k: v for k, v in results.items()}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
