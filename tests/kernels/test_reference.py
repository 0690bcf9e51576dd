"""The PyTorch reference is the ground truth of the Triton tests, so it is checked against the papers first:
SwAV's literal Sinkhorn, ViCC's pseudocode loss, GOCA's lambda2 = 0 limit, uniform marginals."""

from __future__ import annotations

import torch

from kernels import reference as R
from tests.kernels.conftest import unit


def test_log_domain_sinkhorn_equals_swav_literal_form():
    z, c = unit(200, 32, seed=1), unit(30, 32, seed=2)
    s = R.prototype_scores(z, c)
    for n_iters in (1, 3, 10):
        q = R.sinkhorn(s, 0.05, n_iters, 64)
        q_swav = R.sinkhorn_swav(s, 0.05, n_iters, 64)
        torch.testing.assert_close(q, q_swav, rtol=1e-4, atol=1e-6)


def test_marginals_uniform_after_enough_iterations():
    s = R.prototype_scores(unit(120, 16, seed=3), unit(40, 16, seed=4))
    q = R.sinkhorn(s, 0.05, 50, 120)  # all rows returned: check both marginals
    torch.testing.assert_close(q.sum(1), torch.ones(120), atol=1e-3, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((40,), 120 / 40), atol=1e-3, rtol=0)


def test_returns_only_the_batch_rows_and_queue_changes_them():
    s = R.prototype_scores(unit(100, 16, seed=5), unit(20, 16, seed=6))
    q_queue = R.sinkhorn(s, 0.05, 3, 30)
    q_alone = R.sinkhorn(s[:30], 0.05, 3, 30)
    assert q_queue.shape == (30, 20)
    assert not torch.allclose(q_queue, q_alone, atol=1e-3)


def test_prior_with_lambda2_zero_is_plain_sinkhorn():
    s = R.prototype_scores(unit(50, 16, seed=7), unit(20, 16, seed=8))
    prior = torch.rand(50, 20)
    q = R.sinkhorn_prior(s, prior, 0.02, 0.0, 3, 50)
    torch.testing.assert_close(q, R.sinkhorn(s, 0.02, 3, 50))


def test_prior_pulls_assignment_towards_prior():
    s = R.prototype_scores(unit(60, 16, seed=9), unit(12, 16, seed=10))
    prior = R.sinkhorn(R.prototype_scores(unit(60, 16, seed=11), unit(12, 16, seed=10)), 0.05, 3, 60)
    plain = R.sinkhorn(s, 0.05, 3, 60)
    guided = R.sinkhorn_prior(s, prior, 0.02, 0.03, 3, 60)
    agree = lambda q: (q.argmax(1) == prior.argmax(1)).float().mean()  # noqa: E731
    assert agree(guided) > agree(plain)


def test_loss_matches_vicc_pseudocode_and_swav():
    P = torch.randn(4, 10, 30)
    Q = R.sinkhorn(torch.randn(4, 10, 30), 0.05, 3, 10)
    logp = torch.log_softmax(P / 0.1, dim=-1)
    l = lambda t, p: (Q[t] * logp[p]).sum(-1).mean()  # noqa: E731, E741
    # ViCC supplementary pseudocode: loss = -1/4 * sum_t 1/3 * sum_{p != t} l(t, p)
    vicc = -0.25 * sum(sum(l(t, p) for p in range(4) if p != t) / 3 for t in range(4))
    torch.testing.assert_close(R.swapped_loss(P, Q, ~torch.eye(4, dtype=torch.bool), 0.1), vicc)
    # SwAV with two crops: each crop's code predicted by the other, averaged.
    swav = -(l(0, 1) + l(1, 0)) / 2
    torch.testing.assert_close(R.swapped_loss(P[:2], Q[:2], ~torch.eye(2, dtype=torch.bool), 0.1), swav)


def test_loss_gradient_is_softmax_minus_target_over_tau():
    P = torch.randn(4, 6, 9, requires_grad=True)
    Q = R.sinkhorn(torch.randn(4, 6, 9), 0.05, 3, 6)
    mask = ~torch.eye(4, dtype=torch.bool)
    (g,) = torch.autograd.grad(R.swapped_loss(P, Q, mask, 0.1), P)
    sm = torch.softmax(P.detach() / 0.1, dim=-1)
    expect = torch.stack([sum(sm[p] - Q[t] for t in range(4) if t != p) for p in range(4)])
    torch.testing.assert_close(g, expect / 0.1 / (12 * 6), rtol=1e-4, atol=1e-7)


def test_enqueue_is_a_ring():
    q = torch.zeros(2, 5, 3)
    z = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    assert R.enqueue(q, z, 4) == 2
    torch.testing.assert_close(q[:, [4, 0, 1]], z)
    assert q[:, 2:4].abs().sum() == 0
