"""SIGReg / Epps-Pulley: one test per property of the statistic, against float64 reference math."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

import jepa

F64 = torch.float64


def reference_statistic(y):
    """The definition, written out: y (N, M) float64 -> (M,), materialising (N, M, T)."""
    t, phi, w = jepa.ep_knots(dtype=F64)
    ty = y.unsqueeze(-1) * t  # (N, M, T)
    C, S = ty.cos().mean(0), ty.sin().mean(0)
    return y.shape[0] * (((C - phi) ** 2 + S ** 2) * w).sum(-1)


def closed_form(y):
    """The same integral over the whole real line (window e^(-t^2/2)), for one slice y (N,)."""
    N = y.shape[0]
    diff = y[:, None] - y[None, :]
    return (math.sqrt(2 * math.pi) / N * torch.exp(-diff ** 2 / 2).sum()
            - 2 * math.sqrt(math.pi) * torch.exp(-y ** 2 / 4).sum() + N * math.sqrt(2 * math.pi / 3))


def draw(seed, n, m, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, m, generator=g, dtype=F64) * scale + shift


shapes = dict(seed=st.integers(0, 10_000), n=st.integers(1, 200), m=st.integers(1, 12))


@given(**shapes, scale=st.floats(0.01, 10), shift=st.floats(-5, 5))
def test_statistic_matches_reference_and_is_nonnegative(seed, n, m, scale, shift):
    y = draw(seed, n, m, scale, shift)
    T = jepa.epps_pulley(y)
    assert T.dtype == F64 and T.shape == (m,)
    torch.testing.assert_close(T, reference_statistic(y), rtol=1e-10, atol=1e-10)
    assert (T >= 0).all()


@given(**shapes)
def test_statistic_is_invariant_to_batch_permutation(seed, n, m):
    y = draw(seed, n, m)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    torch.testing.assert_close(jepa.epps_pulley(y[perm]), jepa.epps_pulley(y), rtol=1e-10, atol=1e-10)


@given(**shapes)
def test_statistic_is_symmetric(seed, n, m):
    y = draw(seed, n, m, shift=0.3)
    torch.testing.assert_close(jepa.epps_pulley(-y), jepa.epps_pulley(y), rtol=1e-10, atol=1e-10)


@given(**shapes)
def test_duplicating_the_batch_doubles_the_statistic(seed, n, m):
    y = draw(seed, n, m, scale=1.5)
    torch.testing.assert_close(jepa.epps_pulley(torch.cat([y, y])), 2 * jepa.epps_pulley(y), rtol=1e-10, atol=1e-10)


@given(seed=st.integers(0, 10_000), n=st.integers(20, 300), scale=st.floats(0.7, 1.4), shift=st.floats(-0.5, 0.5))
def test_statistic_agrees_with_the_closed_form_within_quadrature_error(seed, n, scale, shift):
    """The 17-knot trapezoid on [0, 3] truncates the integral at |t| = 3; for near-Gaussian batches that costs
    about 0.3-2 % of the value, so we allow 3 % (plus a small absolute slack for values near zero)."""
    y = draw(seed, n, 1, scale, shift)
    T, exact = jepa.epps_pulley(y)[0], closed_form(y[:, 0])
    assert abs(T - exact) <= 0.03 * exact + 0.02, (T.item(), exact.item())


def test_gaussian_mean_is_1_0525_independent_of_n():
    """E[T] = sum_k w_k (1 - phi_k^2) for y ~ N(0, 1), at any N. We average 4000 independent slices; the tolerance
    is 5 standard errors of that mean, estimated from the same slices, so a correct statistic fails with
    probability < 1e-6 (and the seed is fixed, so the test is deterministic)."""
    t, phi, w = jepa.ep_knots(dtype=F64)
    expected = (w * (1 - phi ** 2)).sum().item()
    assert abs(expected - 1.0525) < 5e-4
    for n in (16, 256):
        T = jepa.epps_pulley(draw(n, n, 4000))
        stderr = T.std().item() / math.sqrt(T.numel())
        assert abs(T.mean().item() - expected) < 5 * stderr, (n, T.mean().item(), stderr)


@given(n=st.integers(1, 500), c=st.floats(-4, 4))
def test_collapsed_batch_value(n, c):
    t, phi, w = jepa.ep_knots(dtype=F64)
    T = jepa.epps_pulley(torch.full((n, 1), c, dtype=F64))[0]
    torch.testing.assert_close(T, n * (w * (1 - 2 * phi * torch.cos(t * c) + phi ** 2)).sum(), rtol=1e-10, atol=1e-10)
    if c == 0:
        assert abs(T / n - 0.402) < 1e-3


@given(**shapes, scale=st.floats(0.01, 100))
def test_gradient_is_bounded(seed, n, m, scale):
    t, _, w = jepa.ep_knots(dtype=F64)
    bound = 4 * (w * t).sum().item()
    assert abs(bound - 7.886) < 1e-3
    y = draw(seed, n, m, scale).requires_grad_()
    jepa.epps_pulley(y).sum().backward()
    assert y.grad.abs().max() <= bound + 1e-9


@given(seed=st.integers(0, 10_000), n=st.integers(2, 100), d=st.integers(2, 8))
def test_rotating_embeddings_equals_rotating_directions(seed, n, d):
    g = torch.Generator().manual_seed(seed)
    Z, A = torch.randn(n, d, generator=g, dtype=F64), torch.randn(d, 5, generator=g, dtype=F64)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    torch.testing.assert_close(jepa.epps_pulley((Z @ Q) @ A), jepa.epps_pulley(Z @ (Q @ A)), rtol=1e-9, atol=1e-9)


@given(seed=st.integers(0, 10_000), shard=st.integers(1, 60), shards=st.integers(2, 4), m=st.integers(1, 8))
def test_shard_means_average_to_the_full_batch(seed, shard, shards, m):
    """The sums decompose over equal shards of the batch (the kernel's row ranges, a data-parallel all-reduce)."""
    y = draw(seed, shard * shards, m)
    t, phi, w = jepa.ep_knots(dtype=F64)
    parts = [jepa.cf_sums(p, t) for p in y.chunk(shards)]
    C = sum(c for c, _ in parts) / len(y)
    S = sum(s for _, s in parts) / len(y)
    torch.testing.assert_close(len(y) * (((C - phi) ** 2 + S ** 2) @ w), jepa.epps_pulley(y), rtol=1e-10, atol=1e-10)


@given(seed=st.integers(0, 10_000), n=st.integers(1, 30), m=st.integers(1, 4))
def test_gradient_equals_finite_differences(seed, n, m):
    y = draw(seed, n, m).requires_grad_()
    assert torch.autograd.gradcheck(jepa.epps_pulley, (y,), eps=1e-6, atol=1e-6)


def test_epps_pulley_is_fp32_for_low_precision_input():
    y = torch.randn(64, 8).bfloat16()
    out = jepa.epps_pulley(y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference_statistic(y.double()), rtol=1e-4, atol=1e-4)


def test_sigreg_directions_depend_only_on_the_step():
    z = torch.randn(128, 16)
    assert jepa.sigreg(z, 7, 256) == jepa.sigreg(z, 7, 256)
    assert jepa.sigreg(z, 7, 256) != jepa.sigreg(z, 8, 256)
    views = torch.stack([z, z.flip(0)])  # (V, N, D): two views with the same statistic
    torch.testing.assert_close(jepa.sigreg(views, 3, 256), jepa.sigreg(z, 3, 256))


def test_sigreg_separates_gaussian_from_collapsed():
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(512, 32, generator=g)
    collapsed = torch.randn(1, 32, generator=g).expand(512, 32) * 0.01
    assert jepa.sigreg(gauss, 0, 256) < 2 < jepa.sigreg(collapsed, 0, 256) / 50


@pytest.mark.parametrize('kernels', [False, True])
def test_sigreg_is_fp32_under_bf16_autocast(kernels):
    """Autocast would run the projection z @ A and the quadrature (...) @ w, both matmuls, in bf16: sigreg leaves
    autocast, so its value under autocast is the fp32 value, with the kernels (interpreter) and without."""
    if kernels:
        pytest.importorskip('triton')
    dev = 'cuda' if kernels and torch.cuda.is_available() else 'cpu'  # the kernels: compiled, or the interpreter
    z = torch.randn(64, 32, generator=torch.Generator().manual_seed(0)).to(dev).requires_grad_()
    plain = jepa.sigreg(z, step=3, num_slices=16, kernels=kernels)
    (g_plain,) = torch.autograd.grad(plain, z)
    with torch.autocast(dev, dtype=torch.bfloat16):
        mixed = jepa.sigreg(z, step=3, num_slices=16, kernels=kernels)
    (g_mixed,) = torch.autograd.grad(mixed, z)  # outside autocast, as the training loop runs its backward
    assert mixed.dtype == torch.float32 and g_mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain, rtol=1e-6, atol=0)
    torch.testing.assert_close(g_mixed, g_plain, rtol=1e-6, atol=1e-9)


