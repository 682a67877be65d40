"""Make any osd dataset, deterministically, from the scripted behavior policies in this folder.

    python datasets/generate.py --task mpe/simple_spread --tier mixed      # one dataset into the cache
    python datasets/generate.py --all                                      # every MPE task x tier
    python datasets/generate.py --measure-references                       # R_random / R_expert, 200 episodes
    python datasets/generate.py --measure-references --task mpe/simple_spread-N4   # ... of one task only
    python datasets/generate.py --card                                     # refresh the tables of datasets/README.md

Datasets go to the git-ignored cache `datasets/cache/<task>/<tier>.npz` (or `--out PATH`); an existing
file is never overwritten without `--force`. The same `--seed` always gives the same arrays: the
`sha256` in the file's metadata, a hash of the arrays, repeats (the .npz bytes do not, as the zip
entries carry the time they were written).

Tiers (sizes in TIER_EPISODES; what each is for, and how each was measured, in datasets/README.md):
  expert              convention 0, action noise N(0, 0.1^2)
  medium              a team trained online with MATD3 (datasets/train_mpe_matd3.py): its checkpoint whose
                      noise-free normalized score is nearest 50, rolled out with action noise N(0, 0.1^2)
                      (tasks in LEARNED_POLICY_DIRS; the others, until trained, use expert-noisy's episodes)
  medium-replay       that learner's replay buffer, in order, until its noise-free score first reaches the
                      medium checkpoint's (capped: evenly spaced whole episodes); others: expert-noisy-replay
  random              uniform random actions
  mixed               20% each: expert episodes of conventions 0, 1 and 2, medium, random: several equally
                      good but incompatible joint behaviors pooled with poor data, the case OMSD is for
  balanced            expert episodes of conventions 0, 1 and 2 in equal thirds and nothing else: several
                      equally good, incompatible joint behaviors with no majority
  mixed-balanced      20% each: expert episodes of conventions 0, 1, 2, expert-noisy, random, where the
                      expert-noisy episodes cycle through conventions 0, 1 and 2 too, so no convention dominates
  expert-noisy        the expert, but at each step with probability EXPERT_NOISY_RANDOM_PROB[task] the team
                      acts uniformly at random (set so the data scores about 50 normalized): the MPE
                      `medium` tier until issue 14, renamed because it is no learner's data
  expert-noisy-replay the random-step probability falls linearly from 1 to the expert-noisy level over the
                      episodes (the MPE `medium-replay` until issue 14)
  mixed-expert-noisy  `mixed` with expert-noisy episodes in place of medium (the MPE `mixed` until issue 14;
                      convention 0 dominates: it is also every expert-noisy episode's)

Team sizes (`--task mpe/simple_spread-N4`, `mpe/simple_tag-N4`; osd_common.MPE_TEAM_SIZE_ARGS) make every
tier the way their 3-agent task does, with the same episode counts (tier_episodes) and random-step
probability. They have no MATD3 run, so medium, medium-replay and mixed are the expert-noisy constructions. Their R_random / R_expert must be measured first (`--measure-references --task ...`).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from importlib import metadata

import numpy as np
from tqdm import tqdm

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import osd_common  # noqa: E402
from behavior_policies import MATD3Team, ScriptedTeam, UniformRandomTeam, n_conventions  # noqa: E402

GENERATOR_VERSION = "osd-datasets-1"
EXPERT_NOISE = 0.1
# Chosen from a sweep of the random-step probability (datasets/README.md) for ~50 normalized score; a team
# size (mpe/simple_spread-N4) uses its 3-agent task's.
EXPERT_NOISY_RANDOM_PROB = {"mpe/simple_spread": 0.65, "mpe/simple_tag": 0.4, "mpe/simple_world_comm": 0.5}
# Tasks whose medium / medium-replay come from a MATD3 run: its committed checkpoints and training_log.json.
LEARNED_POLICY_DIRS = {"mpe/simple_spread": HERE / "policies" / "simple-spread-matd3",
                       "mpe/simple_tag": HERE / "policies" / "simple-tag-matd3",
                       "mpe/simple_world_comm": HERE / "policies" / "simple-world-comm-matd3"}
MEDIUM_TARGET_SCORE = 50.0  # the medium checkpoint: noise-free normalized score nearest this
MEDIUM_NOISE = EXPERT_NOISE
# Episodes per tier. Spread's medium-replay is a cap on the learner's buffer (its first episodes up to the
# medium checkpoint, evenly thinned to at most this many).
TIER_EPISODES = {
    "mpe/simple_spread": {"expert": 4000, "medium": 4000, "medium-replay": 4000, "random": 4000, "mixed": 4000,
                          "balanced": 3999, "mixed-balanced": 4005, "expert-noisy": 4000,
                          "expert-noisy-replay": 1000, "mixed-expert-noisy": 4000},
    "mpe/simple_tag": {"expert": 4000, "medium": 4000, "medium-replay": 1000, "random": 4000, "mixed": 4000,
                       "balanced": 3999, "mixed-balanced": 4005, "expert-noisy": 4000, "expert-noisy-replay": 1000,
                       "mixed-expert-noisy": 4000},
    "mpe/simple_world_comm": {"expert": 2000, "medium": 2000, "medium-replay": 500, "random": 2000, "mixed": 2000,
                              "balanced": 1998, "mixed-balanced": 1995, "expert-noisy": 2000,
                              "expert-noisy-replay": 500, "mixed-expert-noisy": 2000},
}
MPE_TIERS = ("expert", "medium", "medium-replay", "random", "mixed", "balanced", "mixed-balanced",
             "expert-noisy", "expert-noisy-replay", "mixed-expert-noisy")
MIXED_CONVENTIONS = (0, 1, 2)  # the expert conventions of mixed and the balanced tiers (2-agent teams: 0, 1)
REFERENCE_EPISODES = 200
# Reset seeds of dataset episodes start here, far from the small seeds evaluation uses (seed + episode).
DATA_RESET_SEED_OFFSET = 10_000_000


def base_task(task: str) -> str:
    """The 3-agent task of a team size (mpe/simple_spread-N4 -> mpe/simple_spread): the key of the tables above."""
    return osd_common.split_team_size(task)[0]


def mixed_conventions(task: str) -> tuple[int, ...]:
    """The expert conventions pooled in mixed and the balanced tiers: MIXED_CONVENTIONS, as many as the task has."""
    return MIXED_CONVENTIONS[:n_conventions(task)]


def tier_episodes(task: str, tier: str) -> int:
    """A tier's default episode count: TIER_EPISODES of the task, a team size taking its 3-agent task's (its
    medium-replay is expert-noisy-replay's, as it has no MATD3 run), rounded down to whole rounds of the balanced
    tiers' conventions (for a 2-agent team, which has 2)."""
    if task != base_task(task) and tier == "medium-replay":
        tier = "expert-noisy-replay"
    count, k = TIER_EPISODES[base_task(task)][tier], len(mixed_conventions(task))
    round_size = {"balanced": k, "mixed-balanced": k * (k + 2)}.get(tier, 1)  # see episode_plan
    return count - count % round_size


def expert_policy(task: str, convention: int = 0) -> ScriptedTeam:
    """The expert behavior policy of `task` (also the one R_expert is measured with)."""
    return ScriptedTeam(task, convention, noise_std=EXPERT_NOISE)


def training_log(task: str) -> dict:
    """The MATD3 run's training_log.json of a task in LEARNED_POLICY_DIRS."""
    path = LEARNED_POLICY_DIRS[task] / "training_log.json"
    if not path.exists():
        raise SystemExit(f"{path}: missing; train the team first: python datasets/train_mpe_matd3.py --task {task}")
    return json.loads(path.read_text())


def medium_checkpoint(task: str) -> dict:
    """The log entry of the checkpoint whose noise-free normalized score is nearest MEDIUM_TARGET_SCORE
    (ties: the earliest)."""
    return min(training_log(task)["evaluations"], key=lambda e: abs(e["normalized_score"] - MEDIUM_TARGET_SCORE))


def replay_end_step(task: str) -> int:
    """The env step at which the learner's noise-free score first reaches the medium checkpoint's."""
    target = medium_checkpoint(task)["normalized_score"]
    return next(e["step"] for e in training_log(task)["evaluations"] if e["normalized_score"] >= target)


def medium_policy(task: str):
    """(label, policy) of a medium episode: the MATD3 checkpoint where there is one, else expert-noisy."""
    if task in LEARNED_POLICY_DIRS:
        entry = medium_checkpoint(task)
        return ("medium-matd3", MATD3Team(LEARNED_POLICY_DIRS[task] / entry["checkpoint"], MEDIUM_NOISE))
    return expert_noisy_policy(task)


def expert_noisy_policy(task: str, convention: int = 0):
    return ("expert-noisy" + (f"-convention{convention}" if convention else ""),
            ScriptedTeam(task, convention, EXPERT_NOISE, EXPERT_NOISY_RANDOM_PROB[base_task(task)]))


def episode_plan(task: str, tier: str, episodes: int) -> list[tuple[str, object]]:
    """(label, policy) of every episode of a rolled-out tier, in file order (medium-replay of a learned
    task is the learner's buffer instead: replay_arrays)."""
    if tier == "medium-replay" and task in LEARNED_POLICY_DIRS:
        raise ValueError(f"{task} medium-replay is the MATD3 learner's buffer, not rolled out: see replay_arrays")
    if tier == "medium-replay":
        tier = "expert-noisy-replay"  # stand-in until the task has a MATD3 run
    if tier == "mixed-expert-noisy" or (tier == "mixed" and task not in LEARNED_POLICY_DIRS):
        tier, medium = "mixed", expert_noisy_policy(task)
    elif tier == "mixed":
        medium = medium_policy(task)
    if tier == "expert":
        return [("expert-convention0", expert_policy(task))] * episodes
    if tier == "medium":
        return [medium_policy(task)] * episodes
    if tier == "expert-noisy":
        return [expert_noisy_policy(task)] * episodes
    if tier == "random":
        return [("random", UniformRandomTeam())] * episodes
    if tier == "expert-noisy-replay":
        probs = np.linspace(1.0, EXPERT_NOISY_RANDOM_PROB[base_task(task)], episodes)
        return [(f"replay-random{p:.2f}", ScriptedTeam(task, 0, EXPERT_NOISE, float(p))) for p in probs]
    if tier == "mixed":
        parts = [(f"expert-convention{c}", expert_policy(task, c)) for c in mixed_conventions(task)]
        parts += [medium, ("random", UniformRandomTeam())]
        share = episodes // len(parts)
        plan = [part for part in parts for _ in range(share)]
        return plan + [parts[0]] * (episodes - len(plan))
    if tier in ("balanced", "mixed-balanced"):
        # no convention dominates: conventions interleave episode by episode, in equal numbers; in
        # mixed-balanced each kind (the three experts, expert-noisy, random) is a fifth, as in mixed, and the
        # expert-noisy episodes cycle through the three conventions too (a learned team's convention can not
        # be chosen, so this tier keeps the scripted one); a 2-agent team has 2 conventions, so quarters there
        conventions = mixed_conventions(task)
        per_convention = episodes // len(conventions) if tier == "balanced" else episodes // (len(conventions) + 2)
        plan = [(f"expert-convention{c}", expert_policy(task, c)) for _ in range(per_convention) for c in conventions]
        if tier == "mixed-balanced":
            plan += [(f"expert-noisy-convention{c}", expert_noisy_policy(task, c)[1])
                     for _ in range(per_convention // len(conventions)) for c in conventions]
            plan += [("random", UniformRandomTeam())] * per_convention
        if len(plan) != episodes:
            raise ValueError(f"tier {tier}: {episodes} episodes do not split into equal conventions")
        return plan
    raise ValueError(f"unknown tier {tier!r}: use one of {', '.join(MPE_TIERS)}")


def replay_arrays(task: str, episodes: int, env) -> tuple[dict[str, np.ndarray], dict]:
    """medium-replay of a learned task: the MATD3 learner's buffer in collection order, up to the step at
    which its noise-free score first reaches the medium checkpoint's; thinned to `episodes` evenly spaced
    whole episodes when it holds more. Returns the arrays and the metadata it adds."""
    path = osd_common.DATASET_CACHE / task / "matd3_replay.npz"
    end = replay_end_step(task)
    remake = (f"python datasets/train_mpe_matd3.py --task {task} --total-timesteps {end} "
              f"--policy-dir /tmp/matd3_rerun --replay-out {path}")
    if not path.exists():
        raise SystemExit(f"{path}: missing. medium-replay is the MATD3 learner's replay buffer, which the training "
                         f"run caches there; the run is deterministic on CPU, and its first {end} steps remake it: "
                         f"{remake}")
    with np.load(path) as data:
        buf = {k: data[k] for k in data.files}
    if len(buf["rewards"]) < end or int(buf["seed"]) != training_log(task)["args"]["seed"]:
        raise SystemExit(f"{path}: holds {len(buf['rewards'])} steps of seed {int(buf['seed'])}, but medium-replay "
                         f"needs the first {end} of the committed run (seed {training_log(task)['args']['seed']}); "
                         f"remake it: {remake}")
    last = np.flatnonzero(buf["timeouts"][:end] + buf["terminals"][:end])  # each episode's last step
    first = np.concatenate([[0], last[:-1] + 1])
    keep = np.unique(np.linspace(0, len(last) - 1, min(episodes, len(last))).round().astype(int))
    rows = np.concatenate([np.arange(first[k], last[k] + 1) for k in keep])

    def per_agent(joint, dims):  # [T, sum(dims)] -> [T, N, max(dims)], zero-padded
        out = np.zeros((len(joint), len(dims), max(dims)), np.float32)
        for i, part in enumerate(np.split(joint, np.cumsum(dims)[:-1], axis=1)):
            out[:, i, : part.shape[1]] = part
        return out

    arrays = {"observations": per_agent(buf["observations"][rows], env.obs_dims),
              "next_observations": per_agent(buf["next_observations"][rows], env.obs_dims),
              "actions": per_agent(buf["actions"][rows], env.act_dims),
              "states": buf["observations"][rows], "next_states": buf["next_observations"][rows],
              **{k: buf[k][rows].astype(np.float32) for k in ("rewards", "terminals", "timeouts")}}
    noise = buf["noise_std"][rows]
    meta = {"replay_source": {"file": str(path.relative_to(osd_common.DATASET_CACHE)), "end_step": int(end),
                              "episodes_in_buffer": int(len(last)), "episodes_kept": int(len(keep)),
                              "uniform_random_steps": int((noise < 0).sum()),
                              "noise_steps": {f"{v:g}": int((noise == v).sum()) for v in np.unique(noise[noise >= 0])}}}
    return arrays, meta


def rollout(env, policy, rng: np.random.Generator, reset_seed: int) -> dict[str, list]:
    """One episode of `policy`; returns the per-step lists of every transition field."""
    steps = {k: [] for k in osd_common.TRANSITION_FIELDS}
    obs, state = env.reset(seed=reset_seed)
    done = False
    while not done:
        actions = policy(env, rng, obs)
        next_obs, next_state, reward, terminated, truncated = env.step(actions)
        done = terminated or truncated
        steps["observations"].append(obs)
        steps["actions"].append(actions)
        steps["rewards"].append(reward)
        steps["next_observations"].append(next_obs)
        steps["states"].append(state)
        steps["next_states"].append(next_state)
        steps["terminals"].append(float(terminated))
        steps["timeouts"].append(float(truncated))
        obs, state = next_obs, next_state
    return steps


def pad_agents(per_step: list[list[np.ndarray]], width: int) -> np.ndarray:
    """[T][N] arrays of different sizes -> float32 [T, N, width], zero-padded."""
    out = np.zeros((len(per_step), len(per_step[0]), width), dtype=np.float32)
    for t, agents in enumerate(per_step):
        for i, value in enumerate(agents):
            out[t, i, : value.shape[0]] = value
    return out


def generate(task: str, tier: str, out=None, episodes: int | None = None, seed: int = 0,
             force: bool = False, progress: bool = True) -> pathlib.Path:
    """Generate one dataset file and return its path."""
    osd_common.check_task(task)
    if task.startswith("mamujoco/"):  # trained TD3 behavior policies; imported lazily (torch) for MPE runs
        from mamujoco_data import generate_mamujoco

        return generate_mamujoco(task, tier, out=out, episodes=episodes, seed=seed, force=force, progress=progress)
    if base_task(task) not in TIER_EPISODES:
        raise SystemExit(f"--task {task}: datasets are generated here for {', '.join(TIER_EPISODES)} (and their "
                         "team sizes, e.g. mpe/simple_spread-N4) only; bring your own file for other tasks (see "
                         "datasets/README.md, 'Your own data')")
    if tier not in MPE_TIERS:
        raise SystemExit(f"--tier {tier}: use one of {', '.join(MPE_TIERS)} for the MPE tasks")
    out = pathlib.Path(out) if out is not None else osd_common.dataset_path(task, tier)
    if out.exists() and not force:
        raise SystemExit(f"{out} exists already: pass --force to overwrite it")
    episodes = episodes or tier_episodes(task, tier)
    env = osd_common.make_env(task)
    extra_meta = {}
    if tier == "medium-replay" and task in LEARNED_POLICY_DIRS:
        arrays, extra_meta = replay_arrays(task, episodes, env)
        plan = [("matd3-replay", None)] * extra_meta["replay_source"]["episodes_kept"]
        behavior = [f"matd3-replay:{LEARNED_POLICY_DIRS[task].name}/steps0-{extra_meta['replay_source']['end_step']}"]
    else:
        plan = episode_plan(task, tier, episodes)
        behavior = sorted({policy.policy_id for _, policy in plan})
        rng = np.random.default_rng(seed)
        columns = {k: [] for k in osd_common.TRANSITION_FIELDS}
        for episode, (_, policy) in enumerate(tqdm(plan, desc=f"{task}/{tier}", disable=not progress)):
            steps = rollout(env, policy, rng, DATA_RESET_SEED_OFFSET + seed * 1_000_000 + episode)
            for key, values in steps.items():
                columns[key].extend(values)
        arrays = {
            "observations": pad_agents(columns["observations"], max(env.obs_dims)),
            "next_observations": pad_agents(columns["next_observations"], max(env.obs_dims)),
            "actions": pad_agents(columns["actions"], max(env.act_dims)),
            "states": np.asarray(columns["states"], dtype=np.float32),
            "next_states": np.asarray(columns["next_states"], dtype=np.float32),
            "rewards": np.asarray(columns["rewards"], dtype=np.float32),
            "terminals": np.asarray(columns["terminals"], dtype=np.float32),
            "timeouts": np.asarray(columns["timeouts"], dtype=np.float32),
        }
    env.close()
    arrays["obs_mask"] = (np.arange(max(env.obs_dims))[None] < np.array(env.obs_dims)[:, None]).astype(np.float32)
    arrays["act_mask"] = (np.arange(max(env.act_dims))[None] < np.array(env.act_dims)[:, None]).astype(np.float32)
    ref_random, ref_expert = osd_common.reference_returns(task)
    labels, counts = np.unique([label for label, _ in plan], return_counts=True)
    meta = {
        "task": task, "tier": tier, "n_agents": env.n_agents, "agent_names": env.agent_names,
        "obs_dims": env.obs_dims, "act_dims": env.act_dims, "state_dim": env.state_dim,
        "ref_random": ref_random, "ref_expert": ref_expert, "seed": seed,
        "generator_version": GENERATOR_VERSION,
        "behavior_policies": behavior,
        "episode_labels": {str(k): int(v) for k, v in zip(labels, counts)},
        "packages": {p: metadata.version(p) for p in ("mpe2", "pettingzoo", "numpy")
                     + (("torch",) if any(label.startswith(("medium-matd3", "matd3")) for label in labels) else ())},
        **extra_meta,
    }
    return osd_common.save_dataset(out, arrays, meta, force=force)


def measure_references(episodes: int = REFERENCE_EPISODES, tasks=tuple(TIER_EPISODES)) -> dict:
    """R_random and R_expert per task, on the evaluation reset seeds 0..episodes-1 (as evaluate() uses).
    Only the entries of `tasks` are written; the file's other entries stay as they are."""
    table = json.loads(osd_common.REFERENCE_RETURNS_FILE.read_text()) if osd_common.REFERENCE_RETURNS_FILE.exists() else {}
    for task in tasks:
        env = osd_common.make_env(task)
        # each task's measurement is seeded on its own: measuring it alone (--task) gives the same entry
        command = "python datasets/generate.py --measure-references" + ("" if task in TIER_EPISODES else f" --task {task}")
        entry = {"episodes": episodes, "command": command}
        for name, policy in (("random", UniformRandomTeam()), ("expert", expert_policy(task))):
            rng = np.random.default_rng(12345)
            returns = [float(np.sum(rollout(env, policy, rng, k)["rewards"]))
                       for k in tqdm(range(episodes), desc=f"{task} {name}")]
            entry[f"R_{name}"] = float(np.mean(returns))
            entry[f"R_{name}_std"] = float(np.std(returns))
            entry[f"R_{name}_stderr"] = float(np.std(returns) / np.sqrt(episodes))
            entry[f"{name}_policy"] = policy.policy_id
        table[task] = entry
        env.close()
    osd_common.REFERENCE_RETURNS_FILE.write_text(json.dumps(table, indent=2) + "\n")
    return table


def spread_assignment_shares(dataset: osd_common.Dataset) -> dict[str, float]:
    """Measured multimodality of a spread dataset: at each episode's last step, which landmark each
    agent is nearest to. A permutation like '012' means agent i covers landmark i; 'overlap' means two
    agents sit nearest the same landmark (no clean assignment)."""
    last = np.flatnonzero((dataset.terminals > 0) | (dataset.timeouts > 0))
    # spread obs of n agents: [vel(2), pos(2), landmark_rel(n x 2), other_rel((n-1) x 2), comm((n-1) x 2)]
    n = dataset.n_agents
    landmark_rel = dataset.next_observations[last][:, :, 4:4 + 2 * n].reshape(len(last), n, n, 2)
    nearest = np.linalg.norm(landmark_rel, axis=-1).argmin(-1)  # [episodes, agents]
    labels = ["".join(map(str, row)) if len(set(row)) == n else "overlap" for row in nearest]
    keys, counts = np.unique(labels, return_counts=True)
    return {str(k): float(c) / len(labels) for k, c in zip(keys, counts)}


def learning_curve_png(task: str) -> pathlib.Path:
    """Plot the MATD3 run's noise-free normalized score against env steps, marking the medium checkpoint
    and the end of the medium-replay buffer; written next to its training_log.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log, medium = training_log(task), medium_checkpoint(task)
    steps = [e["step"] for e in log["evaluations"]]
    scores = [e["normalized_score"] for e in log["evaluations"]]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, scores, marker=".", label=f"noise-free, {log['args']['eval_episodes']} episodes")
    ax.axhline(MEDIUM_TARGET_SCORE, color="grey", lw=0.8, ls=":")
    ax.axvline(replay_end_step(task), color="tab:green", lw=0.8, ls="--", label="medium-replay ends")
    ax.plot([medium["step"]], [medium["normalized_score"]], "o", color="tab:red", label="medium checkpoint")
    ax.set(xlabel="env steps", ylabel="normalized score")
    ax.set_title(f"MATD3 on {task}, seed {log['args']['seed']}: {log['wall_s'] / 60:.0f} min on a shared 2-core CPU",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = LEARNED_POLICY_DIRS[task] / "learning_curve.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def data_card(previous: str = "") -> str:
    """Markdown tables of every cached dataset's metadata (and spread's measured assignments). A dataset
    not in the cache keeps its rows from `previous` (the card as it stands), so a card can be refreshed
    after remaking only some tiers."""
    previous_lines = previous.splitlines()
    rows = ["| task | tier | transitions | episodes | return mean ± std | normalized score of the data |",
            "|---|---|---|---|---|---|"]
    shares, hashes = [], ["| dataset | sha256 of the arrays |", "|---|---|"]
    for task in TIER_EPISODES:
        for tier in MPE_TIERS:
            path = osd_common.dataset_path(task, tier)
            if not path.exists():
                row = [line for line in previous_lines if line.startswith(f"| {task} | {tier} |")]
                rows += row or [f"| {task} | {tier} | not generated | | | |"]
                shares += [line for line in previous_lines if line.startswith(f"| {task} {tier}, ")]
                hashes += [line for line in previous_lines if line.startswith(f"| {task}/{tier} |")]
                continue
            data = osd_common.load_dataset(path)
            m = data.meta
            hashes.append(f"| {task}/{tier} | `{m['sha256']}` |")
            rows.append(f"| {task} | {tier} | {m['transitions']:,} | {m['episodes']:,} | "
                        f"{m['return_mean']:.2f} ± {m['return_std']:.2f} | {m['normalized_score']:.1f} |")
            if task == "mpe/simple_spread" and tier in ("expert", "medium", "medium-replay", "mixed", "balanced",
                                                        "mixed-balanced", "mixed-expert-noisy"):
                measured = spread_assignment_shares(data)
                shares.append(f"| {task} {tier}, nearest landmark per agent at the last step (measured) | " + ", ".join(f"{k}: {100 * v:.1f}%" for k, v in
                                                        sorted(measured.items(), key=lambda kv: -kv[1])) + " |")
            if tier in ("mixed", "balanced", "mixed-balanced", "mixed-expert-noisy"):
                shares.append(f"| {task} {tier}, episodes by behavior | " + ", ".join(
                    f"{k}: {v}" for k, v in m["episode_labels"].items()) + " |")
    refs = json.loads(osd_common.REFERENCE_RETURNS_FILE.read_text())
    ref_rows = ["| task | R_random (mean ± std, stderr) | R_expert (mean ± std, stderr) | episodes |",
                "|---|---|---|---|"]
    for task, e in refs.items():
        ref_rows.append(f"| {task} | {e['R_random']:.2f} ± {e['R_random_std']:.2f} ({e['R_random_stderr']:.2f}) | "
                        f"{e['R_expert']:.2f} ± {e['R_expert_std']:.2f} ({e['R_expert_stderr']:.2f}) | {e['episodes']} |")
    runs = ["| task | MATD3 run | env steps | wall time | medium checkpoint (noise-free score) | "
            "medium-replay: buffer up to step |", "|---|---|---|---|---|---|"]
    for task in LEARNED_POLICY_DIRS:
        log, medium = training_log(task), medium_checkpoint(task)
        runs.append(f"| {task} | seed {log['args']['seed']}, `{LEARNED_POLICY_DIRS[task].relative_to(HERE)}` | "
                    f"{log['evaluations'][-1]['step']:,} | {log['wall_s'] / 60:.0f} min | `{medium['checkpoint']}` "
                    f"({medium['normalized_score']:.1f}, {log['args']['eval_episodes']} episodes) | {replay_end_step(task):,} |")
    return ("\n".join(ref_rows) + "\n\n" + "\n".join(runs) + "\n\n" + "\n".join(rows)
            + "\n\n| dataset | multimodality |\n|---|---|\n" + "\n".join(shares) + "\n\n" + "\n".join(hashes) + "\n")


def write_card(readme: pathlib.Path = HERE / "README.md") -> None:
    begin, end = "<!-- card:begin -->", "<!-- card:end -->"
    text = readme.read_text()
    if begin not in text or end not in text:
        raise SystemExit(f"{readme}: needs the markers {begin} and {end} around the generated tables")
    head, rest = text.split(begin, 1)
    previous, tail = rest.split(end, 1)
    for task in LEARNED_POLICY_DIRS:
        learning_curve_png(task)
    readme.write_text(head + begin + "\n" + data_card(previous) + end + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=None,
                        help=f"one of {', '.join(TIER_EPISODES)} (default: mpe/simple_spread), a team size of spread or "
                        "tag as <task>-N<k>, k >= 2 (mpe/simple_spread-N4: 4 agents, 4 landmarks; mpe/simple_tag-N4: 4 "
                        "predators), or a MaMuJoCo split: mamujoco/HalfCheetah-2x3, and Hopper-3x1 or Ant-2x4 once their behavior "
                        "policies are trained (see datasets/MAMUJOCO.md); with "
                        "--measure-references: that task only")
    parser.add_argument("--tier", default="mixed", help=f"one of {', '.join(MPE_TIERS)} (MaMuJoCo: datasets/MAMUJOCO.md)")
    parser.add_argument("--out", default=None, help="output .npz (default: the cache, datasets/cache/<task>/<tier>.npz)")
    parser.add_argument("--episodes", type=int, default=None, help="override the tier's episode count")
    parser.add_argument("--seed", type=int, default=0, help="data seed: same seed, same file")
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    parser.add_argument("--all", action="store_true", help="every MPE task x tier into the cache")
    parser.add_argument("--measure-references", action="store_true", help="measure R_random/R_expert of every "
                        f"task of {', '.join(TIER_EPISODES)}, or of --task only, into reference_returns.json")
    parser.add_argument("--card", action="store_true", help="rewrite the tables in datasets/README.md from the "
                        "cached files (rows of files not in the cache are kept) and the MATD3 learning-curve PNGs")
    args = parser.parse_args()
    try:
        if args.task is not None:
            osd_common.check_task(args.task)  # an unknown task or a bad team size (-N1) stops here, naming --task
    except osd_common.TaskError as err:
        raise SystemExit(f"--task: {err}") from None
    if args.measure_references:
        if args.task is not None and base_task(args.task) not in TIER_EPISODES:
            raise SystemExit(f"--task {args.task}: --measure-references measures {', '.join(TIER_EPISODES)} and their "
                             "team sizes; MaMuJoCo's: python datasets/mamujoco_data.py --measure-references")
        tasks = tuple(TIER_EPISODES) if args.task is None else (args.task,)
        print(json.dumps({task: entry for task, entry in measure_references(tasks=tasks).items() if task in tasks}, indent=2))
    elif args.card:
        write_card()
    elif args.all:
        for task in TIER_EPISODES:
            for tier in MPE_TIERS:
                if osd_common.dataset_path(task, tier).exists() and not args.force:
                    print(f"{task}/{tier}: cached, skipping (--force regenerates)")
                    continue
                print(generate(task, tier, seed=args.seed, force=args.force))
    else:
        print(generate(args.task or "mpe/simple_spread", args.tier, out=args.out, episodes=args.episodes,
                       seed=args.seed, force=args.force))


if __name__ == "__main__":
    main()
