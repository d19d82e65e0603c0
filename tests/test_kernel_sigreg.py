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
    ref = jepa.epps_pulley(y_ref)
    grad_out = torch.randn(m, generator=g, dtype=torch.float64)
    (ref * grad_out).sum().backward()

    y_dev = y.to(DEV).requires_grad_()
    out = jepa.epps_pulley(y_dev, kernels=True)
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
    t, _, _ = jepa.ep_knots(dtype=torch.float64)
    c, s = K.cf_sums(y.to(DEV), 17, 3 / 16)  # jepa's knots
    c_ref, s_ref = jepa.cf_sums(y.double(), t)
    torch.testing.assert_close(c.cpu().double(), c_ref, rtol=1e-5, atol=1e-4 * n ** 0.5)
    torch.testing.assert_close(s.cpu().double(), s_ref, rtol=1e-5, atol=1e-4 * n ** 0.5)


@settings(max_examples=5)
@given(shard=st.integers(1, 150), m=st.integers(1, 16), seed=st.integers(0, 9999))
def test_two_shards_partial_sums_combine_to_the_full_batch(shard, m, seed):
    y = torch.randn(2 * shard, m, generator=torch.Generator().manual_seed(seed)).to(DEV)
    t, phi, w = jepa.ep_knots(device=DEV)
    (c1, s1), (c2, s2) = K.cf_sums(y[:shard], 17, 3 / 16), K.cf_sums(y[shard:], 17, 3 / 16)
    n = y.shape[0]
    combined = n * ((((c1 + c2) / n - phi) ** 2 + ((s1 + s2) / n) ** 2) @ w)
    torch.testing.assert_close(combined, jepa.epps_pulley(y, kernels=True), rtol=1e-5, atol=1e-5)


def test_forward_is_deterministic():
    y = torch.randn(700, 33, generator=torch.Generator().manual_seed(0)).to(DEV)
    assert torch.equal(jepa.epps_pulley(y, kernels=True), jepa.epps_pulley(y, kernels=True))


def test_other_knot_counts_and_spacings():
    """The knots are t_k = k*dt for any count and spacing (the kernel rotates by dt from knot to knot)."""
    y = torch.randn(90, 5, generator=torch.Generator().manual_seed(3))
    c, s = K.cf_sums(y.to(DEV), 9, 0.5)
    c_ref, s_ref = jepa.cf_sums(y.double(), torch.arange(9, dtype=torch.float64) * 0.5)
    torch.testing.assert_close(c.cpu().double(), c_ref, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(s.cpu().double(), s_ref, rtol=1e-5, atol=1e-3)


def test_backward_operators_pytorch_path_matches_autograd(monkeypatch):
    """After a failure the backward operator takes its written-out PyTorch path: equal to autograd of jepa.cf_sums."""
    import kernels
    monkeypatch.setitem(kernels.failed, 'sigreg', RuntimeError('test'))
    g = torch.Generator().manual_seed(0)
    y, g_cos, g_sin = torch.randn(40, 6, generator=g), torch.randn(6, 17, generator=g), torch.randn(6, 17, generator=g)
    t = jepa.ep_knots(17, torch.float64)[0]
    y64 = y.double().requires_grad_()
    c, s = jepa.cf_sums(y64, t)
    ((c * g_cos.double()).sum() + (s * g_sin.double()).sum()).backward()
    torch.testing.assert_close(K.cf_sums_bwd(y, g_cos, g_sin, 3 / 16).double(), y64.grad, rtol=1e-4, atol=1e-4)
