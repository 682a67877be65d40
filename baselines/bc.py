"""Behavior cloning for cooperative multi-agent offline RL, in one file: the floor every method must beat.

Each agent i has its own deterministic policy a_i = pi_i(o_i), a tanh MLP on its own standardized
observation, fitted by mean squared error to the dataset's actions of agent i. Nothing is shared
between agents and no reward is used, so this clones the (possibly multimodal) behavior mixture: on
data pooled from incompatible joint behaviors each agent regresses to the mean of the modes.

Run:
    python baselines/bc.py --seed 1                                  # mpe/simple_spread, tier mixed
    python baselines/bc.py --task mpe/simple_tag --tier expert --seed 1
    python baselines/bc.py --task mamujoco/HalfCheetah-2x3 --tier medium
    python baselines/bc.py --dataset path/to/data.npz --record /tmp/bc.json
    python baselines/bc.py --eval-only --checkpoint checkpoints/<run>.pt --capture-video
    tensorboard --logdir runs

Default budget (`--preset default`): 20,000 steps at batch 256, evaluating 10 episodes every 2,000
steps; `--preset corl` is CORL's BC budget (1,000,000 steps, evaluation every 5,000).
Logs, checkpoint layout, `--eval-only` and the `--record` JSON match osd_mpe.py.
"""

from __future__ import annotations

import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # osd_common lives in the repo root
import osd_common  # noqa: E402

ALGORITHM = "bc"
PROGRAM = "bc"

# ---------------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------------


@dataclass
class Args:
    exp_name: str = "bc"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the experiment: torch, numpy, random and the batch sampler"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where to train: `auto` picks cuda when available"""
    torch_threads: int = 0
    """CPU threads for torch (0 keeps torch's default); use 1 when sharing the machine"""

    # data
    task: str = "mpe/simple_spread"
    """the task: mpe/simple_spread, mpe/simple_tag, mpe/simple_world_comm or mamujoco/HalfCheetah-2x3; an MPE team
    size as mpe/simple_spread-N4 (4 agents, 4 landmarks) or mpe/simple_tag-N4 (4 predators)"""
    tier: str = "mixed"
    """the dataset tier: expert, medium, medium-replay, random, mixed, balanced, mixed-balanced, expert-noisy, expert-noisy-replay or mixed-expert-noisy (MPE), or a MaMuJoCo tier"""
    dataset: str | None = None
    """path to a dataset .npz; overrides --task/--tier (the task is read from the dataset)"""
    build_dataset: bool = False
    """build the named dataset if it is not on disk yet (slow: rolls out the behavior policies)"""

    # budgets: None means "take it from --preset"
    preset: Literal["default", "corl"] = "default"
    """budget preset: default (minutes on 2 CPU cores) or corl (CORL's BC budget, 1M steps)"""
    total_steps: int | None = None
    """gradient steps (default preset 20_000, corl 1_000_000)"""
    eval_every: int | None = None
    """evaluate every this many steps (default preset 2_000, corl 5_000)"""
    eval_episodes: int | None = None
    """episodes per evaluation (both presets 10)"""
    final_eval_episodes: int | None = None
    """episodes of the last evaluation, the run's recorded final score, and of --eval-only (default:
    osd_common.default_final_eval_episodes, 100 on MPE, 20 on MaMuJoCo)"""
    batch_size: int | None = None
    """batch size (both presets 256)"""

    # networks and optimizer
    hidden_dim: int = 256
    """width of each actor's 2-layer MLP"""
    lr: float = 3e-4
    """Adam learning rate of the actors"""

    # logging, checkpoints, evaluation
    log_every: int = 500
    """log losses every this many steps"""
    save_model: bool = True
    """save a checkpoint at the end of training"""
    checkpoint_dir: str = "checkpoints"
    """where checkpoints go (<dir>/<run_name>.pt)"""
    eval_only: bool = False
    """skip training: load --checkpoint and evaluate it"""
    checkpoint: str | None = None
    """checkpoint to evaluate with --eval-only"""
    capture_video: bool = False
    """with --eval-only: save one rendered episode as videos/<run_name>.gif"""
    record: str | None = None
    """write the run record (JSON, osd_common.RECORD_SCHEMA) here at the end: benchmarks/grid.py reads it"""


