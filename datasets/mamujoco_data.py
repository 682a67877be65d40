"""Make the `mamujoco/HalfCheetah-2x3` datasets, deterministically, from the TD3 behavior policies.

    python datasets/mamujoco_data.py --tier expert                 # one dataset into the cache
    python datasets/mamujoco_data.py --all                         # every tier
    python datasets/mamujoco_data.py --measure-references          # R_random / R_expert, 50 episodes each
    python datasets/mamujoco_data.py --card                        # markdown table of the cached tiers

The behavior policies are the actor checkpoints of datasets/train_mamujoco_td3.py, committed under
`datasets/policies/halfcheetah-2x3/` with their `training_log.json`. Every tier but medium-replay is
rolled out here with Gaussian action noise N(0, 0.1^2) for diversity (as OMAR added noise to its MATD3
policies); episodes are 1000 steps and end in a timeout, never a terminal.

Tiers (episodes of 1000 steps; sizes in TIER_EPISODES):
  random         uniform random actions in [-1, 1]                                    100 episodes
  medium         the checkpoint whose evaluation return is closest to half the expert's  100 episodes
  expert         the final checkpoint                                                  100 episodes
  medium-expert  medium and expert episodes pooled, half each                          200 episodes
  medium-replay  the TD3 learner's own replay buffer (exploration noise 0.1, the first
                 10k steps uniform random), in order, up to the medium checkpoint's step
                 (a prefix of the git-ignored cache file the training run writes)

The same seed always gives the same arrays (the metadata's sha256) on the same software: data episodes are reset
with seeds 10_000_000 + seed * 1_000_000 + k (far from the evaluation seeds 0, 1, ...), and the noise
comes from numpy's default_rng(seed). The actor runs on the CPU with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from importlib import metadata

import numpy as np
import torch
from tqdm import tqdm

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import osd_common  # noqa: E402
from train_mamujoco_td3 import load_actor, split_actions  # noqa: E402

TASK = "mamujoco/HalfCheetah-2x3"
GENERATOR_VERSION = "osd-mamujoco-1"
POLICY_DIR = HERE / "policies" / "halfcheetah-2x3"
REPLAY_FILE = osd_common.DATASET_CACHE / "mamujoco" / "HalfCheetah-2x3" / "td3_replay.npz"
# Our measured R_random / R_expert, until it is merged into datasets/reference_returns.json.
LOCAL_REFERENCES = POLICY_DIR / "reference_returns.json"
MAMUJOCO_TIERS = ("random", "medium", "medium-replay", "expert", "medium-expert")
TIER_EPISODES = {"random": 100, "medium": 100, "expert": 100, "medium-expert": 200, "medium-replay": None}
ACTION_NOISE = 0.1
REFERENCE_EPISODES = 50
DATA_RESET_SEED_OFFSET = 10_000_000  # as datasets/generate.py: far from the evaluation seeds 0, 1, ...
PACKAGES = ("mujoco", "gymnasium", "gymnasium_robotics", "numpy", "torch")


# ---------------------------------------------------------------------------------------------------
# Behavior policies: obs list -> action list, both in the osd convention (actions in [-1, 1])
# ---------------------------------------------------------------------------------------------------
class UniformRandomTeam:
    """The random tier: every action uniform in [-1, 1] (also the policy R_random is measured with)."""

    policy_id = "uniform-random"

    def __call__(self, obs, act_dims, rng: np.random.Generator) -> list[np.ndarray]:
        return [rng.uniform(-1.0, 1.0, d).astype(np.float32) for d in act_dims]


class TD3Team:
    """A TD3 joint-actor checkpoint (datasets/train_mamujoco_td3.py) plus Gaussian action noise."""

    def __init__(self, checkpoint: pathlib.Path, noise_std: float = ACTION_NOISE):
        self.checkpoint, self.noise_std = pathlib.Path(checkpoint), noise_std
        self.actor = load_actor(self.checkpoint)

    @property
    def policy_id(self) -> str:
        return f"td3-joint:{self.checkpoint.parent.name}/{self.checkpoint.name}:noise{self.noise_std:g}"

    @torch.no_grad()
    def __call__(self, obs, act_dims, rng: np.random.Generator) -> list[np.ndarray]:
        joint = self.actor(torch.as_tensor(np.concatenate(obs), dtype=torch.float32)[None])[0].numpy()
        if self.noise_std > 0:
            joint = joint + self.noise_std * rng.standard_normal(joint.shape)
        return split_actions(np.clip(joint, -1.0, 1.0), act_dims)


def training_log(policy_dir: pathlib.Path = POLICY_DIR) -> dict:
    path = policy_dir / "training_log.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing; train the behavior policy first: python datasets/train_mamujoco_td3.py")
    return json.loads(path.read_text())


def expert_checkpoint(policy_dir: pathlib.Path = POLICY_DIR) -> dict:
    """The final checkpoint's log entry (step, eval return, file name)."""
    return training_log(policy_dir)["evaluations"][-1]


