"""Throughput of OMSD's training phases and latency of its decentralized actors, with osd_mpe.py's own
networks and losses at their default sizes (osd_mpe.Args()).

For each task, device (cpu, and cuda when torch sees one) and batch size it times one optimizer update of
  behavior : the conditional diffusion score network (denoising score matching, AdamW),
  critic   : IQL's V and twin Q, with the Polyak update of the target Q,
  actor    : all actors against the frozen score network and target Q (eq. 5.2, one Adam per actor),
and the per-step inference latency of the decentralized actors (every agent's action from its own raw
observation, batch 1, as in evaluation). Inputs are random tensors of the task's shapes: the speed of
an update does not depend on the data.

`--loop` also times a whole training-loop step as the scripts run it (phase 1: sample a batch, behavior
and critic updates, Polyak; phase 2: sample a batch, actor update), first as the loop was written before
the GPU changes and then with each change added in turn (LOOP_CHANGES), so each change's gain is measured:
  resident data       the dataset sits on the device; a batch is a gather there, not a host-to-device copy
  no per-step sync    losses stay tensors and are read (.item()) only when logged
  multi-tensor Polyak one torch._foreach op per target network instead of two ops per parameter
  fused Adam          one fused kernel per optimizer step (the scripts use it on CUDA only: on CPU it
                      would change the numbers of the recorded runs in the last bits)
Every variant computes the same updates; only how the work reaches the device differs.

    python benchmarks/throughput.py                                   # spread, batch 256 and 1024, 1 thread
    python benchmarks/throughput.py --tasks mpe/simple_spread mpe/simple_world_comm --threads 1 2
    python benchmarks/throughput.py --seconds 0.5 --out /tmp/t.json   # quick look
    python benchmarks/throughput.py --loop --seconds 5                # + what each GPU-path change buys
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shlex
import sys
import time
from datetime import datetime, timezone

import numpy as np
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import osd_common  # noqa: E402
import osd_mpe  # noqa: E402  (benchmarks may import the scripts; their main block does not run on import)

sys.path.insert(0, str(REPO / "benchmarks"))
from report import format_throughput  # noqa: E402

PHASES = ("behavior", "critic", "actor")
LOOP_CHANGES = ("resident data", "no per-step sync", "multi-tensor Polyak", "fused Adam")


def task_shapes(task: str) -> tuple[int, list[int], list[int], int]:
    """(n_agents, obs_dims, act_dims, state_dim) of a task, read off its env."""
    env = osd_common.make_env(task)
    shapes = env.n_agents, list(env.obs_dims), list(env.act_dims), env.state_dim
    env.close()
    return shapes


def build_for_task(task: str, device: torch.device, seed: int):
    """osd_mpe.py's networks at their default sizes for a task's shapes, seeded, and its action mask."""
    n_agents, obs_dims, act_dims, state_dim = task_shapes(task)
    args = osd_mpe.resolve_budgets(osd_mpe.Args())
    torch.manual_seed(seed)
    nets = osd_mpe.build_networks(n_agents, obs_dims, act_dims, state_dim, args, device)
    act_mask = torch.zeros(n_agents, max(act_dims), device=device)
    for i, dim in enumerate(act_dims):
        act_mask[i, :dim] = 1.0
    return n_agents, obs_dims, act_dims, state_dim, args, nets, act_mask


def make_updates(nets: dict, args, act_mask: torch.Tensor, device: torch.device, fused: bool = False,
                 polyak=osd_mpe.polyak_update) -> dict:
    """osd_mpe.py's three updates, each a function of a batch dict (obs, state, next_state, action, reward,
    terminal) that runs forward, backward and the optimizer step and returns its losses as tensors."""
    score_net, q_net, q_target, v_net, actors = (nets[k] for k in ("score_net", "q_net", "q_target", "v_net", "actors"))
    n_agents = len(actors)
    prefix_mask = osd_mpe.prefix_masks(n_agents, args.decomposition).to(device)
    kwargs = {"fused": True} if fused else {}
    behavior_optimizer = torch.optim.AdamW(score_net.parameters(), lr=args.behavior_lr, **kwargs)
    q_optimizer = torch.optim.Adam(q_net.parameters(), lr=args.critic_lr, **kwargs)
    v_optimizer = torch.optim.Adam(v_net.parameters(), lr=args.critic_lr, **kwargs)
    actor_optimizers = [torch.optim.Adam(actor.parameters(), lr=args.actor_lr, **kwargs) for actor in actors]

    def condition(b):
        return b["state"][:, None, :].expand(-1, n_agents, -1) if args.behavior_condition == "state" else b["obs"]

    def behavior(b):
        loss = osd_mpe.behavior_loss(score_net, b["action"], condition(b), prefix_mask, act_mask)
        behavior_optimizer.zero_grad()
        loss.backward()
        behavior_optimizer.step()
        return [loss]

    def critic(b):
        loss_v = osd_mpe.value_loss(v_net, q_target, b["state"], b["action"], args.expectile)
        v_optimizer.zero_grad()
        loss_v.backward()
        v_optimizer.step()
        loss_q = osd_mpe.q_loss(q_net, v_net, b["state"], b["action"], b["reward"], b["next_state"], b["terminal"],
                                args.gamma)
        q_optimizer.zero_grad()
        loss_q.backward()
        q_optimizer.step()
        polyak(q_target, q_net, args.tau)
        return [loss_v, loss_q]

    frozen = False

    def actor(b):
        nonlocal frozen
        if not frozen:  # phase 2 trains the actors against a frozen behavior model and target Q
            for net in (score_net, q_target, v_net, q_net):
                net.eval()
                net.requires_grad_(False)
            frozen = True
        loss, parts = osd_mpe.actor_loss(actors, score_net, q_target, b["obs"], b["state"], condition(b), prefix_mask,
                                         act_mask, osd_mpe.DEFAULT_BETA, args.t_min, args.t_max, args.weighting,
                                         args.q_normalization)
        for optimizer in actor_optimizers:
            optimizer.zero_grad()
        loss.backward()
        for optimizer in actor_optimizers:
            optimizer.step()
        return [loss, parts["score"], parts["q_value"]]

    return {"behavior": behavior, "critic": critic, "actor": actor}  # the actor update freezes the others: last


def make_phase_steps(task: str, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """One closure per phase that runs one full update (forward, backward, optimizer step) on a fixed batch."""
    n_agents, obs_dims, act_dims, state_dim, args, nets, act_mask = build_for_task(task, device, seed)
    max_obs, max_act = max(obs_dims), max(act_dims)
    batch = {"obs": torch.randn(batch_size, n_agents, max_obs, device=device),
             "state": torch.randn(batch_size, state_dim, device=device),
             "next_state": torch.randn(batch_size, state_dim, device=device),
             "action": (torch.rand(batch_size, n_agents, max_act, device=device) * 2 - 1) * act_mask,
             "reward": torch.randn(batch_size, device=device), "terminal": torch.zeros(batch_size, device=device)}
    updates = make_updates(nets, args, act_mask, device)
    return {name: (lambda update=updates[name]: update(batch)) for name in PHASES}  # PHASES ends with actor


@torch.no_grad()
def per_parameter_polyak(target: torch.nn.Module, source: torch.nn.Module, tau: float) -> None:
    """The scripts' Polyak update before the change: two small ops per parameter."""
    for target_param, param in zip(target.parameters(), source.parameters()):
        target_param.mul_(1.0 - tau).add_(param, alpha=tau)


