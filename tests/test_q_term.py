"""The Q term of the actors' loss (docs/algorithm.md §5, eq. (5.2)): how --q-normalization scales the Q
gradient, and a game that only a working Q term solves (benchmarks/q_optimum_game.py).

CPU only, one torch thread; about 20 seconds of one core.
"""

from __future__ import annotations

import pathlib
import sys

import pytest
import torch
import torch.nn as nn

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import osd_mamujoco  # noqa: E402
import osd_mpe  # noqa: E402

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------
# 1. --q-normalization, on a Q whose gradient is known
# ---------------------------------------------------------------------------------------------------
BATCH, ACT_DIMS = 6, (3, 2)  # agent 1 has 2 real action dims, padded to 3


class FreeActions(nn.Module):
    """An 'actor' whose action for sample b is a free parameter (its observation is the one-hot of b), so
    the loss's gradient on that parameter is the push on sample b's action."""

    def __init__(self, act_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(BATCH, act_dim, bias=False))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class LinearQ(nn.Module):
    """Both twins Q(s, a) = s * <w, a>: the gradient at sample b is s_b * w, whatever the action."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.weights = weights  # [N, A]; the padded entry is non-zero, so a mask that fails would show

    def forward(self, state: torch.Tensor, joint_actions: torch.Tensor):
        q = state[:, 0] * (joint_actions * self.weights).sum(dim=(1, 2))
        return q, q


def q_pushes(script, q_normalization: str, beta: float = 0.5):
    """The normalized g the loss applies to every (sample, agent) and the loss's parts. The score network
    predicts zero noise, so the regularizer pushes nothing and the gradient is the Q term's alone."""
    torch.manual_seed(0)
    actors = nn.ModuleList([FreeActions(dim) for dim in ACT_DIMS])
    act_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    weights = torch.tensor([[1.0, -2.0, 0.5], [3.0, 1.0, 7.0]])
    state = torch.tensor([[1.0], [-2.0], [0.5], [4.0], [0.1], [-1.0]])  # per-sample scale of the gradient
    obs = torch.eye(BATCH)[:, None, :].expand(-1, 2, -1)

    def silent_score_net(noised, t, condition, prefix, mask):
        return torch.zeros_like(noised)

    loss, parts = script.actor_loss(actors, silent_score_net, LinearQ(weights), obs, state, obs, torch.zeros(2, 2),
                                    act_mask, beta, 0.02, 0.98, "score", q_normalization, diagnostics=True)
    loss.backward()
    # d loss / d a_{b,i} = -beta * g_{b,i} / BATCH, and a_{b,i} is column b of actor i's weight
    pushes = [-BATCH * actor.net[0].weight.grad.T / beta for actor in actors]  # [B, d_i] per agent
    raw = [state * weights[i, :dim] for i, dim in enumerate(ACT_DIMS)]
    return pushes, raw, parts


@pytest.mark.parametrize("script", [osd_mpe, osd_mamujoco], ids=["osd_mpe", "osd_mamujoco"])
def test_q_normalization_scales_the_q_gradient_as_documented(script):
    for q_normalization in script.Q_NORMALIZATIONS:
        pushes, raw, parts = q_pushes(script, q_normalization, beta=0.5)
        for push, g in zip(pushes, raw):
            if q_normalization == "none":
                expected = g
            elif q_normalization == "batch":  # one RMS per agent, over the batch and its real dims only
                expected = g / g.pow(2).mean().sqrt()
            else:  # each sample's own RMS over the agent's real dims only
                expected = g / g.pow(2).mean(dim=1, keepdim=True).sqrt()
            assert torch.allclose(push, expected, rtol=1e-5, atol=1e-6), (q_normalization, push, expected)
        rms = torch.stack([push.pow(2).mean().sqrt() for push in pushes])
        assert torch.allclose(parts["q_push_rms"], 0.5 * rms, rtol=1e-5)  # the diagnostic is beta * that RMS
        assert torch.equal(parts["score_push_rms"], torch.zeros(2))
    with pytest.raises(ValueError, match="unknown q_normalization True; valid: batch, sample, none"):
        q_pushes(script, True)