def medium_checkpoint(policy_dir: pathlib.Path = POLICY_DIR) -> dict:
    """The checkpoint whose evaluation return is closest to half of the final one's (ties: earliest)."""
    evaluations = training_log(policy_dir)["evaluations"]
    half = 0.5 * evaluations[-1]["eval_return_mean"]
    return min(evaluations[:-1], key=lambda e: abs(e["eval_return_mean"] - half))


def expert_policy(policy_dir: pathlib.Path = POLICY_DIR) -> TD3Team:
    return TD3Team(policy_dir / expert_checkpoint(policy_dir)["checkpoint"])


def medium_policy(policy_dir: pathlib.Path = POLICY_DIR) -> TD3Team:
    return TD3Team(policy_dir / medium_checkpoint(policy_dir)["checkpoint"])


# ---------------------------------------------------------------------------------------------------
# Rollouts and the file
# ---------------------------------------------------------------------------------------------------
def rollout(env, policy, rng: np.random.Generator, reset_seed: int, episode_steps: int | None = None) -> dict:
    """One episode; `episode_steps` cuts it short (tests), ending it with a timeout like the real limit."""
    steps = {k: [] for k in osd_common.TRANSITION_FIELDS}
    obs, state = env.reset(seed=reset_seed)
    done, t = False, 0
    while not done:
        actions = policy(obs, env.act_dims, rng)
        next_obs, next_state, reward, terminated, truncated = env.step(actions)
        t += 1
        truncated = truncated or (episode_steps is not None and t >= episode_steps and not terminated)
        done = terminated or truncated
        for key, value in (("observations", obs), ("actions", actions), ("rewards", reward),
                           ("next_observations", next_obs), ("states", state), ("next_states", next_state),
                           ("terminals", float(terminated)), ("timeouts", float(truncated))):
            steps[key].append(value)
        obs, state = next_obs, next_state
    return steps


def pad_agents(per_step, width: int) -> np.ndarray:
    """[T][N] per-agent vectors -> float32 [T, N, width], zero-padded."""
    out = np.zeros((len(per_step), len(per_step[0]), width), dtype=np.float32)
    for t, agents in enumerate(per_step):
        for i, value in enumerate(agents):
            out[t, i, : value.shape[0]] = value
    return out


def stack_agents(joint: np.ndarray, dims) -> np.ndarray:
    """[T, sum(dims)] concatenated per-agent vectors -> float32 [T, N, max(dims)], zero-padded."""
    out = np.zeros((joint.shape[0], len(dims), max(dims)), dtype=np.float32)
    for i, part in enumerate(np.split(joint, np.cumsum(dims)[:-1], axis=1)):
        out[:, i, : part.shape[1]] = part
    return out


def masks(obs_dims, act_dims) -> dict[str, np.ndarray]:
    return {"obs_mask": (np.arange(max(obs_dims))[None] < np.array(obs_dims)[:, None]).astype(np.float32),
            "act_mask": (np.arange(max(act_dims))[None] < np.array(act_dims)[:, None]).astype(np.float32)}


def references(task: str = TASK) -> tuple[float, float]:
    """(R_random, R_expert): datasets/reference_returns.json if it has the task, else our measured entry."""
    try:
        return osd_common.reference_returns(task)
    except osd_common.DatasetError:
        if not LOCAL_REFERENCES.exists():
            raise SystemExit(f"no reference returns for {task}: run python datasets/mamujoco_data.py "
                             "--measure-references") from None
        entry = json.loads(LOCAL_REFERENCES.read_text())
        return float(entry["R_random"]), float(entry["R_expert"])


def episode_plan(tier: str, episodes: int, policy_dir: pathlib.Path = POLICY_DIR) -> list[tuple[str, object]]:
    """(label, policy) of every episode of a rolled-out tier, in file order."""
    if tier == "random":
        return [("random", UniformRandomTeam())] * episodes
    if tier == "medium":
        return [("medium", medium_policy(policy_dir))] * episodes
    if tier == "expert":
        return [("expert", expert_policy(policy_dir))] * episodes
    if tier == "medium-expert":
        half = episodes // 2
        return ([("medium", medium_policy(policy_dir))] * half
                + [("expert", expert_policy(policy_dir))] * (episodes - half))
    raise ValueError(f"unknown tier {tier!r}: use one of {', '.join(MAMUJOCO_TIERS)}")


