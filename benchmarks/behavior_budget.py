"""Does the behavior model learn the conditionals with more training? Continue an osd_mpe.py checkpoint's
behavior model for more steps and save it as a new checkpoint.

The sequential decomposition is only as good as the behavior model's conditionals mu_i(a_i | s, a_<i)
(docs/algorithm.md §2, §3). This continues phase 1 of a run for the behavior model alone (the critics and
actors are copied unchanged), with the run's own loss, batch size and order, a fresh AdamW at the run's
learning rate and a cosine decay to 1e-5 over the new steps, on the run's own dataset. The output is a
checkpoint that `osd_mpe.py --pretrained` accepts, so phase 2 can be run again on the longer-trained model,
and `benchmarks/spread_conventions.py` can measure both.

    python benchmarks/behavior_budget.py --checkpoint checkpoints/<run>.pt --steps 50000 --out checkpoints/<run>_more.pt
    python osd_mpe.py --tier balanced --seed 0 --pretrained checkpoints/<run>_more.pt
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from regularizer_pull import load_run  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="an osd_mpe.py checkpoint (.pt)")
    parser.add_argument("--steps", type=int, required=True, help="more behavior-model steps")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="the new checkpoint (never overwritten)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the batches and the noise")
    parser.add_argument("--torch-threads", type=int, default=1, help="CPU threads for torch")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.out.exists():
        raise SystemExit(f"behavior_budget: {args.out} exists already; choose another --out")
    torch.set_num_threads(args.torch_threads)
    torch.manual_seed(args.seed)
    osd_mpe, checkpoint, run_args, nets, data = load_run(args.checkpoint)
    norm = checkpoint["normalizers"]
    f32 = lambda x: torch.as_tensor(x, dtype=torch.float32)  # noqa: E731
    observations = f32((data.observations - norm["obs_mean"]) / norm["obs_std"] * data.obs_mask)
    states, actions, act_mask = f32((data.states - norm["state_mean"]) / norm["state_std"]), f32(data.actions), f32(data.act_mask)
    n_agents, rng = actions.shape[1], np.random.default_rng(args.seed)
    score_net = nets["score_net"]
    score_net.train()
    optimizer = torch.optim.AdamW(score_net.parameters(), lr=run_args.behavior_lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps, eta_min=1e-5)
    start, losses = time.time(), []
    for step in tqdm(range(args.steps), desc="behavior model", mininterval=5):
        idx = torch.as_tensor(rng.integers(0, len(actions), size=run_args.behavior_batch_size))
        state_b, obs_b = states.index_select(0, idx), observations.index_select(0, idx)
        condition = state_b[:, None, :].expand(-1, n_agents, -1) if run_args.behavior_condition == "state" else obs_b
        order = rng.permutation(n_agents).tolist() if run_args.random_order else None
        loss = osd_mpe.behavior_loss(score_net, actions.index_select(0, idx), condition,
                                     osd_mpe.prefix_masks(n_agents, run_args.decomposition, order), act_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if not np.isfinite(losses[-1]):
            raise SystemExit(f"behavior_budget: the behavior loss is {losses[-1]} at step {step}; stopped")
    checkpoint = dict(checkpoint)
    checkpoint["score_net"] = score_net.state_dict()
    checkpoint["args"] = {**checkpoint["args"], "pretrain_steps": (checkpoint["args"]["pretrain_steps"] or 0) + args.steps}
    checkpoint["continued_from"] = str(args.checkpoint)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, args.out)
    print(f"behavior_budget: {args.steps} more steps in {time.time() - start:.0f}s; loss over the first / last 1,000 "
          f"{np.mean(losses[:1000]):.4f} / {np.mean(losses[-1000:]):.4f}; saved {args.out}")


if __name__ == "__main__":
    main()
