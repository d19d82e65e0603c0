"""kernels/attention.py against a float64 reference: compiled on a GPU when there is one, otherwise in Triton's
interpreter on CPU tensors (TRITON_INTERPRET=1, set in conftest.py before triton is imported)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

import jepa

triton = pytest.importorskip('triton', reason='triton is not installed (make install adds it where it installs)')
from kernels import attention as K  # noqa: E402

DEV = 'cuda' if torch.cuda.is_available() else 'cpu'
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 5e-3}  # relative error vs float64


def rel_err(a, b):
    """Relative error; reference norms below 0.1 count as 0.1, because at N = 1 the softmax is constant and dq, dk
    are exactly zero in float64 but rounding noise (~1e-7) in fp32. Non-degenerate cases have norms >> 1."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(0.1)).item()


def grid_positions(B, N, per_batch, seed):
    """(column, row) positions on a grid big enough for N tokens; per batch element a random subset when
    per_batch (like a gathered I-JEPA context), else one shared (N, 2) table."""
    side = int(N ** 0.5) + 2
    g = torch.Generator().manual_seed(seed)
    if per_batch:
        idx = torch.stack([torch.randperm(side * side, generator=g)[:N].sort().values for _ in range(B)])
    else:
        idx = torch.arange(N)
    return torch.stack([idx % side, idx // side], -1)


def check(B, H, N, d, dtype, use_pos, per_batch=False, seed=0, seg=None):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, N, d, generator=g) for _ in range(3))
    do = torch.randn(B, H, N, d, generator=g)
    pos = grid_positions(B, N, per_batch, seed) if use_pos else None
    ref_in = [x.to(dtype).double().requires_grad_() for x in (q, k, v)]
    ref = K.attention_reference(*ref_in, pos, seg=seg)
    ref.backward(do.double())
    dev_in = [x.to(dtype).to(DEV).requires_grad_() for x in (q, k, v)]
    out = K.attention(*dev_in, None if pos is None else pos.to(DEV), seg=None if seg is None else seg.to(DEV))
    out.backward(do.to(dtype).to(DEV))
    assert out.dtype == dtype and out.shape == (B, H, N, d)
    errs = [rel_err(out.cpu(), ref)] + [rel_err(a.grad.cpu(), b.grad) for a, b in zip(dev_in, ref_in)]
    assert max(errs) < TOL[dtype], dict(zip(('out', 'dq', 'dk', 'dv'), errs))


@pytest.mark.parametrize('N', [1, 7, 63, 64, 65, 130])
def test_lengths_around_block_boundaries(N):
    check(2, 2, N, 16, torch.float32, use_pos=False, seed=N)


@pytest.mark.parametrize('d', [16, 32, 64, 128])
def test_head_dims_with_fused_rope(d):
    check(1, 2, 37, d, torch.float32, use_pos=True, seed=d)


@settings(max_examples=6)
@given(B=st.integers(1, 2), H=st.integers(1, 3), N=st.integers(1, 80), d=st.sampled_from([16, 32, 64]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), use_pos=st.booleans(), per_batch=st.booleans(),
       seed=st.integers(0, 9999))
def test_attention_matches_reference(B, H, N, d, dtype, use_pos, per_batch, seed):
    check(B, H, N, d, dtype, use_pos, per_batch, seed)


def predictor_segments(Nc, nb, Nt):
    """The I-JEPA predictor's layout: Nc context tokens (segment 0), then nb target blocks of Nt (segments 1..nb)."""
    return torch.arange(nb + 1).repeat_interleave(torch.tensor([Nc] + [Nt] * nb))


@settings(max_examples=6)
@given(Nc=st.integers(0, 30), nb=st.integers(1, 4), Nt=st.integers(1, 12), d=st.sampled_from([16, 32]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 9999))
def test_segments_match_reference(Nc, nb, Nt, d, dtype, seed):
    """Segment visibility (keys of segment 0 seen by all, others by their own segment) in the forward and both
    backward kernels, with per-sequence RoPE positions as in the predictor."""
    seg = predictor_segments(Nc, nb, Nt)
    check(2, 2, len(seg), d, dtype, use_pos=True, per_batch=True, seed=seed, seg=seg)


def test_segments_where_whole_key_blocks_are_unseen():
    """No segment 0 and two segments of 70 and 60 tokens: the queries of the second see nothing in the first key
    block (the forward must not take a softmax over no keys), and a mixed order of segments."""
    check(1, 2, 130, 16, torch.float32, use_pos=True, seg=torch.tensor([1] * 70 + [2] * 60), seed=1)
    check(1, 2, 50, 16, torch.float32, use_pos=False, seg=torch.randint(0, 4, (50,), generator=torch.Generator().manual_seed(2)))


