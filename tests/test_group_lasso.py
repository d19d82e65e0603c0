"""SparseJEPA's group penalty and its proximal step (oi-VAE style), against the definition."""
import torch
from hypothesis import given, settings, strategies as st

import jepa

F64 = torch.float64
mats = dict(seed=st.integers(0, 10_000), groups=st.integers(1, 6), rows=st.integers(1, 5), d=st.integers(1, 10))


def draw(seed, groups, rows, d):
    return torch.randn(groups * rows, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def omega_loops(W, G):
    """Omega(W) = sum_g sum_j ||W^(g)[:, j]||_2, by explicit loops over groups and latents."""
    r = W.shape[0] // G
    return sum(W[g * r:(g + 1) * r, j].norm() for g in range(G) for j in range(W.shape[1]))


@given(**mats, c=st.floats(-10, 10))
def test_group_lasso_matches_definition_and_is_absolutely_homogeneous(seed, groups, rows, d, c):
    W = draw(seed, groups, rows, d)
    om = jepa.group_lasso(W, groups)
    torch.testing.assert_close(om, omega_loops(W, groups))
    assert om >= 0
    torch.testing.assert_close(jepa.group_lasso(c * W, groups), abs(c) * om)


@given(**mats)
def test_group_lasso_is_zero_exactly_at_zero(seed, groups, rows, d):
    assert jepa.group_lasso(torch.zeros(groups * rows, d, dtype=F64), groups) == 0
    W = draw(seed, groups, rows, d)
    W[seed % W.shape[0], seed % d] += 1e-3  # any nonzero entry gives a positive penalty
    assert jepa.group_lasso(W, groups) > 0


@given(**mats, thr=st.floats(0.0, 3.0))
def test_prox_zeroes_small_columns_shrinks_the_rest_never_flips(seed, groups, rows, d, thr):
    W = draw(seed, groups, rows, d)
    V = jepa.prox_group_lasso_(W.clone(), groups, thr)
    r = rows
    for g in range(groups):
        for j in range(d):
            w, v = W[g * r:(g + 1) * r, j], V[g * r:(g + 1) * r, j]
            if w.norm() <= thr:
                assert (v == 0).all()
            else:
                torch.testing.assert_close(v.norm(), w.norm() - thr)   # shrunk by thr in norm
                assert (torch.sign(v) * torch.sign(w) >= 0).all()       # same direction, no sign flips


def _prox_objective(W, thr, groups):
    return lambda X: 0.5 * (X - W).pow(2).sum() + thr * jepa.group_lasso(X, groups)  # noqa: E731


@given(**mats, thr=st.floats(0.05, 1.5))
def test_prox_minimises_the_proximal_objective(seed, groups, rows, d, thr):
    """prox(W) = argmin_V 1/2 ||V - W||^2 + thr * Omega(V): no small perturbation of it does better."""
    W = draw(seed, groups, rows, d)
    V = jepa.prox_group_lasso_(W.clone(), groups, thr)
    obj = _prox_objective(W, thr, groups)
    g = torch.Generator().manual_seed(seed + 1)
    for scale in (1e-4, 1e-2):
        for _ in range(10):
            assert obj(V + scale * torch.randn(V.shape, generator=g, dtype=F64)) >= obj(V) - 1e-12


@settings(max_examples=4)
@given(seed=st.integers(0, 1000), thr=st.floats(0.2, 1.5))
def test_prox_agrees_with_gradient_descent_on_the_objective(seed, thr):
    """An independent solver: plain (sub)gradient descent on the convex objective from zero reaches the prox's
    value, and never beats it."""
    W = draw(seed, 2, 2, 3)
    V = jepa.prox_group_lasso_(W.clone(), 2, thr)
    obj = _prox_objective(W, thr, 2)
    X = torch.zeros_like(W, requires_grad=True)
    opt = torch.optim.SGD([X], lr=0.05)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 / (1 + k / 50))  # subgradient steps must shrink
    for _ in range(1500):
        opt.zero_grad()
        obj(X + 1e-12).backward()  # +1e-12 keeps the norm differentiable at exact zeros
        opt.step()
        decay.step()
    assert obj(V) <= obj(X.detach()) + 1e-9 and obj(X.detach()) - obj(V) < 5e-3


def test_prox_is_in_place_and_group_sparsity_counts_groups():
    W = torch.zeros(4, 3)
    W[0, 0], W[2, 0], W[1, 2] = 5.0, 5.0, 0.1  # latent 0 feeds both groups of 2 rows, latent 2 one, weakly
    assert jepa.group_sparsity(W, 2).item() == (2 + 0 + 1) / 3
    out = jepa.prox_group_lasso_(W, 2, 0.5)
    assert out is W and W[1, 2] == 0 and abs(jepa.group_sparsity(W, 2).item() - 2 / 3) < 1e-6


def test_info_nce_prefers_aligned_views():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 16, generator=g)
    aligned = jepa.info_nce(z, z + 0.01 * torch.randn(64, 16, generator=g), tau=0.1)
    shuffled = jepa.info_nce(z, z[torch.randperm(64, generator=g)], tau=0.1)
    assert aligned < 0.1 < shuffled
    # with all embeddings equal every candidate is equally likely: loss = log(2B - 1)
    same = torch.ones(8, 4)
    torch.testing.assert_close(jepa.info_nce(same, same, tau=0.5), torch.log(torch.tensor(15.0)))