def make_loop_steps(task: str, batch_size: int, device: torch.device, changes: tuple[str, ...],
                    n_transitions: int = 100_000, seed: int = 0) -> tuple[dict, dict]:
    """One phase-1 and one phase-2 step of osd_mpe.py's training loop, with the LOOP_CHANGES in `changes`.

    Without any change this is the loop as it was: numpy batches copied to the device every step, every
    loss read back every step, per-parameter Polyak, default Adam. The dataset is random, of the task's
    shapes and 100k transitions (the size of our MPE datasets). Returns the two step closures and the
    networks they train."""
    unknown = set(changes) - set(LOOP_CHANGES)
    if unknown:
        raise ValueError(f"unknown loop changes {sorted(unknown)}; valid: {LOOP_CHANGES}")
    n_agents, obs_dims, act_dims, state_dim, args, nets, act_mask = build_for_task(task, device, seed)
    max_obs, max_act = max(obs_dims), max(act_dims)
    rng = np.random.default_rng(seed)
    data = {"obs": rng.standard_normal((n_transitions, n_agents, max_obs), dtype=np.float32),
            "state": rng.standard_normal((n_transitions, state_dim), dtype=np.float32),
            "next_state": rng.standard_normal((n_transitions, state_dim), dtype=np.float32),
            "action": rng.uniform(-1, 1, (n_transitions, n_agents, max_act)).astype(np.float32) * act_mask.cpu().numpy(),
            "reward": rng.standard_normal(n_transitions, dtype=np.float32),
            "terminal": np.zeros(n_transitions, dtype=np.float32)}
    resident = "resident data" in changes
    if resident:
        data = {key: torch.as_tensor(value, device=device) for key, value in data.items()}

    def sample() -> dict[str, torch.Tensor]:
        idx = rng.integers(0, n_transitions, size=batch_size)
        if resident:
            idx = torch.as_tensor(idx, device=device)
            return {key: value.index_select(0, idx) for key, value in data.items()}
        return {key: torch.as_tensor(value[idx], device=device) for key, value in data.items()}

    polyak = osd_mpe.polyak_update if "multi-tensor Polyak" in changes else per_parameter_polyak
    updates = make_updates(nets, args, act_mask, device, fused="fused Adam" in changes, polyak=polyak)
    read_every_step = "no per-step sync" not in changes

    def read(losses):  # the loop before the change read every loss back every step
        if read_every_step:
            for loss in losses:
                loss.item()

    def phase1():
        b = sample()
        read(updates["behavior"](b) + updates["critic"](b))

    def phase2():
        read(updates["actor"](sample()))

    steps = {"phase-1 step": phase1, "phase-2 step": phase2}  # phase 2 freezes phase 1's nets: it runs last
    return steps, nets