def replay_arrays(episodes: int | None, policy_dir: pathlib.Path, replay_file: pathlib.Path) -> tuple[dict, dict]:
    """The medium-replay tier: the learner's buffer, in order, up to the medium checkpoint's step."""
    if not replay_file.exists():
        raise SystemExit(f"{replay_file}: missing. medium-replay is the TD3 learner's replay buffer, which the "
                         "training run caches there. Its first 100k steps remake it: "
                         "python datasets/train_mamujoco_td3.py --total-timesteps 100000 --policy-dir /tmp/td3_rerun "
                         "(about 13 min)")
    medium = medium_checkpoint(policy_dir)
    with np.load(replay_file) as data:
        buf = {k: data[k] for k in data.files}
    end = int(medium["step"])
    ends = np.flatnonzero(buf["timeouts"][:end] + buf["terminals"][:end])
    if episodes is not None:  # the first `episodes` episodes only
        end = int(ends[episodes - 1]) + 1
    elif len(ends) == 0 or ends[-1] != end - 1:
        end = int(ends[-1]) + 1  # keep whole episodes only
    obs_dims, act_dims = [int(d) for d in buf["obs_dims"]], [int(d) for d in buf["act_dims"]]
    arrays = {
        "observations": stack_agents(buf["observations"][:end], obs_dims),
        "next_observations": stack_agents(buf["next_observations"][:end], obs_dims),
        "actions": stack_agents(buf["actions"][:end], act_dims),
        **{k: buf[k][:end] for k in ("states", "next_states", "rewards", "terminals", "timeouts")},
        **masks(obs_dims, act_dims),
    }
    info = {"behavior_policies": [f"td3-joint-replay:{policy_dir.name}:seed{int(buf['seed'])}:steps0-{end}"],
            "episode_labels": {f"td3-replay-steps0-{end}": int(len(np.flatnonzero(arrays["timeouts"])))},
            "replay_source": {"file": replay_file.name, "training_seed": int(buf["seed"]),
                              "medium_checkpoint": medium["checkpoint"], "steps": end}}
    return arrays, info


def generate_mamujoco(task: str, tier: str, out=None, episodes: int | None = None, seed: int = 0,
                      force: bool = False, progress: bool = True, episode_steps: int | None = None,
                      policy_dir=POLICY_DIR, replay_file=REPLAY_FILE,
                      refs: tuple[float, float] | None = None) -> pathlib.Path:
    """Generate one HalfCheetah-2x3 dataset file (osd_common format) and return its path.

    `episode_steps` shortens every episode (tests only); `refs` overrides (R_random, R_expert)."""
    if task != TASK:
        raise SystemExit(f"--task {task}: behavior policies exist for {TASK} only")
    if tier not in MAMUJOCO_TIERS:
        raise SystemExit(f"--tier {tier}: use one of {', '.join(MAMUJOCO_TIERS)}")
    policy_dir = pathlib.Path(policy_dir)
    out = pathlib.Path(out) if out is not None else osd_common.dataset_path(task, tier)
    if out.exists() and not force:
        raise SystemExit(f"{out} exists already: pass --force to overwrite it")
    ref_random, ref_expert = refs if refs is not None else references(task)
    env = osd_common.make_env(task)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same actor outputs bit for bit, run after run
    try:
        if tier == "medium-replay":
            arrays, info = replay_arrays(episodes, policy_dir, pathlib.Path(replay_file))
        else:
            plan = episode_plan(tier, episodes or TIER_EPISODES[tier], policy_dir)
            rng = np.random.default_rng(seed)
            columns = {k: [] for k in osd_common.TRANSITION_FIELDS}
            for k, (_, policy) in enumerate(tqdm(plan, desc=f"{task}/{tier}", disable=not progress)):
                steps = rollout(env, policy, rng, DATA_RESET_SEED_OFFSET + seed * 1_000_000 + k, episode_steps)
                for key, values in steps.items():
                    columns[key].extend(values)
            arrays = {
                "observations": pad_agents(columns["observations"], max(env.obs_dims)),
                "next_observations": pad_agents(columns["next_observations"], max(env.obs_dims)),
                "actions": pad_agents(columns["actions"], max(env.act_dims)),
                **{k: np.asarray(columns[k], dtype=np.float32)
                   for k in ("states", "next_states", "rewards", "terminals", "timeouts")},
                **masks(env.obs_dims, env.act_dims),
            }
            labels, counts = np.unique([label for label, _ in plan], return_counts=True)
            info = {"behavior_policies": sorted({policy.policy_id for _, policy in plan}),
                    "episode_labels": {str(k): int(v) for k, v in zip(labels, counts)}}
    finally:
        torch.set_num_threads(threads)
        env.close()
    meta = {
        "task": task, "tier": tier, "n_agents": env.n_agents, "agent_names": env.agent_names,
        "obs_dims": env.obs_dims, "act_dims": env.act_dims, "state_dim": env.state_dim,
        "ref_random": ref_random, "ref_expert": ref_expert, "seed": seed,
        "generator_version": GENERATOR_VERSION, "agent_obsk": env.agent_obsk, "action_noise": ACTION_NOISE,
        "episode_steps": episode_steps or env.max_episode_steps, **info,
        "packages": {p: metadata.version(p) for p in PACKAGES},
    }
    return osd_common.save_dataset(out, arrays, meta, force=force)