def test_long_sequences_loop_over_key_blocks():
    check(1, 1, 300, 32, torch.float32, use_pos=True, per_batch=True, seed=3)


def test_fused_rope_equals_rope_then_attention():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 20, 32, generator=g).to(DEV) for _ in range(3))
    pos = grid_positions(2, 20, True, 0).to(DEV)
    fused = K.attention(q, k, v, pos)
    separate = K.attention(jepa.rope(q, pos), jepa.rope(k, pos), v)
    torch.testing.assert_close(fused, separate, rtol=1e-4, atol=1e-5)


def rope_pairwise(x, pos, theta=100.0):
    """2-D axial RoPE written pair by pair (README "Math"), independent of jepa.rope's complex form."""
    d = x.shape[-1]
    w = theta ** (-4 * torch.arange(d // 4, dtype=torch.float64) / d)  # (d/4,)
    phi = torch.cat([pos[..., :1] * w, pos[..., 1:] * w], -1).unsqueeze(1)  # (B, 1, N, d/2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * phi.cos() - x2 * phi.sin(), x1 * phi.sin() + x2 * phi.cos()], -1).flatten(-2)


def test_pairwise_rope_equals_jepa_rope():
    x = torch.randn(2, 3, 10, 16, dtype=torch.float64)
    pos = grid_positions(2, 10, True, 1)
    torch.testing.assert_close(rope_pairwise(x, pos.double()), jepa.rope(x, pos))


@pytest.mark.parametrize('d', [4, 8, 12, 24, 48, 96])
def test_head_dims_between_the_tile_widths(d):
    """A head dim that is no tile width runs the next one (d = 24 on 32-wide tiles) with the extra channels
    masked: values, gradients and the RoPE frequencies are those of d, with and without segments."""
    check(2, 2, 37, d, torch.float32, use_pos=True, per_batch=True, seed=d)
    check(1, 2, 29, d, torch.float32, use_pos=True, per_batch=True, seed=d + 1, seg=predictor_segments(9, 4, 5))


def test_bad_shapes_are_rejected():
    for d in (6, 256):  # RoPE needs d % 4 == 0; the widest tile is 128
        q = torch.randn(1, 1, 4, d, device=DEV)
        with pytest.raises(ValueError, match='head dim'):
            K.attention(q, q, q)
    q = torch.randn(1, 1, 4, 16, device=DEV)
    with pytest.raises(ValueError, match='pos must be'):
        K.attention(q, q, q, torch.zeros(5, 2, dtype=torch.long, device=DEV))
    with pytest.raises(ValueError, match='seg must be'):
        K.attention(q, q, q, seg=torch.zeros(5, dtype=torch.long, device=DEV))


def test_launch_grids_keep_batch_times_heads_on_axis_0(monkeypatch):
    """CUDA caps grid axes 1 and 2 at 65,535 programs; B*H = 100,000 sequences (LeJEPA at batch 8,192 with two
    views and 4 heads on 32-px images is more) must sit on axis 0, in the forward and both backward launches."""
    grids = {}

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            grids[self.name] = grid
            return lambda *args, **meta: None  # record, do not run: 100,000 sequences in the interpreter is slow
    for name in ('_attn_fwd', '_attn_bwd_dkdv', '_attn_bwd_dq'):
        monkeypatch.setattr(K, name, Recorder(name))
    B, H, N, d = 50_000, 2, 3, 16
    q, k, v = (torch.zeros(B, H, N, d, device=DEV, requires_grad=True) for _ in range(3))
    K.attention(q, k, v, torch.zeros(N, 2, dtype=torch.long, device=DEV)).sum().backward()
    assert set(grids) == {'_attn_fwd', '_attn_bwd_dkdv', '_attn_bwd_dq'}
    for name, grid in grids.items():
        assert grid[0] == B * H and all(n <= 65_535 for n in grid[1:]), (name, grid)


def test_backward_operators_pytorch_path_matches_autograd(monkeypatch):
    """After a failure the backward operator takes its written-out PyTorch path: equal to autograd of jepa.attention,
    with RoPE positions and segments, in float64."""
    import kernels
    monkeypatch.setitem(kernels.failed, 'attention', RuntimeError('test'))
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(2, 2, 11, 16, generator=g, dtype=torch.float64) for _ in range(4))
    pos, seg = grid_positions(2, 11, True, 0), predictor_segments(5, 2, 3)
    x = [t.clone().requires_grad_() for t in (q, k, v)]
    jepa.attention(*x, pos, seg).backward(do)
    o, lse = K.attention_fwd(q, k, v, pos, seg)
    for a, b in zip(K.attention_bwd(q, k, v, pos, seg, o, lse, do), x):
        torch.testing.assert_close(a, b.grad, rtol=1e-10, atol=1e-12)
