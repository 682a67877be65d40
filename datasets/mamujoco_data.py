"""Make the MaMuJoCo datasets (`mamujoco/HalfCheetah-2x3` by default), deterministically, from the TD3 behavior
policies.

    python datasets/mamujoco_data.py --tier expert                 # one dataset into the cache
    python datasets/mamujoco_data.py --all                         # every tier
    python datasets/mamujoco_data.py --measure-references          # R_random / R_expert, 50 episodes each
    python datasets/mamujoco_data.py --card                        # markdown table of the cached tiers
    python datasets/mamujoco_data.py --task mamujoco/Hopper-3x1 --all   # another split (each command takes --task)

The behavior policies are the actor checkpoints of datasets/train_mamujoco_td3.py, committed under
`datasets/policies/<split, lower case>/` (HalfCheetah-2x3: `datasets/policies/halfcheetah-2x3/`) with their
`training_log.json`; a split is generated here once that folder exists (TASKS lists the splits osd means to
provide; `python datasets/train_mamujoco_td3.py --task <task>` makes the folder). Every tier but medium-replay
is rolled out here with Gaussian action noise N(0, 0.1^2) for diversity (as OMAR added noise to its MATD3
policies).

Episode ends: an episode lasts at most 1000 steps. HalfCheetah never terminates: its episodes are 1000 steps
and end in a timeout (timeouts = 1, terminals = 0). Hopper, Walker2d and Ant terminate when they fall: such an
episode is shorter and ends in a terminal (terminals = 1, timeouts = 0); one that stays up to the limit ends
in a timeout. A step is never both.

Tiers (episodes of at most 1000 steps; sizes in TIER_EPISODES):
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
from train_mamujoco_td3 import default_policy_dir, default_replay_file, load_actor, split_actions  # noqa: E402

TASK = "mamujoco/HalfCheetah-2x3"  # the default task
# the splits osd provides datasets for, each from its own behavior policies in default_policy_dir(task) (any other
# split works too once its policies are trained there)
TASKS = osd_common.MAMUJOCO_TASKS
GENERATOR_VERSION = "osd-mamujoco-1"


def local_references(task: str, policies: pathlib.Path | None = None) -> pathlib.Path:
    """Our measured R_random / R_expert of `task` (next to its policies), until it is merged into
    datasets/reference_returns.json."""
    return (default_policy_dir(task) if policies is None else pathlib.Path(policies)) / "reference_returns.json"


def task_flag(task: str) -> str:
    """' --task <task>' for a command line, nothing for the default task."""
    return "" if task == TASK else f" --task {task}"


def missing_policies(task: str, policies: pathlib.Path, missing: pathlib.Path) -> SystemExit:
    """The stop when `task`'s behavior policies are not in `policies` (`missing`: the file or folder that is not
    there): it names the folder and the command that makes it."""
    return SystemExit(f"{missing}: missing. The tiers of {task} are made from its behavior policies, a "
                      f"training_log.json and actor checkpoints in {policies}/. Train them first: python "
                      f"datasets/train_mamujoco_td3.py{task_flag(task)} --total-timesteps N (it writes that folder; "
                      f"datasets/MAMUJOCO.md), then python datasets/mamujoco_data.py{task_flag(task)} "
                      "--measure-references")


def require_policies(task: str, policies: pathlib.Path, checkpoints: bool = True) -> None:
    """Stop, naming what is missing and how to make it, unless `policies` holds a training log and (with
    `checkpoints`) the checkpoints of the expert and medium tiers (the final one and the one closest to half
    its return). medium-replay needs the log only (the medium checkpoint's step)."""
    policies = pathlib.Path(policies)
    log = policies / "training_log.json"
    if not log.exists():
        raise missing_policies(task, policies, policies if not policies.exists() else log)
    for entry in (expert_checkpoint(policies), medium_checkpoint(policies)) if checkpoints else ():
        if not (policies / entry["checkpoint"]).exists():
            raise missing_policies(task, policies, policies / entry["checkpoint"])


POLICY_DIR = default_policy_dir(TASK)
LOCAL_REFERENCES = local_references(TASK)
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
        self.task = self.actor.task  # the task the checkpoint was trained on

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
    path = pathlib.Path(policy_dir) / "training_log.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing; train the behavior policy first: python datasets/train_mamujoco_td3.py "
                         "--task <task> (datasets/MAMUJOCO.md)")
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
    """One episode, until the env terminates (a fall: terminals = 1) or truncates (the time limit: timeouts =
    1); `episode_steps` cuts it short (tests), ending it with a timeout like the real limit."""
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


