"""kernels/sigreg.py against the float64 reference: compiled on a GPU when there is one, otherwise in Triton's
interpreter on CPU tensors (TRITON_INTERPRET=1, set in conftest.py before triton is imported)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import jepa

triton = pytest.importorskip('triton', reason='triton is not installed (make install adds it where it installs)')
from kernels import sigreg as K  # noqa: E402

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
# hypothesis draws shapes; in the interpreter every program runs in Python, so keep the CPU budget small
SIZES = dict(n=st.integers(1, 3000) if DEV == 'cuda' else st.integers(1, 300),
             m=st.integers(1, 300) if DEV == 'cuda' else st.integers(1, 40))


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@settings(max_examples=12)
@given(**SIZES, dtype=st.sampled_from([torch.float32, torch.bfloat16]), scale=st.floats(0.1, 4), seed=st.integers(0, 9999))
def test_statistic_and_gradient_match_float64_reference(n, m, dtype, scale, seed):
    g = torch.Generator().manual_seed(seed)
    y = (torch.randn(n, m, generator=g) * scale).to(dtype)
    y_ref = y.double().requires_grad_()
    ref = K.epps_pulley_reference(y_ref)
    grad_out = torch.randn(m, generator=g, dtype=torch.float64)
    (ref * grad_out).sum().backward()

    y_dev = y.to(DEV).requires_grad_()
    out = K.epps_pulley(y_dev)
    (out * grad_out.to(DEV).float()).sum().backward()
    assert out.dtype == torch.float32 and y_dev.grad.dtype == dtype
    # the kernel computes in fp32 from the (possibly bf16) input, so both are compared on the same input values
    assert rel_err(out.cpu(), ref) < 1e-4, (rel_err(out.cpu(), ref), n, m)
    tol = 1e-4 if dtype == torch.float32 else 1e-2  # bf16 gradients are rounded to 8 bits of mantissa
    assert rel_err(y_dev.grad.float().cpu(), y_ref.grad) < tol


@settings(max_examples=6)
@given(n=st.integers(2, 200), m=st.integers(1, 20), seed=st.integers(0, 9999))
def test_cf_sums_equal_reference_sums(n, m, seed):
    y = torch.randn(n, m, generator=torch.Generator().manual_seed(seed)) * 2
    t, _, _ = K.knots()
    c, s = K.cf_sums(y.to(DEV))  # 17 knots, dt = 3/16: knots()
    c_ref, s_ref = K.cf_sums_reference(y.double(), t.double())
    torch.testing.assert_close(c.cpu().double(), c_ref, rtol=1e-5, atol=1e-4 * n ** 0.5)
    torch.testing.assert_close(s.cpu().double(), s_ref, rtol=1e-5, atol=1e-4 * n ** 0.5)


@settings(max_examples=5)
@given(shard=st.integers(1, 150), m=st.integers(1, 16), seed=st.integers(0, 9999))
def test_two_shards_partial_sums_combine_to_the_full_batch(shard, m, seed):
    y = torch.randn(2 * shard, m, generator=torch.Generator().manual_seed(seed)).to(DEV)
    t, phi, w = K.knots(device=DEV)
    (c1, s1), (c2, s2) = K.cf_sums(y[:shard]), K.cf_sums(y[shard:])
    n = y.shape[0]
    combined = n * ((((c1 + c2) / n - phi) ** 2 + ((s1 + s2) / n) ** 2) @ w)
    torch.testing.assert_close(combined, K.epps_pulley(y), rtol=1e-5, atol=1e-5)


def test_forward_is_deterministic():
    y = torch.randn(700, 33, generator=torch.Generator().manual_seed(0)).to(DEV)
    assert torch.equal(K.epps_pulley(y), K.epps_pulley(y))


def test_reference_in_kernels_matches_jepa_definition():
    y = torch.randn(50, 7, dtype=torch.float64)
    torch.testing.assert_close(K.epps_pulley_reference(y), jepa.epps_pulley(y))


def test_other_knot_counts_and_spacings():
    """The knots are t_k = k*dt for any count and spacing (the kernel rotates by dt from knot to knot)."""
    y = torch.randn(90, 5, generator=torch.Generator().manual_seed(3))
    c, s = K.cf_sums(y.to(DEV), 9, 0.5)
    c_ref, s_ref = K.cf_sums_reference(y.double(), torch.arange(9, dtype=torch.float64) * 0.5)
    torch.testing.assert_close(c.cpu().double(), c_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(s.cpu().double(), s_ref, rtol=1e-5, atol=1e-3)


def test_explicit_backward_reference_matches_autograd():
    """The backward kernel's fallback (autograd does not record inside a custom operator) against autograd."""
    g = torch.Generator().manual_seed(0)
    y, g_cos, g_sin = torch.randn(40, 6, generator=g), torch.randn(6, 17, generator=g), torch.randn(6, 17, generator=g)
    t = K.knots(17, torch.float64)[0]
    y64 = y.double().requires_grad_()
    c, s = K.cf_sums_reference(y64, t)
    ((c * g_cos.double()).sum() + (s * g_sin.double()).sum()).backward()
    torch.testing.assert_close(K.cf_sums_backward_reference(y, t.float(), g_cos, g_sin).double(), y64.grad, rtol=1e-4, atol=1e-4)