PRESETS = {
    "default": dict(total_steps=20_000, eval_every=2_000, eval_episodes=10, batch_size=256),
    "corl": dict(total_steps=1_000_000, eval_every=5_000, eval_episodes=10, batch_size=256),
}


# ---------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------


def mlp(in_dim: int, out_dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
                         nn.Linear(hidden_dim, out_dim))


class Actor(nn.Module):
    """a_i = pi_i(o_i): a tanh MLP on the agent's own (normalized) observation."""

    def __init__(self, obs_dim: int, act_dim: int, hidden_dim: int = 256):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.net = mlp(obs_dim, act_dim, hidden_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs[..., : self.obs_dim]))


def joint_action(actors: nn.ModuleList, observations: torch.Tensor, max_act_dim: int) -> torch.Tensor:
    """All actors on their own observations [B, N, O] -> zero-padded joint action [B, N, A]."""
    return torch.stack([F.pad(actor(observations[:, i]), (0, max_act_dim - actor.act_dim))
                        for i, actor in enumerate(actors)], dim=1)


def bc_loss(actors: nn.ModuleList, observations: torch.Tensor, actions: torch.Tensor,
            act_mask: torch.Tensor) -> torch.Tensor:
    """Sum over agents of agent i's MSE to its dataset actions (mean over the batch and its real action
    dimensions). Each actor's gradient comes from its own term only."""
    predicted = joint_action(actors, observations, actions.shape[-1])
    squared_error = ((predicted - actions) * act_mask) ** 2  # padding contributes exactly 0
    return (squared_error.sum(-1).mean(0) / act_mask.sum(-1)).sum()


def build_networks(meta: dict, args: Args, device) -> dict[str, nn.Module]:
    """Every network of the algorithm, sized from the dataset's meta; used by training and by --eval-only."""
    n_agents, obs_dims, act_dims = meta["n_agents"], meta["obs_dims"], meta["act_dims"]
    actors = nn.ModuleList([Actor(obs_dims[i], act_dims[i], args.hidden_dim) for i in range(n_agents)])
    return {"actors": actors.to(device)}


