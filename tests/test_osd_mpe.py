"""osd_mpe.py: the conditional behavior score, coordination by sequential decomposition, and the script
end to end (training, TensorBoard, checkpoint, --eval-only, guards, determinism).

CPU only, one torch thread; the whole file runs in about two minutes on 2 cores.
"""

from __future__ import annotations

import os
import re
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import osd_common  # noqa: E402
import osd_mpe  # noqa: E402
from osd_mpe import BehaviorScoreNet, behavior_loss, prefix_masks, vp_alpha_sigma  # noqa: E402
from spread_conventions import sample_behavior_actions  # noqa: E402  (test and diagnostic code, not the script's)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------
# 1. The learned score is the true conditional score (docs/algorithm.md §3, §7)
# ---------------------------------------------------------------------------------------------------
MODE, SPREAD = 0.5, 0.2  # (a_1, a_2) ~ 1/2 N((+m, +m), s^2 I) + 1/2 N((-m, -m), s^2 I)


def sample_mixture(n: int, generator: torch.Generator) -> torch.Tensor:
    sign = torch.randint(0, 2, (n, 1), generator=generator).float() * 2 - 1
    return sign * MODE + SPREAD * torch.randn(n, 2, generator=generator)


def diffused_mixture_score(x: torch.Tensor, alpha, sigma, log_weights: torch.Tensor) -> torch.Tensor:
    """Score of sum_k w_k N(x; alpha mu_k, alpha^2 s^2 + sigma^2), mu = (+m, -m): a 1-D Gaussian mixture
    after the VP forward process. log_weights [n, 2] (unnormalized)."""
    means = alpha * torch.tensor([MODE, -MODE])
    variance = alpha**2 * SPREAD**2 + sigma**2
    responsibility = torch.softmax(log_weights - (x[:, None] - means) ** 2 / (2 * variance), dim=-1)
    return (responsibility * (means - x[:, None]) / variance).sum(-1)


def relative_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    return ((estimate - truth).pow(2).mean() / truth.pow(2).mean()).sqrt().item()