def loop_variants(device: torch.device) -> list[tuple[str, tuple[str, ...]]]:
    """(label, changes) from the loop before the changes to the loop the scripts run on `device`."""
    variants = [("before", ())]
    for k, change in enumerate(LOOP_CHANGES):
        variants.append((f"+ {change}", LOOP_CHANGES[: k + 1]))
    return variants


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_updates(step, device: torch.device, seconds: float, warmup: int = 3, min_iters: int = 5) -> tuple[float, int]:
    """Updates per second of `step`, timed for about `seconds` after `warmup` untimed updates."""
    for _ in range(warmup):
        step()
    sync(device)
    iters, start = 0, time.perf_counter()
    while True:
        for _ in range(5 if device.type == "cuda" else 1):
            step()
            iters += 1
        sync(device)
        elapsed = time.perf_counter() - start
        if iters >= min_iters and elapsed >= seconds:
            return iters / elapsed, iters


def actor_latency(task: str, device: torch.device, calls: int) -> dict:
    """Per-env-step latency of the decentralized actors (make_act_fn of osd_mpe.py, batch 1 per agent)."""
    n_agents, obs_dims, act_dims, state_dim = task_shapes(task)
    args = osd_mpe.Args()
    actors = osd_mpe.build_networks(n_agents, obs_dims, act_dims, state_dim, args, device)["actors"].eval()
    normalizer = osd_mpe.Normalizer(np.zeros((n_agents, max(obs_dims))), np.ones((n_agents, max(obs_dims))))
    act = osd_mpe.make_act_fn(actors, normalizer, device)
    rng = np.random.default_rng(0)
    observations = [rng.standard_normal(dim).astype(np.float32) for dim in obs_dims]
    for _ in range(10):
        act(observations)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        act(observations)  # returns numpy arrays: includes the device round trip
        times.append(time.perf_counter() - start)
    times_ms = np.array(times) * 1e3
    return {"task": task, "device": str(device), "n_agents": n_agents, "calls": calls,
            "median_ms": float(np.median(times_ms)), "p90_ms": float(np.percentile(times_ms, 90))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["mpe/simple_spread"], help="tasks whose shapes to use")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 1024])
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="CPU thread counts to time")
    parser.add_argument("--devices", nargs="+", default=None, choices=["cpu", "cuda"],
                        help="default: cpu, and cuda when available")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per (phase, batch size)")
    parser.add_argument("--latency-calls", type=int, default=500, help="timed actor calls for the latency")
    parser.add_argument("--loop", action="store_true",
                        help="also time whole training-loop steps before and after each GPU-path change")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "throughput.json")
    args = parser.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise SystemExit(f"throughput: --devices cuda, but torch {torch.__version__} sees no CUDA device")

    results, latencies, loops, machines = [], [], [], {}
    for device_name in devices:
        device = torch.device(device_name)
        for threads in (args.threads if device.type == "cpu" else [args.threads[0]]):
            torch.set_num_threads(threads)
            machines[f"{device_name}/{threads}"] = osd_common.machine_info(device)
            for task in args.tasks:
                for batch_size in args.batch_sizes:
                    for phase, step in make_phase_steps(task, batch_size, device).items():
                        rate, iters = time_updates(step, device, args.seconds)
                        results.append({"task": task, "device": device_name, "threads": threads, "batch_size": batch_size,
                                        "phase": phase, "updates_per_s": rate, "ms_per_update": 1e3 / rate,
                                        "iters": iters})
                        print(f"{task:24s} {device_name:4s} threads={threads} batch={batch_size:5d} {phase:8s} "
                              f"{rate:9.1f} updates/s", flush=True)
                latencies.append({**actor_latency(task, device, args.latency_calls), "threads": threads})
                if not args.loop:
                    continue
                for batch_size in args.batch_sizes:
                    for label, changes in loop_variants(device):
                        for phase, step in make_loop_steps(task, batch_size, device, changes)[0].items():
                            rate, iters = time_updates(step, device, args.seconds)
                            loops.append({"task": task, "device": device_name, "threads": threads,
                                          "batch_size": batch_size, "variant": label, "changes": list(changes),
                                          "phase": phase, "steps_per_s": rate, "iters": iters})
                            print(f"{task:24s} {device_name:4s} threads={threads} batch={batch_size:5d} "
                                  f"{phase} {label:22s} {rate:9.1f} steps/s", flush=True)

    commit, dirty = osd_common.git_commit()
    report = {
        "command": shlex.join(["python", "benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": commit, "git_dirty": dirty, "machines": machines,
        "load_average_1min": os.getloadavg()[0],  # other work on the machine slows every number down
        "osd_mpe_args": {k: v for k, v in vars(osd_mpe.Args()).items()
                         if k in ("score_width", "score_blocks", "hidden_dim", "behavior_condition")},
        "updates": results, "actor_latency": latencies,
    }
    if loops:
        report["loop"] = loops
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, args.out)

    print()
    print(format_throughput(report))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
