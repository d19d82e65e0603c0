"""
Fused Epps-Pulley statistics for SIGReg (LeJEPA), forward and backward, in O(N*M) memory.

For projections y (N, M) and knots t_k = k*dt, k = 0..T-1, SIGReg needs per slice m the sums over the batch
    cos_sum[m, k] = sum_n cos(t_k y[n, m]),      sin_sum[m, k] = sum_n sin(t_k y[n, m])
and, in backward, given their gradients gC, gS (M, T),
    dy[n, m] = sum_k t_k (-sin(t_k y[n, m]) gC[m, k] + cos(t_k y[n, m]) gS[m, k]).
The naive form materialises several (N, M, T) tensors; here no tensor larger than y is ever written:
  * forward: each program owns BLOCK_M slices and a contiguous range of rows; it keeps all T sums in registers.
    Because the knots are evenly spaced, one sincos of dt*y gives every knot by complex rotation
    (c_(k+1), s_(k+1)) = (c_k c_1 - s_k s_1, s_k c_1 + c_k s_1). Row ranges write separate partial sums that
    are added in a fixed order afterwards: deterministic, no float atomics.
  * backward: one pass over y, the same rotation, dy accumulated per element.
All arithmetic is fp32 whatever the input dtype. The statistic itself (an (M, T) epilogue) is plain torch
(jepa.epps_pulley).

Runs compiled on CUDA and, unchanged, in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1), which is
how CI tests it. `python -c "import kernels.sigreg as k; k.bench()"` (make bench) times it on a GPU.
"""
from typing import Tuple

import torch
import triton
import triton.language as tl

import jepa
from kernels import has_failed, run_or_fall_back, sincos

# The specification is jepa.cf_sums (and, around it, jepa.epps_pulley and its knots): the kernels are tested
# against it and fall back to it; its gradient, written out, is the backward's fallback.


def _knots_at(num_knots, dt, device):
    return torch.arange(num_knots, dtype=torch.float32, device=device) * dt