def references(task: str = TASK, policies: pathlib.Path | None = None) -> tuple[float, float]:
    """(R_random, R_expert): datasets/reference_returns.json if it has the task, else our measured entry
    (local_references: next to the task's behavior policies, `policies` or default_policy_dir(task))."""
    try:
        return osd_common.reference_returns(task)
    except osd_common.DatasetError:
        policies = default_policy_dir(task) if policies is None else pathlib.Path(policies)
        local = local_references(task, policies)
        if not local.exists():
            if not (policies / "training_log.json").exists():  # no expert either: train it first
                raise missing_policies(task, policies, policies if not policies.exists()
                                       else policies / "training_log.json") from None
            raise SystemExit(f"no reference returns for {task}: run python datasets/mamujoco_data.py"
                             f"{task_flag(task)} --measure-references") from None
        entry = json.loads(local.read_text())
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


def replay_arrays(episodes: int | None, policy_dir: pathlib.Path, replay_file: pathlib.Path,
                  task: str = TASK) -> tuple[dict, dict]:
    """The medium-replay tier: the learner's buffer, in order, up to the medium checkpoint's step (whole
    episodes only; episodes that end in a fall are shorter, and the buffer's terminals and timeouts are kept)."""
    medium = medium_checkpoint(policy_dir)
    if not replay_file.exists():
        steps = int(medium["step"])
        how = ("Its first 100k steps remake it: python datasets/train_mamujoco_td3.py --total-timesteps 100000 "
               "--policy-dir /tmp/td3_rerun (about 13 min)" if task == TASK else
               f"A training run of the same settings as long as the medium checkpoint's step remakes it: python "
               f"datasets/train_mamujoco_td3.py --task {task} --total-timesteps {steps} --policy-dir /tmp/td3_rerun")
        raise SystemExit(f"{replay_file}: missing. medium-replay is the TD3 learner's replay buffer, which the "
                         f"training run caches there. {how}")
    with np.load(replay_file) as data:
        buf = {k: data[k] for k in data.files}
    end = int(medium["step"])
    ends = np.flatnonzero(buf["timeouts"][:end] + buf["terminals"][:end])
    if episodes is not None:  # the first `episodes` episodes only
        if len(ends) < episodes:
            raise SystemExit(f"{replay_file}: its first {end} steps hold {len(ends)} whole episodes, fewer than "
                             f"--episodes {episodes}")
        end = int(ends[episodes - 1]) + 1
    elif len(ends) == 0:
        raise SystemExit(f"{replay_file}: no episode ends within its first {end} steps (the medium checkpoint's)")
    elif ends[-1] != end - 1:
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
            "episode_labels": {f"td3-replay-steps0-{end}": int(np.count_nonzero(arrays["terminals"]
                                                                                   + arrays["timeouts"]))},
            "replay_source": {"file": replay_file.name, "training_seed": int(buf["seed"]),
                              "medium_checkpoint": medium["checkpoint"], "steps": end}}
    return arrays, info


def generate_mamujoco(task: str, tier: str, out=None, episodes: int | None = None, seed: int = 0,
                      force: bool = False, progress: bool = True, episode_steps: int | None = None,
                      policy_dir=None, replay_file=None,
                      refs: tuple[float, float] | None = None) -> pathlib.Path:
    """Generate one dataset file of a MaMuJoCo split (osd_common format) and return its path.

    `policy_dir` and `replay_file` default to the task's (default_policy_dir(task), default_replay_file(task));
    `episode_steps` shortens every episode (tests only); `refs` overrides (R_random, R_expert)."""
    osd_common.check_task(task)
    if not task.startswith("mamujoco/"):
        raise SystemExit(f"--task {task}: this generator is for MaMuJoCo splits ({', '.join(TASKS)})")
    if tier not in MAMUJOCO_TIERS:
        raise SystemExit(f"--tier {tier}: use one of {', '.join(MAMUJOCO_TIERS)}")
    policy_dir = default_policy_dir(task) if policy_dir is None else pathlib.Path(policy_dir)
    replay_file = default_replay_file(task) if replay_file is None else pathlib.Path(replay_file)
    out = pathlib.Path(out) if out is not None else osd_common.dataset_path(task, tier)
    if out.exists() and not force:
        raise SystemExit(f"{out} exists already: pass --force to overwrite it")
    if tier != "random":  # every tier but random is rolled out by (or recorded from) the trained policies
        require_policies(task, policy_dir, checkpoints=tier != "medium-replay")
    ref_random, ref_expert = refs if refs is not None else references(task, policy_dir)
    env = osd_common.make_env(task)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the same actor outputs bit for bit, run after run
    try:
        if tier == "medium-replay":
            arrays, info = replay_arrays(episodes, policy_dir, replay_file, task)
        else:
            plan = episode_plan(tier, episodes or TIER_EPISODES[tier], policy_dir)
            trained_on = sorted({policy.task for _, policy in plan if getattr(policy, "task", None) not in (None, task)})
            if trained_on:
                raise SystemExit(f"{policy_dir}: its checkpoints were trained on {', '.join(trained_on)}, not {task}")
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