def measure_references(episodes: int = REFERENCE_EPISODES, policy_dir=POLICY_DIR, progress: bool = True) -> dict:
    """R_random and R_expert of HalfCheetah-2x3 on the evaluation reset seeds 0..episodes-1 (as
    osd_common.evaluate uses), in the shape of the entries of datasets/reference_returns.json. The
    expert is the expert tier's behavior policy (final checkpoint, action noise 0.1)."""
    env = osd_common.make_env(TASK)
    entry = {"episodes": episodes, "command": "python datasets/mamujoco_data.py --measure-references"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name, policy in (("random", UniformRandomTeam()), ("expert", expert_policy(pathlib.Path(policy_dir)))):
        rng = np.random.default_rng(12345)
        returns = [float(np.sum(rollout(env, policy, rng, k)["rewards"]))
                   for k in tqdm(range(episodes), desc=f"{TASK} {name}", disable=not progress)]
        entry[f"R_{name}"] = float(np.mean(returns))
        entry[f"R_{name}_std"] = float(np.std(returns))
        entry[f"R_{name}_stderr"] = float(np.std(returns) / np.sqrt(episodes))
        entry[f"{name}_policy"] = policy.policy_id
    torch.set_num_threads(threads)
    env.close()
    return entry


def data_card() -> str:
    """Markdown table of every cached HalfCheetah-2x3 tier's metadata."""
    rows = ["| tier | behavior | transitions | episodes | return mean ± std | normalized score of the data |",
            "|---|---|---|---|---|---|"]
    for tier in MAMUJOCO_TIERS:
        path = osd_common.dataset_path(TASK, tier)
        if not path.exists():
            rows.append(f"| {tier} | not generated | | | | |")
            continue
        m = osd_common.load_dataset(path).meta
        rows.append(f"| {tier} | {', '.join(m['behavior_policies'])} | {m['transitions']:,} | {m['episodes']:,} | "
                    f"{m['return_mean']:.1f} ± {m['return_std']:.1f} | {m['normalized_score']:.1f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=TASK)
    parser.add_argument("--tier", default="expert", help=f"one of {', '.join(MAMUJOCO_TIERS)}")
    parser.add_argument("--out", default=None, help="output .npz (default: datasets/cache/<task>/<tier>.npz)")
    parser.add_argument("--episodes", type=int, default=None, help="override the tier's episode count")
    parser.add_argument("--seed", type=int, default=0, help="data seed: same seed, same file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--all", action="store_true", help="every tier into the cache")
    parser.add_argument("--measure-references", action="store_true",
                        help=f"measure R_random/R_expert ({REFERENCE_EPISODES} episodes each), print the entry "
                             f"and write it to {LOCAL_REFERENCES.relative_to(HERE.parent)}")
    parser.add_argument("--card", action="store_true", help="print the markdown table of the cached tiers")
    args = parser.parse_args()
    if args.measure_references:
        entry = measure_references(args.episodes or REFERENCE_EPISODES)
        LOCAL_REFERENCES.write_text(json.dumps(entry, indent=2) + "\n")
        print(json.dumps({TASK: entry}, indent=2))
    elif args.card:
        print(data_card())
    elif args.all:
        for tier in MAMUJOCO_TIERS:
            if osd_common.dataset_path(args.task, tier).exists() and not args.force:
                print(f"{args.task}/{tier}: cached, skipping (--force regenerates)")
                continue
            print(generate_mamujoco(args.task, tier, seed=args.seed, force=args.force))
    else:
        print(generate_mamujoco(args.task, args.tier, out=args.out, episodes=args.episodes, seed=args.seed,
                                force=args.force))


if __name__ == "__main__":
    main()