def cf_sums_backward_reference(y, g_cos, g_sin, dt):
    """dy of jepa.cf_sums for the output gradients g_cos, g_sin (M, T), written out: the backward operator's PyTorch
    path, where autograd cannot help (it does not record inside a custom operator). fp32, returned in y's dtype."""
    t = _knots_at(g_cos.shape[1], dt, y.device)
    ty = y.float().unsqueeze(-1) * t  # (N, M, T)
    return ((ty.cos() * g_sin - ty.sin() * g_cos) * t).sum(-1).to(y.dtype)

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _cf_sums_fwd(Y, PART_C, PART_S, N, M, stride_n, rows_per_split, dt,
                 T: tl.constexpr, T_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m, pid_s = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    kk = tl.arange(0, T_PAD)
    acc_c = tl.zeros([BLOCK_M, T_PAD], dtype=tl.float32)
    acc_s = tl.zeros([BLOCK_M, T_PAD], dtype=tl.float32)
    n_start = pid_s * rows_per_split
    n_end = tl.minimum(n_start + rows_per_split, N)
    for n0 in range(n_start, n_end, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask = (offs_n[:, None] < n_end) & (offs_m[None, :] < M)
        y = tl.load(Y + offs_n[:, None] * stride_n + offs_m[None, :], mask=mask, other=0.0).to(tl.float32)
        s1, c1 = sincos(y * dt)  # the one sincos: knot 1
        c = tl.where(mask, 1.0, 0.0)  # knot 0: cos 0 = 1 on real rows, 0 on padding (and stays 0)
        s = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
        for k in tl.static_range(T):
            acc_c += tl.where(kk[None, :] == k, tl.sum(c, 0)[:, None], 0.0)
            acc_s += tl.where(kk[None, :] == k, tl.sum(s, 0)[:, None], 0.0)
            c, s = c * c1 - s * s1, s * c1 + c * s1  # rotate to knot k + 1
    out = pid_s * M * T + offs_m[:, None] * T + kk[None, :]
    keep = (offs_m[:, None] < M) & (kk[None, :] < T)
    tl.store(PART_C + out, acc_c, mask=keep)
    tl.store(PART_S + out, acc_s, mask=keep)


@triton.jit
def _cf_sums_bwd(Y, GC, GS, DY, N, M, stride_n, dt,
                 T: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (offs_n[:, None] < N) & (offs_m[None, :] < M)
    y = tl.load(Y + offs_n[:, None] * stride_n + offs_m[None, :], mask=mask, other=0.0).to(tl.float32)
    s1, c1 = sincos(y * dt)
    c = tl.full([BLOCK_N, BLOCK_M], 1.0, dtype=tl.float32)
    s = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    dy = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for k in tl.static_range(T):
        gc = tl.load(GC + offs_m * T + k, mask=offs_m < M, other=0.0)  # (BLOCK_M,)
        gs = tl.load(GS + offs_m * T + k, mask=offs_m < M, other=0.0)
        dy += (k * dt) * (c * gs[None, :] - s * gc[None, :])  # d/dy cos(ty) = -t sin(ty), d/dy sin(ty) = t cos(ty)
        c, s = c * c1 - s * s1, s * c1 + c * s1
    tl.store(DY + offs_n[:, None] * stride_n + offs_m[None, :], dy, mask=mask)

# ----------------------------------------------------------------------------- custom operators (attention.py says why)


# Rows and slices per program (4 warps). 16 slices keep both kernels spill-free for fp32 and bf16 on sm_80 and
# sm_90 under Triton 3.8 and 3.9 (80-126 registers, compile_check.py); 32 slices spilled 24 B on sm_80 under 3.8.
BLOCK_N, BLOCK_M = 64, 16


def _num_splits(N, M, device):
    """Row ranges per slice block: enough programs to fill the GPU (about 4 per SM), each >= 4 row blocks."""
    blocks_m = triton.cdiv(M, BLOCK_M)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == 'cuda' else 4
    return max(1, min(triton.cdiv(N, 4 * BLOCK_N), triton.cdiv(4 * sms, blocks_m)))


@torch.library.custom_op('nano_jepa::cf_sums_fwd', mutates_args=())
def cf_sums_fwd(y: torch.Tensor, num_knots: int, dt: float) -> Tuple[torch.Tensor, torch.Tensor]:
    y = y.contiguous()
    config = lambda: f"forward, {y.dtype}, (N, M) = {tuple(y.shape)}"  # noqa: E731
    return run_or_fall_back('sigreg', config, lambda: _forward(y, num_knots, dt),
                            lambda: jepa.cf_sums(y.float(), _knots_at(num_knots, dt, y.device)))


@cf_sums_fwd.register_fake
def _(y, num_knots, dt):
    return y.new_empty(y.shape[1], num_knots, dtype=torch.float32), y.new_empty(y.shape[1], num_knots, dtype=torch.float32)


@torch.library.custom_op('nano_jepa::cf_sums_bwd', mutates_args=())
def cf_sums_bwd(y: torch.Tensor, g_cos: torch.Tensor, g_sin: torch.Tensor, dt: float) -> torch.Tensor:
    config = lambda: f"backward, {y.dtype}, (N, M) = {tuple(y.shape)}"  # noqa: E731
    return run_or_fall_back('sigreg', config, lambda: _backward(y, g_cos, g_sin, dt),
                            lambda: cf_sums_backward_reference(y, g_cos, g_sin, dt))


@cf_sums_bwd.register_fake
def _(y, g_cos, g_sin, dt):
    return torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(inputs[0].contiguous())
    ctx.dt = inputs[2]


def _cf_sums_backward(ctx, g_cos, g_sin):
    y, = ctx.saved_tensors
    return cf_sums_bwd(y, g_cos.float().contiguous(), g_sin.float().contiguous(), ctx.dt), None, None


cf_sums_fwd.register_autograd(_cf_sums_backward, setup_context=_setup_context)


def _forward(y, T, dt):
    N, M = y.shape
    splits = _num_splits(N, M, y.device)
    part_c = torch.empty(splits, M, T, device=y.device, dtype=torch.float32)
    part_s = torch.empty_like(part_c)
    rows = triton.cdiv(N, splits)
    _cf_sums_fwd[(triton.cdiv(M, BLOCK_M), splits)](y, part_c, part_s, N, M, y.stride(0), rows, dt, T=T,
                                                      T_PAD=triton.next_power_of_2(T), BLOCK_N=BLOCK_N, BLOCK_M=BLOCK_M,
                                                      enable_fp_fusion=True)  # stated, not Triton's default
    return part_c.sum(0), part_s.sum(0)  # fixed-order reduction of the partial sums: deterministic


def _backward(y, g_cos, g_sin, dt):
    N, M = y.shape
    dy = torch.empty(N, M, device=y.device, dtype=torch.float32)
    grid = (triton.cdiv(N, BLOCK_N), triton.cdiv(M, BLOCK_M))  # batch blocks on axis 0: no 65,535 limit there
    _cf_sums_bwd[grid](y, g_cos, g_sin, dy, N, M, y.stride(0), dt, T=g_cos.shape[1], BLOCK_N=BLOCK_N, BLOCK_M=BLOCK_M,
                       enable_fp_fusion=True)
    return dy.to(y.dtype)


def cf_sums(y, num_knots, dt):
    """Sums over the batch of cos(t_k y) and sin(t_k y) at the knots t_k = k*dt, k < num_knots: y (N, M) any
    float dtype -> (M, num_knots) fp32 each; differentiable in y. Partial sums of row shards add up to the
    full-batch sums. Once the kernels have failed (the start-up self-test, or a Triton error in a call, which
    prints one warning and computes that call in PyTorch) this is jepa.cf_sums."""
    if has_failed('sigreg'):
        return jepa.cf_sums(y.float(), _knots_at(num_knots, dt, y.device))
    # the kernels see fp32 only (they compute in fp32 anyway): one compiled variant per shape, and no 16-bit load,
    # which spilled 16 B on sm_86/89 under triton 3.8; autograd returns the gradient in y's dtype
    return cf_sums_fwd(y.float(), int(num_knots), float(dt))


def self_test(device, shapes=((300, 20),)):
    """The sums and their gradient for each (N, M) in shapes (the run's own: Triton specialises on N and M) in
    fp32, through the kernels against the PyTorch reference in fp64; raises on any error or a mismatch."""
    T, dt = jepa.NUM_KNOTS, jepa.T_MAX / (jepa.NUM_KNOTS - 1)
    for N, M in shapes:
        y = torch.randn(N, M, generator=torch.Generator().manual_seed(N + M))
        y_dev = y.to(device, copy=True)
        cos_sum, sin_sum = cf_sums_fwd(y_dev, T, dt)
        g_cos, g_sin = (torch.randn(M, T, generator=torch.Generator().manual_seed(i)) for i in (1, 2))
        dy = cf_sums_bwd(y_dev, g_cos.to(device), g_sin.to(device), dt)
        y_ref = y.double().requires_grad_()
        expected = jepa.cf_sums(y_ref, jepa.ep_knots(T, torch.float64)[0])
        ((expected[0] * g_cos.double()).sum() + (expected[1] * g_sin.double()).sum()).backward()
        for name, a, b in zip(('cos sums', 'sin sums', 'gradient'), (cos_sum, sin_sum, dy), (*expected, y_ref.grad)):
            err = ((a.detach().double().cpu() - b.detach()).norm() / b.detach().norm()).item()
            if not err < 1e-4:  # a NaN fails too
                raise AssertionError(f"{name} differ from the reference by {err:.2g} (relative) at (N, M) = {(N, M)}")

# ----------------------------------------------------------------------------- benchmark


def bench(sizes=((1024, 256), (1024, 1024), (4096, 256), (4096, 1024), (16384, 256), (16384, 1024))):
    """Forward and forward+backward time (median ms) and peak extra memory of the fused kernels vs the naive eager
    form and torch.compile of it; relative error of the fused statistic vs float64. Prints a table."""
    if not torch.cuda.is_available():
        print("kernels/sigreg.py bench: needs a CUDA GPU (the interpreter is for correctness, not speed)")
        return
    from triton.testing import do_bench
    import kernels  # the self-test first: a kernel that fails it is timed as what runs instead, and named so
    kernels.self_test(torch.device('cuda'), torch.bfloat16, [], sizes)
    fused = 'fused' if 'sigreg' not in kernels.failed else 'FELL BACK'
    naive, fast = jepa.epps_pulley, lambda y: jepa.epps_pulley(y, kernels=True)  # noqa: E731
    compiled = torch.compile(naive)
    print(f"SIGReg Epps-Pulley, T = {jepa.NUM_KNOTS}, {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"{'N':>6} {'M':>5} | {'impl':>8} | {'fwd ms':>8} | {'fwd+bwd ms':>10} | {'peak MiB':>8} | {'rel err':>8}")
    for N, M in sizes:
        y0 = torch.randn(N, M, device='cuda')
        ref = naive(y0.double())
        for name, fn in (('naive', naive), ('compiled', compiled), (fused, fast)):
            y = y0.clone().requires_grad_()
            fn(y).sum().backward()  # warm-up and compile off the clock
            fwd = do_bench(lambda: fn(y), return_mode='median')
            both = do_bench(lambda: fn(y).sum().backward(), return_mode='median', grad_to_none=[y])
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn(y).sum().backward()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            err = ((fn(y0).double() - ref).norm() / ref.norm()).item()
            print(f"{N:>6} {M:>5} | {name:>8} | {fwd:8.3f} | {both:10.3f} | {peak:8.1f} | {err:8.1e}", flush=True)


if __name__ == '__main__':
    bench()