def measure_references(episodes: int = REFERENCE_EPISODES, policy_dir=None, progress: bool = True,
                       task: str = TASK) -> dict:
    """R_random and R_expert of `task` on the evaluation reset seeds 0..episodes-1 (as osd_common.evaluate
    uses; an episode ends at a fall or the time limit), in the shape of the entries of
    datasets/reference_returns.json. The expert is the expert tier's behavior policy (final checkpoint of
    `policy_dir`, default the task's, with action noise 0.1)."""
    policy_dir = default_policy_dir(task) if policy_dir is None else pathlib.Path(policy_dir)
    require_policies(task, policy_dir)
    env = osd_common.make_env(task)
    entry = {"episodes": episodes, "command": f"python datasets/mamujoco_data.py{task_flag(task)} --measure-references"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for name, policy in (("random", UniformRandomTeam()), ("expert", expert_policy(policy_dir))):
        rng = np.random.default_rng(12345)
        returns = [float(np.sum(rollout(env, policy, rng, k)["rewards"]))
                   for k in tqdm(range(episodes), desc=f"{task} {name}", disable=not progress)]
        entry[f"R_{name}"] = float(np.mean(returns))
        entry[f"R_{name}_std"] = float(np.std(returns))
        entry[f"R_{name}_stderr"] = float(np.std(returns) / np.sqrt(episodes))
        entry[f"{name}_policy"] = policy.policy_id
    torch.set_num_threads(threads)
    env.close()
    return entry


def data_card(task: str = TASK) -> str:
    """Markdown table of every cached tier's metadata of `task`."""
    rows = ["| tier | behavior | transitions | episodes | return mean ± std | normalized score of the data |",
            "|---|---|---|---|---|---|"]
    for tier in MAMUJOCO_TIERS:
        path = osd_common.dataset_path(task, tier)
        if not path.exists():
            rows.append(f"| {tier} | not generated | | | | |")
            continue
        m = osd_common.load_dataset(path).meta
        rows.append(f"| {tier} | {', '.join(m['behavior_policies'])} | {m['transitions']:,} | {m['episodes']:,} | "
                    f"{m['return_mean']:.1f} ± {m['return_std']:.1f} | {m['normalized_score']:.1f} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=TASK, help=f"the MaMuJoCo split (default {TASK}; osd's: {', '.join(TASKS)})")
    parser.add_argument("--tier", default="expert", help=f"one of {', '.join(MAMUJOCO_TIERS)}")
    parser.add_argument("--out", default=None, help="output .npz (default: datasets/cache/<task>/<tier>.npz)")
    parser.add_argument("--episodes", type=int, default=None, help="override the tier's episode count")
    parser.add_argument("--seed", type=int, default=0, help="data seed: same seed, same file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--all", action="store_true", help="every tier into the cache")
    parser.add_argument("--measure-references", action="store_true",
                        help=f"measure R_random/R_expert ({REFERENCE_EPISODES} episodes each), print the entry "
                             "and write it next to the task's policies (HalfCheetah-2x3: "
                             f"{LOCAL_REFERENCES.relative_to(HERE.parent)})")
    parser.add_argument("--card", action="store_true", help="print the markdown table of the cached tiers")
    parser.add_argument("--policy-dir", default=None,
                        help="the behavior policies (default: the task's, datasets/policies/<split, lower case>), "
                             "e.g. a training run's --policy-dir elsewhere, to try it before committing it")
    parser.add_argument("--replay-file", default=None,
                        help="the training run's replay cache, for medium-replay (default: the task's, "
                             "datasets/cache/<task>/td3_replay.npz)")
    args = parser.parse_args()
    policies = default_policy_dir(args.task) if args.policy_dir is None else pathlib.Path(args.policy_dir)
    if args.measure_references:
        entry = measure_references(args.episodes or REFERENCE_EPISODES, policy_dir=policies, task=args.task)
        local_references(args.task, policies).write_text(json.dumps(entry, indent=2) + "\n")
        print(json.dumps({args.task: entry}, indent=2))
    elif args.card:
        print(data_card(args.task))
    elif args.all:
        for tier in MAMUJOCO_TIERS:
            if osd_common.dataset_path(args.task, tier).exists() and not args.force:
                print(f"{args.task}/{tier}: cached, skipping (--force regenerates)")
                continue
            print(generate_mamujoco(args.task, tier, seed=args.seed, force=args.force, policy_dir=policies,
                                    replay_file=args.replay_file))
    else:
        print(generate_mamujoco(args.task, args.tier, out=args.out, episodes=args.episodes, seed=args.seed,
                                force=args.force, policy_dir=policies, replay_file=args.replay_file))


if __name__ == "__main__":
    main()