@pytest.fixture(scope="module")
def mixture_score_net():
    """BehaviorScoreNet trained with behavior_loss (3.1) on the 2-agent mixture, sequential masks."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net = BehaviorScoreNet(n_agents=2, act_dim=1, cond_dim=1, width=128, n_blocks=2)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    steps = 1500
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    mask, act_mask = prefix_masks(2, "sequential"), torch.ones(2, 1)
    for _ in range(steps):
        actions = sample_mixture(256, generator)[..., None]
        loss = behavior_loss(net, actions, torch.zeros(256, 2, 1), mask, act_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return net.eval()


@pytest.mark.parametrize("t_value", [0.05, 0.1])
def test_learned_score_matches_true_conditional_score(mixture_score_net, t_value):
    """At small t, -eps_psi / sigma_t of agent 2 (conditioned on agent 1's clean action) matches the
    analytic score of the diffused conditional p_t(a_2 | a_1), and agent 1's matches its marginal.

    Metric: relative RMS error sqrt(E (s_hat - s)^2 / E s^2) over 4,000 samples x_t ~ p_t(. | a_1), with
    (a_1, a_2) from the data. Threshold 0.25 (measured 0.07-0.15 over 3 seeds). As a check that the metric
    sees conditioning, the *marginal* score of a_2, used as if it were the conditional, scores 0.54-0.67
    here, far above the threshold.
    """
    generator = torch.Generator().manual_seed(123)
    n = 4000
    clean = sample_mixture(n, generator)
    t = torch.full((n,), t_value)
    alpha, sigma = vp_alpha_sigma(t[0])
    noised = alpha * clean + sigma * torch.randn(n, 2, generator=generator)
    with torch.no_grad():
        eps = mixture_score_net(noised[..., None], t[:, None].expand(n, 2), torch.zeros(n, 2, 1),
                                clean[..., None], prefix_masks(2, "sequential"))[..., 0]
    learned_score = -eps / sigma

    # p(a_2 | a_1) weights the two components by the likelihood of a_1 under each
    conditional_log_weights = -(clean[:, :1] - torch.tensor([MODE, -MODE])) ** 2 / (2 * SPREAD**2)
    true_conditional = diffused_mixture_score(noised[:, 1], alpha, sigma, conditional_log_weights)
    marginal_of_agent2 = diffused_mixture_score(noised[:, 1], alpha, sigma, torch.zeros(n, 2))
    true_marginal_agent1 = diffused_mixture_score(noised[:, 0], alpha, sigma, torch.zeros(n, 2))

    assert relative_error(marginal_of_agent2, true_conditional) > 0.5  # the metric can tell them apart
    assert relative_error(learned_score[:, 1], true_conditional) < 0.25
    assert relative_error(learned_score[:, 0], true_marginal_agent1) < 0.25


def test_sequential_sampling_reproduces_matched_modes(mixture_score_net):
    """Sampling agent by agent (agent 2 conditioned on agent 1's sample) keeps the data's coupling: both
    signs agree in >= 90% of joint samples (data: 98.8%; an uncoupled sampler would give 50%)."""
    torch.manual_seed(1)
    samples = sample_behavior_actions(osd_mpe, mixture_score_net, torch.zeros(2000, 2, 1), prefix_masks(2, "sequential"),
                                      torch.ones(2, 1), n_steps=30)[..., 0]
    matched = ((samples[:, 0] > 0) == (samples[:, 1] > 0)).float().mean().item()
    assert matched >= 0.9
    assert 0.3 < samples.abs().mean().item() < 0.7  # at the modes (|a| = 0.5), not collapsed to 0


# ---------------------------------------------------------------------------------------------------
# 2. Sequential decomposition coordinates where independent regularization does not (§2, §7)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def coordination_rates():
    """The two-agent one-step game of benchmarks/coordination_game.py at its default sizes, with
    osd_mpe.py's defaults for t_min, t_max and w(t) (beta = 0.05, the game's own): one behavior model +
    critic per decomposition, then several actor pairs on it."""
    from coordination_game import GameConfig, run_game

    rates = {}
    # an independent team picks its two modes by coin flip per actor seed (the actors generalize one
    # choice over all contexts), so it gets more actor seeds: P(rate < 20%) = P(<= 1 of 8) = 3.5% at chance
    for decomposition, actor_seeds in (("sequential", 4), ("independent", 8)):
        results = run_game(GameConfig(decomposition=decomposition, seed=0), actor_seeds=tuple(range(actor_seeds)))
        rates[decomposition] = {key: float(np.mean([r[key] for r in results])) for key in results[0]}
    return rates


def test_sequential_coordinates_and_independent_does_not(coordination_rates):
    """What it shows: data holding ONLY matched joint actions (+0.6, +0.6) / (-0.6, -0.6), a reward
    that depends on each |a_i| alone (so a mismatch is never seen and never penalized by the data), and
    decentralized actors on a shared random context. Regularized toward the behavior *conditional on the
    predecessor's current action*, agent 2 follows agent 1 into its mode: coordinated in >= 95% of
    (actor seed, context) pairs. Regularized toward its own marginal (`independent`), each actor picks
    a mode on its own: mis-coordinated (opposite modes) in >= 20%; at chance it would be 50%.
    Measured over 3 behavior seeds x 4 actor seeds (docs/osd_mpe_notes.md): sequential 99.9% coordinated,
    independent 47% mis-coordinated (25%, 50%, 67% per behavior seed). With the authors' w(t) = sigma_t^2
    over U(0.02, 0.98) both variants stay between the modes (96-99%) and this test would fail."""
    sequential, independent = coordination_rates["sequential"], coordination_rates["independent"]
    assert sequential["coordinated"] >= 0.95, sequential
    assert independent["miscoordinated"] >= 0.20, independent
    # both variants did leave the point between the modes: the difference is coordination, not collapse
    assert sequential["between_modes"] <= 0.05 and independent["between_modes"] <= 0.2


def test_prefix_masks():
    assert prefix_masks(3, "sequential").tolist() == [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    # order 2, 0, 1: agent 2 first, then agent 0 (sees 2), then agent 1 (sees 2 and 0)
    assert prefix_masks(3, "sequential", [2, 0, 1]).tolist() == [[0, 0, 1], [1, 0, 1], [0, 0, 0]]
    assert prefix_masks(3, "independent").sum() == 0


# ---------------------------------------------------------------------------------------------------
# 3. The script end to end
# ---------------------------------------------------------------------------------------------------
SCALAR_TAGS = {"losses/behavior", "losses/q", "losses/v", "losses/actor_q", "losses/actor_score",
               "charts/episodic_return", "charts/normalized_score", "charts/SPS",
               # the actor diagnostics, per agent (spread has 3)
               *(f"{tag}_agent{i}" for i in range(3)
                 for tag in ("losses/score_push_rms", "losses/q_push_rms", "charts/action_at_bounds"))}


def random_rollout_dataset(path: pathlib.Path, episodes: int = 4, reward_scale: float = 1.0) -> pathlib.Path:
    """A tiny simple_spread dataset of uniformly random joint actions."""
    env = osd_common.make_env("mpe/simple_spread")
    rng = np.random.default_rng(0)
    max_obs, max_act = max(env.obs_dims), max(env.act_dims)

    def pad(rows, width):
        return np.stack([np.pad(row, (0, width - len(row))) for row in rows])

    columns = {key: [] for key in osd_common.TRANSITION_FIELDS}
    for episode in range(episodes):
        obs, state = env.reset(seed=episode)
        done = False
        while not done:
            actions = [rng.uniform(-1, 1, d).astype(np.float32) for d in env.act_dims]
            next_obs, next_state, reward, terminated, truncated = env.step(actions)
            for key, value in (("observations", pad(obs, max_obs)), ("actions", pad(actions, max_act)),
                               ("rewards", reward * reward_scale), ("next_observations", pad(next_obs, max_obs)),
                               ("states", state), ("next_states", next_state), ("terminals", float(terminated)),
                               ("timeouts", float(truncated))):
                columns[key].append(value)
            obs, state, done = next_obs, next_state, terminated or truncated
    arrays = {key: np.asarray(value, dtype=np.float32) for key, value in columns.items()}
    arrays["obs_mask"] = pad([np.ones(d) for d in env.obs_dims], max_obs).astype(np.float32)
    arrays["act_mask"] = pad([np.ones(d) for d in env.act_dims], max_act).astype(np.float32)
    ref_random, ref_expert = osd_common.reference_returns("mpe/simple_spread")
    meta = dict(task="mpe/simple_spread", tier="random", n_agents=env.n_agents, obs_dims=env.obs_dims,
                act_dims=env.act_dims, state_dim=env.state_dim, ref_random=ref_random, ref_expert=ref_expert)
    return osd_common.save_dataset(path, arrays, meta)


def run_script(cwd: pathlib.Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "osd_mpe.py"), "--torch-threads", "1", *flags],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


TINY_FLAGS = ("--pretrain-steps", "20", "--critic-steps", "20", "--policy-steps", "20", "--eval-every", "10",
              "--eval-episodes", "2", "--final-eval-episodes", "3", "--log-every", "5", "--behavior-batch-size", "32", "--critic-batch-size", "32",
              "--actor-batch-size", "32", "--score-width", "64", "--hidden-dim", "64")


def scalars(run_dir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("osd_mpe")
    random_rollout_dataset(root / "tiny.npz")
    return root


@pytest.fixture(scope="module")
def trained_run(workdir):
    """Two training runs with the same seed (names differ only by --exp-name)."""
    results = [run_script(workdir, "--dataset", "tiny.npz", "--seed", "3", "--exp-name", name, *TINY_FLAGS)
               for name in ("first", "second")]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def run_dirs(workdir: pathlib.Path, exp_name: str) -> list[pathlib.Path]:
    return sorted((workdir / "runs").glob(f"mpe_simple_spread__{exp_name}__3__*"))


def test_training_writes_tensorboard_scalars_and_checkpoint(trained_run):
    (run_dir,) = run_dirs(trained_run, "first")
    logged = scalars(run_dir)
    assert SCALAR_TAGS <= set(logged), f"missing tags: {SCALAR_TAGS - set(logged)}"
    assert all(np.isfinite(value) for series in logged.values() for _, value in series)

    (checkpoint_path,) = (trained_run / "checkpoints").glob("mpe_simple_spread__first__3__*.pt")
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    for key in ("score_net", "q_net", "q_target", "v_net", "actors", "normalizers", "args", "meta"):
        assert key in checkpoint
    assert checkpoint["normalizers"]["obs_mean"].shape == (3, 18)
    assert checkpoint["normalizers"]["state_std"].shape == (54,)
    assert checkpoint["args"]["seed"] == 3 and checkpoint["args"]["policy_steps"] == 20
    assert checkpoint["args"]["beta"] == 0.3  # no --beta: the tier's default (BETA_BY_TIER; random -> 0.3)
    assert checkpoint["args"]["value_weighted_steps"] == 0  # the tier's (none for random): no phase 1b
    assert checkpoint["args"]["expectile"] == osd_mpe.DEFAULT_EXPECTILE  # tag's random entry is for tag only
    assert checkpoint["meta"]["task"] == "mpe/simple_spread" and checkpoint["meta"]["obs_dims"] == [18, 18, 18]


def test_a_task_and_tier_entry_sets_that_task_s_defaults(tmp_path):
    """Tag `random` has its own beta and expectile ((task, tier) keys); no flag given, the run takes them."""
    import generate  # datasets/generate.py

    generate.generate("mpe/simple_tag", "random", out=tmp_path / "tag.npz", episodes=2, progress=False)
    result = run_script(tmp_path, "--dataset", "tag.npz", "--seed", "1", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint_path,) = (tmp_path / "checkpoints").glob("mpe_simple_tag__*.pt")
    saved = torch.load(checkpoint_path, weights_only=False)["args"]
    assert saved["beta"] == osd_mpe.BETA_BY_TIER[("mpe/simple_tag", "random")] != osd_mpe.DEFAULT_BETA
    assert saved["expectile"] == osd_mpe.EXPECTILE_BY_TIER[("mpe/simple_tag", "random")] != osd_mpe.DEFAULT_EXPECTILE


def test_same_seed_gives_identical_losses_and_weights(trained_run):
    first, second = scalars(run_dirs(trained_run, "first")[0]), scalars(run_dirs(trained_run, "second")[0])
    for tag in ("losses/behavior", "losses/q", "losses/v", "losses/actor", "charts/episodic_return"):
        assert first[tag] == second[tag], tag
    checkpoints = [torch.load(next((trained_run / "checkpoints").glob(f"*__{name}__3__*.pt")), weights_only=False)
                   for name in ("first", "second")]
    for key, tensor in checkpoints[0]["actors"].items():
        assert torch.equal(tensor, checkpoints[1]["actors"][key]), key


def test_eval_only_reloads_checkpoint_without_training(trained_run):
    """--eval-only evaluates with the checkpoint's seed (3), whatever --seed says, so it reproduces the run's
    recorded final score (3 episodes, as the run's last evaluation)."""
    checkpoint = next((trained_run / "checkpoints").glob("*__first__3__*.pt"))
    result = run_script(trained_run, "--eval-only", "--checkpoint", str(checkpoint), "--final-eval-episodes", "3",
                        "--seed", "99")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval-only" in result.stdout and "over 3 episodes (the checkpoint's seed 3)" in result.stdout
    recorded = torch.load(checkpoint, weights_only=False)["final_normalized_score"]
    assert f"normalized score {recorded:.1f} over 3 episodes" in result.stdout, result.stdout
    assert "phase 1" not in result.stdout + result.stderr  # no training happened


def test_checkpoints_from_before_q_normalization_still_evaluate(trained_run, tmp_path, capsys):
    """Checkpoints written when the flag was the boolean --normalize-q hold `normalize_q`, not
    `q_normalization`: --eval-only maps it (True: batch, False: none) instead of failing on the key."""
    checkpoint = torch.load(next((trained_run / "checkpoints").glob("*__first__3__*.pt")), weights_only=False)
    old_args = {key: value for key, value in checkpoint["args"].items() if key != "q_normalization"}
    assert osd_common.checkpoint_args(osd_mpe.Args, {**old_args, "normalize_q": True}).q_normalization == "batch"
    assert osd_common.checkpoint_args(osd_mpe.Args, {**old_args, "normalize_q": False}).q_normalization == "none"
    torch.save({**checkpoint, "args": {**old_args, "normalize_q": True}}, tmp_path / "old.pt")
    osd_common.run_eval_only("osd_mpe", osd_mpe.Args(eval_only=True, checkpoint=str(tmp_path / "old.pt"),
                                                     final_eval_episodes=1),
                             torch.device("cpu"), osd_mpe.Args, osd_mpe.build_networks)
    assert "over 1 episodes" in capsys.readouterr().out


def test_record_algorithm_names_the_variant_that_ran():
    """The grid's omsd-beta0 passes --beta 0; the script names the record from the flags, so a hand-run
    --beta 0 lands in the same report column and a grid run whose flags were overridden is noticed, while
    a tier whose own beta is 0 (MaMuJoCo expert) still records plain omsd."""
    from osd_common import omsd_algorithm_name
    from osd_mpe import Args

    assert omsd_algorithm_name(Args(beta=0.3)) == "omsd"
    assert omsd_algorithm_name(Args()) == "omsd"  # the tier's beta, whatever its value: OMSD as configured
    assert omsd_algorithm_name(Args(beta=0.0)) == "omsd-beta0"
    assert omsd_algorithm_name(Args(beta=0.01, decomposition="independent")) == "omsd-independent"
    assert omsd_algorithm_name(Args(beta=0.0, decomposition="independent")) == "omsd-independent-beta0"


def test_pretrained_skips_phase_one_and_refuses_other_settings(trained_run):
    checkpoint = str(next((trained_run / "checkpoints").glob("*__first__3__*.pt")))
    result = run_script(trained_run, "--dataset", "tiny.npz", "--exp-name", "reuse", "--pretrained", checkpoint,
                        "--no-save-model", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "phase 1 skipped" in result.stdout
    result = run_script(trained_run, "--dataset", "tiny.npz", "--pretrained", checkpoint, "--decomposition",
                        "independent", *TINY_FLAGS)
    assert result.returncode != 0 and "was trained with --decomposition sequential" in result.stderr
    # the critics were fitted at the checkpoint's expectile: a run claiming another is refused, not recorded wrongly
    result = run_script(trained_run, "--dataset", "tiny.npz", "--pretrained", checkpoint, "--expectile", "0.9",
                        *TINY_FLAGS)
    assert result.returncode != 0 and "was trained with --expectile 0.7" in result.stderr


def test_value_weighted_finetune_logs_saves_and_is_never_applied_twice(trained_run):
    """Phase 1b after a reused phase 1: it logs its loss and sampling share, the checkpoint holds the
    fine-tuned behavior model and says so; reusing that checkpoint with the same flags skips the fine-tune,
    with other flags it is refused (a second fine-tune would compound silently)."""
    checkpoint = str(next((trained_run / "checkpoints").glob("*__first__3__*.pt")))
    result = run_script(trained_run, "--dataset", "tiny.npz", "--exp-name", "finetuned", "--pretrained", checkpoint,
                        "--value-weighted-steps", "10", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "phase 1b: 10 behavior steps on value-weighted batches (T 0.07)" in result.stdout
    (run_dir,) = (trained_run / "runs").glob("mpe_simple_spread__finetuned__*")
    logged = scalars(run_dir)
    assert len(logged["losses/value_weighted_behavior"]) == 2  # steps 5 and 10 (--log-every 5)
    (share,) = [value for _, value in logged["charts/value_weighted_effective_share"]]
    assert 0.0 < share <= 1.0
    finetuned = next((trained_run / "checkpoints").glob("*__finetuned__*.pt"))
    saved, before = (torch.load(path, weights_only=False) for path in (finetuned, checkpoint))
    assert saved["args"]["value_weighted_steps"] == 10
    assert any(not torch.equal(saved["score_net"][key], before["score_net"][key]) for key in before["score_net"])

    result = run_script(trained_run, "--dataset", "tiny.npz", "--pretrained", str(finetuned), "--value-weighted-steps",
                        "10", "--no-save-model", *TINY_FLAGS)
    assert result.returncode == 0 and "phase 1b" not in result.stdout, result.stderr[-3000:]
    result = run_script(trained_run, "--dataset", "tiny.npz", "--pretrained", str(finetuned), *TINY_FLAGS)
    assert result.returncode != 0
    assert "fine-tuned with --value-weighted-steps 10 --value-weighted-temperature 0.07" in result.stderr


def test_variants_run_random_order_obs_condition_independent(workdir):
    """The ablation flags take the same path through the script (phase 1b too) and log finite losses."""
    result = run_script(workdir, "--dataset", "tiny.npz", "--exp-name", "variant", "--random-order",
                        "--behavior-condition", "obs", "--decomposition", "independent", "--weighting", "sigma2",
                        "--q-normalization", "sample", "--value-weighted-steps", "5", "--no-save-model", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "phase 1b: 5 behavior steps" in result.stdout  # after a full phase 1, in a random order, on obs
    (run_dir,) = (workdir / "runs").glob("mpe_simple_spread__variant__*")
    logged = scalars(run_dir)
    assert all(np.isfinite(value) for tag in ("losses/behavior", "losses/actor") for _, value in logged[tag])
    assert not list((workdir / "checkpoints").glob("*__variant__*"))


def test_bad_tier_and_missing_checkpoint_give_clear_errors(workdir):
    result = run_script(workdir, "--tier", "legendary")
    assert result.returncode != 0
    assert "--tier 'legendary' is not a tier; valid tiers: expert, medium, medium-replay, random, mixed" in result.stderr
    result = run_script(workdir, "--eval-only", "--checkpoint", "nowhere.pt")
    assert result.returncode != 0 and "checkpoint 'nowhere.pt' does not exist" in result.stderr
    # a negative seed or beta stops before any work, naming the flag (numpy's generators refuse negative seeds)
    for flag, value in (("--seed", "-5"), ("--beta", "-0.1")):
        result = run_script(workdir, "--dataset", "tiny.npz", flag, value, *TINY_FLAGS)
        assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert f"osd_mpe: {flag} is {value}; it must be at least 0" in result.stderr


def test_nan_guard_names_the_loss_and_step(workdir):
    with pytest.raises(SystemExit, match=r"loss 'q' is nan at phase-1 step 7"):
        osd_common.check_finite("osd_mpe", {"behavior": 0.5, "q": float("nan")}, 7, "phase-1")
    # end to end: rewards of 1e30 are finite in the file, but their squared TD error overflows float32
    random_rollout_dataset(workdir / "huge.npz", reward_scale=1e30)
    result = run_script(workdir, "--dataset", "huge.npz", *TINY_FLAGS)
    assert result.returncode != 0
    # losses are read when logged (--log-every 5): the first read is after step 4
    assert re.search(r"loss 'q' is (inf|nan) at phase-1 step 4\. Training stopped", result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_regularizer_pull_hears_the_predecessor_only_when_sequential(trained_run, monkeypatch):
    """benchmarks/regularizer_pull.py on real checkpoints: with sequential masks agent 0's action reaches
    the followers' regularizer; with independent masks it cannot, so their pulls do not move at all."""
    import regularizer_pull

    result = run_script(trained_run, "--dataset", "tiny.npz", "--seed", "3", "--exp-name", "indep",
                        "--decomposition", "independent", *TINY_FLAGS)
    assert result.returncode == 0, result.stderr[-3000:]
    monkeypatch.chdir(trained_run)  # the runs name their dataset relative to it
    (sequential,) = (trained_run / "checkpoints").glob("mpe_simple_spread__first__3__*.pt")
    (independent,) = (trained_run / "checkpoints").glob("mpe_simple_spread__indep__3__*.pt")
    seq = regularizer_pull.measure(str(sequential), n_states=64, draws=4)
    ind = regularizer_pull.measure(str(independent), n_states=64, draws=4)
    assert (seq["decomposition"], ind["decomposition"]) == ("sequential", "independent")
    for row in ("leader=data", "leader=uniform"):
        assert ind["pull"][row][1:] == pytest.approx(ind["pull"]["zero"][1:], rel=1e-5)
        assert seq["pull"][row][1:] != pytest.approx(seq["pull"]["zero"][1:], rel=1e-3)
    assert all(len(v) == 3 and all(np.isfinite(v)) for v in seq["pull"].values())
    assert "| leader=data |" in regularizer_pull.format_result("run", seq)
    with pytest.raises(SystemExit, match="--checkpoint .*missing.pt does not exist"):
        regularizer_pull.measure(str(trained_run / "missing.pt"))


def test_critic_check_ranks_returns_and_compares_actor_and_data_actions(trained_run, monkeypatch):
    """benchmarks/critic_check.py on a real checkpoint and its dataset (4 episodes of random actions)."""
    import critic_check

    # the pieces, on numbers worked by hand
    assert critic_check.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(0.8)
    assert critic_check.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(np.sqrt(0.75))  # ties share a rank
    assert np.isnan(critic_check.spearman([1, 1, 1], [1, 2, 3]))
    rewards, terminals, timeouts = (np.array(x, dtype=np.float32) for x in
                                    ([1, 1, 1, 2, 2], [0, 0, 1, 0, 0], [0, 0, 0, 0, 1]))
    assert critic_check.episode_starts(terminals, timeouts).tolist() == [0, 3]
    to_go, usable = critic_check.returns_to_go(rewards, terminals, timeouts, 0.5)
    assert to_go.tolist() == [1.75, 1.5, 1.0, 3.0, 2.0]  # at the episodes' starts: their discounted returns
    assert usable.tolist() == [True, True, True, False, False]  # a terminal ends the value; a near timeout cuts it
    long_episode = np.zeros(10, dtype=np.float32)
    long_episode[-1] = 1  # one 10-step episode ending in a timeout; at gamma 0.5, gamma^7 <= 0.01 < gamma^6
    _, usable = critic_check.returns_to_go(np.ones(10, dtype=np.float32), np.zeros(10), long_episode, 0.5)
    assert usable.tolist() == [True] * 3 + [False] * 7
    assert critic_check.steps_in_episode(np.array([0, 3]), 5).tolist() == [0, 1, 2, 0, 1]

    monkeypatch.chdir(trained_run)  # the runs name their dataset relative to it
    (path,) = (trained_run / "checkpoints").glob("mpe_simple_spread__first__3__*.pt")
    result = critic_check.check(str(path), n_states=50)
    assert result["episodes"] == 4 and result["states"] == 50 and result["decomposition"] == "sequential"
    assert -1.0 <= result["spearman_q0_return"] <= 1.0
    # (b) and (c) against the networks themselves, on the first sampled state
    script, checkpoint, args, nets, data = critic_check.load_run(str(path))
    row = np.sort(np.random.default_rng(0).choice(len(data.rewards), size=50, replace=False))
    norm = checkpoint["normalizers"]
    state = torch.as_tensor((data.states[row] - norm["state_mean"]) / norm["state_std"], dtype=torch.float32)
    with torch.no_grad():
        q_data = 0.5 * sum(nets["q_target"](state, torch.as_tensor(data.actions[row])))
        v = nets["v_net"](state)
    assert result["mean_q_data"] == pytest.approx(q_data.mean().item(), rel=1e-5)
    assert result["v_minus_q_data"] == pytest.approx((v - q_data).mean().item(), rel=1e-4, abs=1e-6)
    assert script.__name__.endswith("osd_mpe") and isinstance(args, script.Args)
    # (e) phase 1b's weights over every transition; MPE episodes (25 steps) lie wholly in the first 50 steps
    every_state = torch.as_tensor((data.states - norm["state_mean"]) / norm["state_std"], dtype=torch.float32)
    with torch.no_grad():
        weights = script.value_sampling_weights(0.5 * sum(nets["q_target"](every_state, torch.as_tensor(data.actions))),
                                                args.value_weighted_temperature).double()
    assert result["effective_share"] == pytest.approx((weights.sum() ** 2 / (weights**2).sum() / len(weights)).item(),
                                                      rel=1e-4)
    assert result["early_data_share"] == 1.0 and result["early_weight_share"] == pytest.approx(1.0)
    table = critic_check.format_table(result)
    assert "| (a) Spearman rho of Q(s_0, a_0) with the discounted return, over 4 episodes" in table
    assert "| (b) mean Q(s, pi(o)) - Q(s, a_data), over 50 dataset states |" in table
    with pytest.raises(SystemExit, match="--checkpoint .*missing.pt does not exist"):
        critic_check.check(str(trained_run / "missing.pt"))
    with pytest.raises(SystemExit, match="is not the dataset .* was trained on"):
        critic_check.check(str(path), dataset=str(random_rollout_dataset(trained_run / "other.npz", episodes=2)))