def test_sigreg_directions_have_a_stream_of_their_own(monkeypatch):
    """The directions of step s come from a seed of their own: no step's augmentation and mask generator (any
    step) starts from it. Seeded `seed * c + step` against `seed * c + step + 1`, step s's
    directions replayed step s-1's crops and masks."""
    seeds, real = [], torch.Generator

    class Recording:  # torch.Generator, with the seeds it is given written down
        def __new__(cls, *args, **kwargs):
            g = real(*args, **kwargs)
            return type('G', (), {'manual_seed': lambda self, s: (seeds.append(s), g.manual_seed(s))[1]})()
    monkeypatch.setattr(torch, 'Generator', Recording)
    z = torch.randn(16, 8)
    for seed in (0, 1):
        sigreg_seeds, step_seeds = set(), set()
        for step in range(20):
            seeds.clear()
            jepa.sigreg(z, step, num_slices=4, seed=seed)
            sigreg_seeds.update(seeds)
            seeds.clear()
            jepa.step_generator(seed, step, 'cpu')
            step_seeds.update(seeds)
        assert len(sigreg_seeds) == 20 and len(step_seeds) == 20
        assert not sigreg_seeds & step_seeds


def test_knots_and_weights_are_the_folded_trapezoid_rule():
    """Computed independently of jepa.ep_knots: the trapezoid rule on 2T - 1 evenly spaced points of [-3, 3]
    with the window exp(-t^2/2), folded onto t >= 0 by the integrand's symmetry (every t > 0 stands for +t and
    -t). Equal, to 1e-12, to jepa's table, to the kernels' own and to the official code's definition
    (weights 2 dt phi, dt phi at both ends)."""
    T = jepa.NUM_KNOTS
    full = torch.linspace(-3, 3, 2 * T - 1, dtype=F64)
    dt = (full[1] - full[0]).item()
    trapezoid = torch.full_like(full, dt)
    trapezoid[0] = trapezoid[-1] = dt / 2
    trapezoid = trapezoid * torch.exp(-full ** 2 / 2)
    t = full[T - 1:]  # 0 .. 3
    w = trapezoid[T - 1:].clone()
    w[1:] += trapezoid[:T - 1].flip(0)  # the mirrored -t
    official = torch.full((T,), 2 * 3 / (T - 1), dtype=F64)
    official[[0, -1]] = 3 / (T - 1)
    official = official * torch.exp(-t ** 2 / 2)
    ours_t, ours_phi, ours_w = jepa.ep_knots(dtype=F64)
    for name, a, b in (('t', ours_t, t), ('phi', ours_phi, torch.exp(-t ** 2 / 2)), ('w', ours_w, w),
                       ('official w', official, w)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_correlated_gaussian_scores_above_the_isotropic_one(seed):
    """SIGReg tests isotropy, not only Gaussianity: a Gaussian with unit variances but correlated coordinates
    (its projections have variances a' Sigma a between 0.1 and 4.6) scores well above N(0, I) at the same N."""
    g = torch.Generator().manual_seed(seed)
    N, D = 1000, 8
    iso = torch.randn(N, D, generator=g, dtype=F64)
    sigma = 0.1 * torch.eye(D, dtype=F64) + 0.9  # unit diagonal, correlation 0.9
    corr = torch.randn(N, D, generator=g, dtype=F64) @ torch.linalg.cholesky(sigma).T
    assert corr.var(0).sub(1).abs().max() < 0.15  # the marginals alone look standard
    a, b = jepa.sigreg(iso, step=seed, num_slices=256), jepa.sigreg(corr, step=seed, num_slices=256)
    assert b > 10 * a, (a.item(), b.item())