# ---------------------------------------------------------------------------------------------------
# Main: data, training, checkpoint, record
# ---------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    wall_start = time.time()
    args = osd_common.resolve_budgets(PROGRAM, tyro.cli(Args), PRESETS)
    device = osd_common.seed_and_device(PROGRAM, args)
    if args.eval_only:  # the checkpoint's actors, rebuilt with its own Args, evaluated with its own seed
        osd_common.run_eval_only(PROGRAM, args, device, Args, build_networks, algorithm=ALGORITHM)
        raise SystemExit(0)

    # dataset and normalizer
    if args.dataset is None:
        try:
            osd_common.check_task(args.task)
        except osd_common.TaskError as error:
            raise SystemExit(f"bc: {error}")
        if args.tier not in osd_common.TIERS:
            raise SystemExit(f"bc: --tier {args.tier!r} is not a tier; valid tiers: {', '.join(osd_common.TIERS)}")
        dataset_name = f"{args.task}/{args.tier}"
    else:
        dataset_name = args.dataset
    try:
        data = osd_common.load_dataset(dataset_name, build_if_missing=args.build_dataset)
    except osd_common.DatasetError as error:
        raise SystemExit(f"bc: {error}" + ("" if args.build_dataset else " (or pass --build-dataset)"))
    meta = data.meta
    args.task, args.tier = meta["task"], meta.get("tier", args.tier)
    if args.final_eval_episodes is None:
        args.final_eval_episodes = osd_common.default_final_eval_episodes(args.task)
    # the env follows the data (its agent_obsk); OMAR's MPE data trains without evaluation
    evaluable = osd_common.check_env_fits_data("bc", data, args.task, args.record is not None)
    run_name = f"{args.task.replace('/', '_')}__{args.exp_name}__{args.seed}__{int(time.time())}"

    # observations standardized once with dataset statistics (also inside evaluation, by make_act_fn)
    obs_normalizer = osd_common.Normalizer(data.observations.mean(0), data.observations.std(0))
    observations = obs_normalizer(data.observations) * data.obs_mask  # padding stays exactly 0
    actions = data.actions
    act_mask = torch.as_tensor(data.act_mask, device=device)
    n_transitions = len(data)
    batch_rng = np.random.default_rng(args.seed)  # the batch sampler: seeded, independent of torch

    def to_tensor(array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(array, dtype=torch.float32, device=device)

    # the whole dataset moves to the training device once: a batch is then a gather there, not a
    # host-to-device copy per step (on CPU these tensors share the numpy arrays' memory, and
    # index_select gathers faster than numpy's fancy indexing or torch's tensor[idx])
    observations, actions = to_tensor(observations), to_tensor(actions)

    nets = build_networks(meta, args, device)
    actors = nets["actors"]
    # Adam is per parameter: one per actor. On CUDA one fused kernel updates them all.
    optimizer = torch.optim.Adam(actors.parameters(), lr=args.lr, **({"fused": True} if device.type == "cuda" else {}))

    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text("hyperparameters", osd_common.hyperparameter_table(args))
    print(f"bc: {run_name}; dataset {data.path} ({n_transitions} transitions); device {device}")

    # ---- training: per-agent regression on the dataset actions
    eval_seed = args.seed + 10_000  # evaluation episodes differ from any seed used in training
    eval_history: list[tuple[int, dict]] = []
    eval_time = 0.0
    start_time = time.time()
    progress = tqdm(range(args.total_steps), desc="bc", smoothing=0.05)
    for step in progress:
        idx = torch.as_tensor(batch_rng.integers(0, n_transitions, size=args.batch_size), device=device)
        loss = bc_loss(actors, observations.index_select(0, idx), actions.index_select(0, idx), act_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % args.log_every == 0 or step == args.total_steps - 1 or step == 0:  # the loop's only host syncs
            losses = {"bc": loss.item()}
            osd_common.check_finite(PROGRAM, losses, step, fix="lower --lr")
            sps = int((step + 1) / (time.time() - start_time))
            writer.add_scalar("losses/bc", losses["bc"], step)
            writer.add_scalar("charts/SPS", sps, step)
            progress.set_postfix({"bc": f"{losses['bc']:.3g}", "SPS": sps})
        if evaluable and ((step + 1) % args.eval_every == 0 or step == args.total_steps - 1):
            eval_start = time.time()
            # the last evaluation is the recorded final score: more episodes, so that evaluation noise
            # does not swamp the differences between seeds and algorithms
            episodes = args.final_eval_episodes if step == args.total_steps - 1 else args.eval_episodes
            result = osd_common.evaluate_actors(actors, obs_normalizer, device, episodes, eval_seed, meta)
            eval_time += time.time() - eval_start
            eval_history.append((step + 1, result))
            writer.add_scalar("charts/episodic_return", result["return_mean"], step)
            writer.add_scalar("charts/normalized_score", result["normalized_score"], step)
            tqdm.write(f"step {step + 1}: return {result['return_mean']:.2f} ± {result['return_std']:.2f}, "
                       f"normalized score {result['normalized_score']:.1f}")
    progress.close()
    train_time = time.time() - start_time - eval_time
    last_score = eval_history[-1][1]["normalized_score"] if eval_history else float("nan")
    best_score = max((r["normalized_score"] for _, r in eval_history), default=float("nan"))
    print(f"training done: {args.total_steps} steps in {train_time:.0f}s (+{eval_time:.0f}s evaluating, "
          f"SPS {args.total_steps / max(train_time, 1e-9):.0f}); normalized score last {last_score:.1f}, "
          f"best {best_score:.1f}")

    # ---- checkpoint: networks, normalizers, Args and dataset meta (the layout of osd_mpe.py)
    checkpoint_path = None
    if args.save_model:
        checkpoint_path = osd_common.save_checkpoint(args, run_name, nets, {"obs": obs_normalizer}, meta, algorithm=ALGORITHM,
                                                     final_normalized_score=last_score, best_normalized_score=best_score)
    writer.close()

    # ---- run record for benchmarks/ (written whole, then renamed)
    if args.record is not None:
        record = osd_common.make_record(
            algorithm=ALGORITHM, args=args, meta=meta, dataset_path=data.path, seed=args.seed,
            eval_history=eval_history, updates=args.total_steps, train_time_s=train_time,
            wall_time_s=time.time() - wall_start, device=device, run_name=run_name, checkpoint=checkpoint_path)
        print(f"wrote record {osd_common.write_record(args.record, record)}")
