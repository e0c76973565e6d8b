"""The one OTF selection function against a naive per-candidate loop, and the bounded edits it relies on."""

import math

import numpy as np
import torch
from agent_fixtures import SPEC, build
from hypothesis import given, settings
from hypothesis import strategies as st

from expo_robot.agent.gaussian import EditPolicy, tanh_log_det
from expo_robot.agent.select import select


def naive_select(obs, proposals, critic, subset, edit, edit_noise):
    """Per state, per candidate: edit, score with each subset member, keep the best. No batching."""
    chosen, scores = [], []
    for i in range(obs.shape[0]):
        cands = []
        for j in range(proposals.shape[1]):
            cands.append(proposals[i, j])
        for j in range(proposals.shape[1]):
            edited, _ = edit(obs[i : i + 1], proposals[i, j : j + 1], False, edit_noise[i, j : j + 1])
            cands.append(edited[0])
        best, best_q = None, -math.inf
        for c in cands:
            q = min(float(critic(obs[i : i + 1], c[None])[m, 0]) for m in subset.tolist())
            if q > best_q:
                best, best_q = c, q
        chosen.append(best)
        scores.append(best_q)
    return torch.stack(chosen), torch.tensor(scores)


@settings(max_examples=8, deadline=None)
@given(b=st.integers(1, 4), n=st.integers(1, 5), seed=st.integers(0, 10_000))
def test_select_equals_naive_loop(b, n, seed):
    agent = build("expo", seed=seed % 7)
    torch.manual_seed(seed)
    d = agent.act_dim
    obs = torch.randn(b, SPEC.state_dim)
    proposals = torch.rand(b, n, d) * 2 - 1
    noise = torch.randn(b, n, d)
    subset = torch.tensor([2, 0])
    with torch.no_grad():
        sel = select(obs, agent.critic, subset, proposals=proposals, edit=agent.edit, edit_noise=noise)
        want, want_q = naive_select(obs, proposals, agent.critic, subset, agent.edit, noise)
    torch.testing.assert_close(sel.action, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sel.q, want_q, atol=1e-5, rtol=1e-5)


def test_select_without_edit_is_best_of_n_over_base_proposals():
    agent = build("best_of_n")
    obs = torch.randn(3, SPEC.state_dim)
    proposals = torch.rand(3, 6, agent.act_dim) * 2 - 1
    subset = torch.tensor([0, 1])
    sel = select(obs, agent.critic, subset, proposals=proposals)
    assert sel.candidates.shape[1] == 6
    rows = torch.arange(3)
    torch.testing.assert_close(sel.action, proposals[rows, sel.index])


@settings(max_examples=20, deadline=None)
@given(beta=st.floats(0.01, 0.9), scale=st.floats(0.1, 50.0), seed=st.integers(0, 1000))
def test_edits_never_exceed_beta(beta, scale, seed):
    torch.manual_seed(seed)
    edit = EditPolicy(4, 6, 16, 2, beta)
    obs, a = torch.randn(64, 4), torch.rand(64, 6) * 2 - 1
    edited, _ = edit(
        obs, a, noise=torch.randn(64, 6) * scale
    )  # huge noise: tanh saturates, still inside the box
    assert ((edited - a).abs() <= beta + 1e-6).all()


def test_log_prob_matches_change_of_variables():
    """log pi(edited) = log N(u) - sum log(1 - tanh^2 u) - d log beta, checked against torch.distributions."""
    torch.manual_seed(0)
    beta, d = 0.3, 3
    edit = EditPolicy(2, d, 16, 2, beta)
    obs, a = torch.randn(10, 2), torch.rand(10, d) * 2 - 1
    noise = torch.randn(10, d)
    edited, log_prob = edit(obs, a, noise=noise)
    mean, log_std = edit.head.net(torch.cat([obs, a], -1)).chunk(2, -1)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.clamp(-20, 2).exp()),
        [torch.distributions.TanhTransform(), torch.distributions.AffineTransform(a, beta)],
    )
    expected = dist.log_prob(edited.clamp(a - beta + 1e-6, a + beta - 1e-6)).sum(-1)
    torch.testing.assert_close(log_prob, expected, atol=1e-3, rtol=1e-4)
    # the correction itself: shrinking the box by beta raises the density by d * log(1/beta)
    u = mean + log_std.clamp(-20, 2).exp() * noise
    raw = torch.distributions.Normal(mean, log_std.clamp(-20, 2).exp()).log_prob(u).sum(-1) - tanh_log_det(u)
    torch.testing.assert_close(log_prob - raw, torch.full((10,), -d * math.log(beta)))


def test_act_returns_a_chunk_inside_the_bounds():
    for name in ("expo", "best_of_n", "rlpd", "bc", "expo_no_otf_backup"):
        agent = build(name)
        for mode in ("explore", "eval"):
            chunk = agent.act(np.random.default_rng(0).normal(size=SPEC.state_dim).astype(np.float32), mode)
            assert chunk.shape == (SPEC.chunk, SPEC.action_dim)
            assert (chunk >= np.asarray(SPEC.action_low)).all() and (
                chunk <= np.asarray(SPEC.action_high)
            ).all()