def test_actor_diagnostics_count_saturated_entries_of_real_dims_only():
    actors = nn.ModuleList([FreeActions(dim) for dim in ACT_DIMS])
    with torch.no_grad():
        actors[0].net[0].weight.fill_(0.5)
        actors[0].net[0].weight[0, :3] = 1.0  # 3 of agent 0's 18 entries beyond the bound (0.99)
        actors[1].net[0].weight.fill_(-1.0)  # every real entry of agent 1; its padded entries are 0
    act_mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    obs = torch.eye(BATCH)[:, None, :].expand(-1, 2, -1)
    _, parts = osd_mpe.actor_loss(actors, lambda x, *_: torch.ones_like(x), LinearQ(torch.ones(2, 3)), obs,
                                  torch.ones(BATCH, 1), obs, torch.zeros(2, 2), act_mask, 0.1, 0.5, 0.5, "uniform",
                                  "batch", diagnostics=True)
    assert parts["action_at_bounds"].tolist() == pytest.approx([3 / 18, 1.0])
    # w = 1 (uniform) and eps_hat = 1 on every real entry: the regularizer's push has RMS 1
    assert parts["score_push_rms"].tolist() == pytest.approx([1.0, 1.0])


# ---------------------------------------------------------------------------------------------------
# 2. A game whose optimum only the critic knows (benchmarks/q_optimum_game.py)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def q_optimum_results():
    """One behavior model and critic on uniform data, then actors with beta 0 and with the game's beta."""
    from q_optimum_game import GameConfig, run_game

    cfg = GameConfig(seed=0)
    return cfg, run_game(cfg, (0.0, cfg.beta))


def test_q_term_moves_the_actors_to_the_rewards_optimum(q_optimum_results):
    """Data uniform over the action box, reward -(a_1 - 0.5)^2 - (a_2 + 0.3)^2: the regularizer alone has
    no reason to go to (0.5, -0.3), the critic's gradient does. With beta 0.3 (batch normalization) both
    actors end within 0.15 of the optimum on average over held-out contexts; with beta 0 they stay near
    the box's centre, at least 0.25 away for agent 1 (whose optimum is 0.5 from the centre). With the Q
    term's sign flipped the actors move away from the optimum and the first assertion fails
    (docs/q_term_notes.md §3)."""
    cfg, results = q_optimum_results
    with_q, without_q = results[cfg.beta], results[0.0]
    assert with_q["max_error"] < 0.15, with_q
    assert without_q["agent1_error"] > 0.25 and without_q["max_error"] > 0.15, without_q


# ---------------------------------------------------------------------------------------------------
# 3. benchmarks/medium_expert_modes.py: the arithmetic behind its tables
# ---------------------------------------------------------------------------------------------------
def test_medium_expert_modes_labels_halves_and_measures_whom_the_actors_follow():
    import numpy as np

    import medium_expert_modes as modes

    # two 2-step episodes: returns 2 and 20 with references 0 / 10 score 20 and 200: medium half, expert half
    rewards, terminals, timeouts = np.array([1.0, 1.0, 10.0, 10.0]), np.zeros(4), np.array([0, 1, 0, 1.0])
    expert_half = modes.half_labels(rewards, terminals, timeouts, 0.0, 10.0)
    assert expert_half.tolist() == [False, False, True, True]

    joint = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], dtype=np.float32)  # agents of 2 and 1 action dims
    padded = modes.stack_agents(joint, [2, 1])  # the dataset generator's padding, which unpad inverts
    assert np.array_equal(modes.unpad(padded, [2, 1]), joint)

    teams = {"expert team": np.ones((4, 2)), "medium team": np.zeros((4, 2))}
    actions = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.5, 1.0]])  # medium on its states, near expert on its
    near = modes.distances(actions, teams, expert_half)
    assert near["medium team"]["medium half"] == 0.0 and near["expert team"]["medium half"] == 1.0
    assert near["expert team"]["expert half"] == pytest.approx(0.125)

    advantage = np.array([0.0, 0.0, 1.0, 1.0])  # the expert half better by 1: weights e^(1/T) against 1
    assert modes.expert_mass(advantage, expert_half, 1.0) == pytest.approx(np.e / (np.e + 1))
    assert modes.expert_mass(advantage, expert_half, 0.01) == pytest.approx(100 / 101)  # clipped at 100
    assert np.isfinite(modes.sampling_weights(np.array([1e6]), 1.0)).all()  # no overflow before the clip

    # an episode that runs, tips onto its back at step 300 and stands still from step 400 to its end (1000)
    states = np.zeros((1000, 17))
    states[:400, modes.SPEED] = 6.0
    states[300:, modes.PITCH] = 3.3
    assert modes.pitch_and_speed(states) == pytest.approx((3.3, 2.4, 400))
    states[-50:, modes.SPEED] = 1.0  # moving again at the end: not stuck
    assert modes.pitch_and_speed(states)[2] == -1
    reference = np.array([[0.0, 0.0], [3.0, 4.0]])
    assert modes.nearest_data_distance(np.array([[3.0, 4.0], [0.0, 2.0]]), reference, np.ones(2)) == pytest.approx(
        [0.0, 2.0 / np.sqrt(2)])


