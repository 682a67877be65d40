"""The MPE MATD3 trainer (datasets/train_mpe_matd3.py) and the learned spread tiers built from its
committed checkpoints (datasets/generate.py)."""

import json
import pathlib
import sys

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "datasets"))

import generate  # noqa: E402  (datasets/generate.py)
import osd_common  # noqa: E402
import train_mpe_matd3  # noqa: E402


def _tiny_run(folder: pathlib.Path, **overrides) -> train_mpe_matd3.Args:
    args = train_mpe_matd3.Args(total_timesteps=200, learning_starts=100, eval_every=100, eval_episodes=2,
                                batch_size=32, policy_dir=str(folder), replay_out=str(folder / "replay.npz"),
                                progress=False, **overrides)
    train_mpe_matd3.main(args)
    return args


def test_trainer_writes_checkpoints_log_and_replay_refuses_overwrite_and_repeats(tmp_path):
    _tiny_run(tmp_path / "a")
    log = json.loads((tmp_path / "a" / "training_log.json").read_text())
    assert [e["step"] for e in log["evaluations"]] == [100, 200]
    assert all(np.isfinite(e["normalized_score"]) for e in log["evaluations"])
    assert log["evaluations"][-1]["updates"] == 50  # one critic update every 2 env steps after the warm-up
    team = train_mpe_matd3.load_team(tmp_path / "a" / "actor_step0000200.pt")
    assert [a.net[0].in_features for a in team.actors] == [18, 18, 18]
    with np.load(tmp_path / "a" / "replay.npz") as replay:
        assert replay["observations"].shape == (200, 54) and replay["actions"].shape == (200, 15)
        assert (replay["noise_std"][:100] == -1).all() and (replay["noise_std"][100:] == 0.1).all()
        first = {k: replay[k] for k in replay.files}
    # an existing run is never overwritten silently: the error names the file and the flag
    with pytest.raises(SystemExit, match=r"training_log\.json.*already there.*--overwrite"):
        _tiny_run(tmp_path / "a")
    # deterministic on CPU: the same seed gives the same buffer and the same actors, bit for bit
    _tiny_run(tmp_path / "b")
    with np.load(tmp_path / "b" / "replay.npz") as replay:
        assert all(np.array_equal(first[k], replay[k]) for k in replay.files)
    a = torch.load(tmp_path / "a" / "actor_step0000200.pt", weights_only=True)["actors"]
    b = torch.load(tmp_path / "b" / "actor_step0000200.pt", weights_only=True)["actors"]
    assert all(torch.equal(a[i][k], b[i][k]) for i in range(3) for k in a[i])


def test_medium_tier_is_built_from_the_committed_checkpoint(tmp_path):
    """spread medium rolls out the committed MATD3 checkpoint nearest 50 (a handful of episodes here),
    the same arrays for the same seed."""
    entry = generate.medium_checkpoint("mpe/simple_spread")
    assert (generate.LEARNED_POLICY_DIRS["mpe/simple_spread"] / entry["checkpoint"]).exists()
    assert 35 <= entry["normalized_score"] <= 65
    paths = [generate.generate("mpe/simple_spread", "medium", out=tmp_path / f"m{k}.npz", episodes=4, progress=False)
             for k in range(2)]
    first, second = (osd_common.load_dataset(p) for p in paths)
    assert first.meta["sha256"] == second.meta["sha256"]
    assert first.meta["episode_labels"] == {"medium-matd3": 4}
    assert first.meta["behavior_policies"] == [f"matd3:simple-spread-matd3/{entry['checkpoint']}:noise0.1"]
    assert first.meta["transitions"] == 100


def test_renamed_scripted_tiers_keep_the_old_construction(tmp_path):
    """expert-noisy is the old MPE medium (expert with random team steps); a task without a MATD3 run (a team
    size) keeps it as its medium: the same arrays. The three MPE tasks, which have one, use it."""
    task = "mpe/simple_spread-N4"
    noisy = generate.generate(task, "expert-noisy", out=tmp_path / "n.npz", episodes=2, progress=False)
    medium = generate.generate(task, "medium", out=tmp_path / "m.npz", episodes=2, progress=False)
    assert osd_common.load_dataset(noisy).meta["sha256"] == osd_common.load_dataset(medium).meta["sha256"]
    for task in ("mpe/simple_spread", "mpe/simple_tag", "mpe/simple_world_comm"):
        mixed = [label for label, _ in generate.episode_plan(task, "mixed", 5)]
        assert mixed == ["expert-convention0", "expert-convention1", "expert-convention2", "medium-matd3", "random"]
    old_mixed = [label for label, _ in generate.episode_plan("mpe/simple_spread", "mixed-expert-noisy", 5)]
    assert old_mixed[3] == "expert-noisy"
    assert set(osd_common.TIERS) >= set(generate.MPE_TIERS)