# ---------------------------------------------------------------------------------------------------
# 4. The value-weighted behavior fine-tune (phase 1b, docs/algorithm.md §6)
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [osd_mpe, osd_mamujoco], ids=["osd_mpe", "osd_mamujoco"])
def test_value_sampling_weights_rank_by_q_cap_and_ignore_the_reward_scale(script):
    q = torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0, 500.0])
    weights = script.value_sampling_weights(q, 0.5)
    assert torch.all(weights[1:] >= weights[:-1])  # a higher Q is drawn at least as often
    assert weights.max() == script.VALUE_WEIGHT_MAX and torch.isfinite(weights).all()  # capped, no overflow
    median = q.median()
    assert weights[q == median].item() == pytest.approx(1.0)  # z = 0 at the median: weight 1
    # standardized: a reward 100 times larger, shifted, gives the same weights (T means the same on any task)
    assert torch.allclose(script.value_sampling_weights(100.0 * q - 7.0, 0.5), weights)


def test_per_tier_tables_name_real_tasks_and_tiers():
    """The scripts look their per-tier defaults up by the data's task and tier with a fallback, so a key
    with a typo would never match and silently leave the default in place: every key must be a valid name."""
    import osd_common

    for table in (osd_mpe.BETA_BY_TIER, osd_mpe.EXPECTILE_BY_TIER, osd_mpe.VALUE_WEIGHTED_STEPS_BY_TIER):
        for key in table:  # a tier (every MPE task) or a (task, tier) pair
            task, tier = key if isinstance(key, tuple) else (None, key)
            assert task in (None, *osd_common.MPE_TASKS) and tier in osd_common.TIERS, key
    for table in (osd_mamujoco.BETA_BY_TIER, osd_mamujoco.EXPECTILE_BY_TIER, osd_mamujoco.VALUE_WEIGHTED_STEPS_BY_TIER):
        assert set(table) <= set(osd_mamujoco.MAMUJOCO_TIERS), table
    assert osd_mpe.VALUE_WEIGHTED_STEPS_BY_TIER[("mpe/simple_spread", "mixed")] > 0  # the main job's tier
    assert 0 < osd_mpe.EXPECTILE_BY_TIER[("mpe/simple_tag", "random")] < 1


def test_value_weighted_finetune_lets_beta0_actors_follow_the_better_team():
    """A quarter of the data from a good team, the rest from a poor one, on shared contexts
    (benchmarks/pooled_teams_game.py): beta-0 actors follow the denser, poor team's mode on nearly every
    held-out context; after 100 fine-tune steps on value-weighted batches they follow the good team's.
    With the weights' sign flipped (finetune(..., sign=-1)) the second assertion fails: 0% of contexts
    (checked by hand)."""
    from pooled_teams_game import GameConfig, run_game

    results = run_game(GameConfig(seed=0), (0, 100))
    assert results[0]["good_share"] < 0.2, results[0]
    assert results[100]["good_share"] > 0.9 and results[100]["good_mass"] > 0.6, results[100]
