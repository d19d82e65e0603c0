"""
Fused attention for ViT shapes: non-causal, any sequence length, forward and backward, 2-D RoPE inside.

    attention(q, k, v, pos=None, seg=None) -> out   q, k, v (B, H, N, d); pos (B, N, 2) or (N, 2) grid (column,
                                                    row); seg (N,) segment ids: who sees whom (the I-JEPA predictor)

Why not the public kernels: the Triton tutorial's backward is causal-only and wants N % 128 == 0; FlashAttention
is slower than SDPA below ~150 tokens. Our sequences are 64 patch tokens (8x8 grid) or a gathered subset of them,
and every layer rotates q and k by 2-D axial RoPE first. Here the rotation happens in registers as each q/k block
is loaded (a gathered context token just carries its grid position), and the backward rotates dq and dk back.

Algorithm (FlashAttention-2): forward streams key/value blocks with an online softmax and saves the log-sum-exp
per query; backward recomputes the probabilities from it, one kernel for dk, dv (a program per key block) and
one for dq (a program per query block), so nothing is accumulated with atomics. A block holds up to 32-128 tokens
(the LAUNCH table below: per head dim, from what the compiler reports in compile_check.py), so a 64-token ViT
sequence is one block in the forward. fp32, fp16 and bf16 inputs; accumulation and softmax in fp32 (fp32 inputs
use exact fp32 dots).

Segments (seg, optional): a key in segment 0 is seen by every query, a key in segment i > 0 only by the queries
of segment i. The I-JEPA predictor puts the context in segment 0 and target block i in segment i, so one
sequence predicts every block. The kernels read the two ids of each score and mask it; no (N, N) mask exists.

RoPE (README "Math"): head dim d, channel pair m = (2m, 2m+1) rotates by phi_m = column * w_m for m < d/4 and
row * w_(m - d/4) otherwise, w_j = theta^(-4j/d), theta = 100.

Runs compiled on CUDA and, unchanged, in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1) for tests.
`python -c "import kernels.attention as k; k.bench()"` (make bench) times it on a GPU.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

import jepa
from kernels import has_failed, run_or_fall_back, sincos, INTERPRET

# The specification is jepa.attention without kernels (RoPE, then SDPA over the visible keys): the kernels are
# tested against it and fall back to it; its gradient, written out, is the backward's fallback.


def attention_reference(q, k, v, pos=None, seg=None):
    """jepa.attention's PyTorch path, RoPE only when pos is given (the benchmark times attention without it)."""
    if pos is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=None if seg is None else jepa.visible(seg))
    return jepa.attention(q, k, v, pos, seg)


def attention_backward_reference(q, k, v, pos, seg, do):
    """dq, dk, dv of attention_reference for the output gradient do, written out (FlashAttention-2's equations):
    the backward operator's PyTorch path, where autograd cannot help (it does not record inside a custom operator).
    Computed in fp32 (fp64 for fp64 input), returned in q's dtype."""
    dtype, dt = q.dtype, torch.promote_types(q.dtype, torch.float32)
    q, k, v, do = q.to(dt), k.to(dt), v.to(dt), do.to(dt)
    scale = 1 / math.sqrt(q.shape[-1])
    qr, kr = (q, k) if pos is None else (jepa.rope(q, pos), jepa.rope(k, pos))
    s = qr @ kr.transpose(-1, -2) * scale  # (B, H, N, N)
    if seg is not None:
        s = s.masked_fill(~jepa.visible(seg), -math.inf)
    p = s.softmax(-1)
    dv = p.transpose(-1, -2) @ do
    dp = do @ v.transpose(-1, -2)  # (B, H, N, N)
    ds = p * (dp - (dp * p).sum(-1, keepdim=True)) * scale  # through the softmax and the scale
    dq, dk = ds @ kr, ds.transpose(-1, -2) @ qr  # in the rotated basis
    if pos is not None:  # rotated back: the rotation by -phi is the inverse (and the transpose) of the one by phi
        dq, dk = jepa.rope(dq, -pos), jepa.rope(dk, -pos)
    return dq.to(dtype), dk.to(dtype), dv.to(dtype)

# ----------------------------------------------------------------------------- kernels


@triton.jit
def _tile(X, offs, mask, stride_n, D: tl.constexpr, DP: tl.constexpr):
    """Pointers and mask of rows offs of one (N, D) sequence, as a [BLOCK, DP] tile. DP is D rounded up to a
    power of two (tl.arange's sizes): channels past D are masked, read as 0 and never written."""
    ch = tl.arange(0, DP)
    ptrs = X + offs[:, None] * stride_n + ch[None, :]
    if DP == D:
        return ptrs, mask[:, None]
    else:
        return ptrs, mask[:, None] & (ch < D)[None, :]


@triton.jit
def _rope(x, P, offs, mask, stride_pn, log2_theta, D: tl.constexpr, DP: tl.constexpr, sign: tl.constexpr):
    """Rotate rows of x [BLOCK, DP] (fp32) by their RoPE angles for head dim D (sign = -1 rotates back). P points
    at the positions of this sequence: column at P + n*stride_pn, row at P + n*stride_pn + 1. Padding pairs
    (m >= D/2) hold zeros and stay zero."""
    col = tl.load(P + offs * stride_pn, mask=mask, other=0).to(tl.float32)
    row = tl.load(P + offs * stride_pn + 1, mask=mask, other=0).to(tl.float32)
    m = tl.arange(0, DP // 2)  # channel pair index
    j = tl.where(m < D // 4, m, m - D // 4).to(tl.float32)
    w = tl.exp2(-(4.0 * j / D) * log2_theta)  # theta^(-4j/d)
    phi = tl.where(m[None, :] < D // 4, col[:, None], row[:, None]) * w[None, :]  # [BLOCK, DP/2]
    sin, cos = sincos(phi)
    sin = sign * sin
    x1, x2 = tl.split(tl.reshape(x, [x.shape[0], DP // 2, 2]))  # even and odd channels, [BLOCK, DP/2] each
    return tl.reshape(tl.join(x1 * cos - x2 * sin, x1 * sin + x2 * cos), [x.shape[0], DP])


@triton.jit
def _load_block(X, P, offs, mask, stride_n, stride_pn, log2_theta, D: tl.constexpr, DP: tl.constexpr,
                HAS_POS: tl.constexpr):
    """Rows offs of one (N, D) sequence as a [BLOCK, DP] fp32 tile, RoPE-rotated when positions are given."""
    ptrs, m = _tile(X, offs, mask, stride_n, D, DP)
    x = tl.load(ptrs, mask=m, other=0.0).to(tl.float32)
    if HAS_POS:
        x = _rope(x, P, offs, mask, stride_pn, log2_theta, D, DP, 1.0)
    return x


@triton.jit
def _seen(S, offs_m, offs_n, N, HAS_SEG: tl.constexpr):
    """[BLOCK_M, BLOCK_N] which scores count: keys inside the sequence and, with segments, of segment 0 or of
    the query's own segment. Padding queries past N (id -1) see every key, so no row's softmax is empty."""
    ok = (offs_n < N)[None, :]
    if HAS_SEG:
        seg_q = tl.load(S + offs_m, mask=offs_m < N, other=-1)[:, None]
        seg_k = tl.load(S + offs_n, mask=offs_n < N, other=-1)[None, :]
        ok = ok & ((seg_k == 0) | (seg_k == seg_q) | (seg_q == -1))
    return ok


@triton.jit(do_not_specialize=['N', 'sp_b'])  # one compile for every sequence length
def _attn_fwd(Q, K, V, P, S, O, LSE, N, H, sq_b, sq_h, sq_n, so_b, so_h, so_n, sp_b, sp_n, qk_scale, log2_theta,
              D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_POS: tl.constexpr,
              HAS_SEG: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    bh, pid_m = tl.program_id(0), tl.program_id(1)  # B*H on axis 0: axes 1 and 2 stop at 65,535 programs
    b, h = bh // H, bh % H
    Q, K, V, P = Q + b * sq_b + h * sq_h, K + b * sq_b + h * sq_h, V + b * sq_b + h * sq_h, P + b * sp_b
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    q = _load_block(Q, P, offs_m, offs_m < N, sq_n, sp_n, log2_theta, D, DP, HAS_POS)
    q = (q * qk_scale).to(DOT)  # softmax scale and log2(e) folded in: exp2 below
    m_i = tl.full([BLOCK_M], float('-inf'), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DP], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _load_block(K, P, offs_n, offs_n < N, sq_n, sp_n, log2_theta, D, DP, HAS_POS).to(DOT)
        v_ptrs, v_mask = _tile(V, offs_n, offs_n < N, sq_n, D, DP)
        v = tl.load(v_ptrs, mask=v_mask, other=0.0).to(DOT)
        s = tl.dot(q, tl.trans(k), input_precision=PREC)  # [BLOCK_M, BLOCK_N], log2 units
        s = tl.where(_seen(S, offs_m, offs_n, N, HAS_SEG), s, float('-inf'))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float('-inf'), 0.0, m_new)  # a row that has seen no key yet (segments): p = 0
        p = tl.exp2(s - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT), v, input_precision=PREC)
        m_i = m_new
    acc = acc / l_i[:, None]
    O = O + b * so_b + h * so_h
    o_ptrs, o_mask = _tile(O, offs_m, offs_m < N, so_n, D, DP)
    tl.store(o_ptrs, acc.to(O.dtype.element_ty), mask=o_mask)
    tl.store(LSE + bh * N + offs_m, m_i + tl.log2(l_i), mask=offs_m < N)  # log2-sum-exp2 of the scaled scores


@triton.jit(do_not_specialize=['N', 'sp_b'])  # one compile for every sequence length
def _attn_bwd_dkdv(Q, K, V, P, S, DO, LSE, DELTA, DK, DV, N, H, sq_b, sq_h, sq_n, sp_b, sp_n, qk_scale, sm_scale,
                   log2_theta, D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HAS_POS: tl.constexpr, HAS_SEG: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """One program per key block: dv = P^T dO, dk = dS^T q * scale, over every query block."""
    bh, pid_n = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    off = b * sq_b + h * sq_h
    Q, K, V, DO, P = Q + off, K + off, V + off, DO + off, P + b * sp_b
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    k = _load_block(K, P, offs_n, mask_n, sq_n, sp_n, log2_theta, D, DP, HAS_POS).to(DOT)
    v_ptrs, v_mask = _tile(V, offs_n, mask_n, sq_n, D, DP)
    v = tl.load(v_ptrs, mask=v_mask, other=0.0).to(DOT)
    dk = tl.zeros([BLOCK_N, DP], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, DP], dtype=tl.float32)
    for start in range(0, N, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        mask_m = offs_m < N
        q = _load_block(Q, P, offs_m, mask_m, sq_n, sp_n, log2_theta, D, DP, HAS_POS).to(DOT)
        do_ptrs, do_mask = _tile(DO, offs_m, mask_m, sq_n, D, DP)
        do = tl.load(do_ptrs, mask=do_mask, other=0.0).to(DOT)
        lse = tl.load(LSE + bh * N + offs_m, mask=mask_m, other=0.0)
        delta = tl.load(DELTA + bh * N + offs_m, mask=mask_m, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale  # [BLOCK_M, BLOCK_N]
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_m[:, None] & _seen(S, offs_m, offs_n, N, HAS_SEG), p, 0.0)
        dv += tl.dot(tl.trans(p.to(DOT)), do, input_precision=PREC)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])  # gradient of the (unscaled) scores
        dk += tl.dot(tl.trans(ds.to(DOT)), q, input_precision=PREC)
    dk = dk * sm_scale
    if HAS_POS:  # dk was taken in the rotated basis: rotate it back
        dk = _rope(dk, P, offs_n, mask_n, sp_n, log2_theta, D, DP, -1.0)
    ptrs, mask = _tile(DK + off, offs_n, mask_n, sq_n, D, DP)
    tl.store(ptrs, dk.to(DK.dtype.element_ty), mask=mask)
    ptrs, mask = _tile(DV + off, offs_n, mask_n, sq_n, D, DP)
    tl.store(ptrs, dv.to(DV.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=['N', 'sp_b'])  # one compile for every sequence length
def _attn_bwd_dq(Q, K, V, P, S, DO, LSE, DELTA, DQ, N, H, sq_b, sq_h, sq_n, sp_b, sp_n, qk_scale, sm_scale,
                 log2_theta, D: tl.constexpr, DP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_POS: tl.constexpr, HAS_SEG: tl.constexpr, DOT: tl.constexpr, PREC: tl.constexpr):
    """One program per query block: dq = dS k * scale, over every key block."""
    bh, pid_m = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    off = b * sq_b + h * sq_h
    Q, K, V, DO, P = Q + off, K + off, V + off, DO + off, P + b * sp_b
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < N
    q = _load_block(Q, P, offs_m, mask_m, sq_n, sp_n, log2_theta, D, DP, HAS_POS).to(DOT)
    do_ptrs, do_mask = _tile(DO, offs_m, mask_m, sq_n, D, DP)
    do = tl.load(do_ptrs, mask=do_mask, other=0.0).to(DOT)
    lse = tl.load(LSE + bh * N + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(DELTA + bh * N + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, DP], dtype=tl.float32)
    for start in range(0, N, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        mask_n = offs_n < N
        k = _load_block(K, P, offs_n, mask_n, sq_n, sp_n, log2_theta, D, DP, HAS_POS).to(DOT)
        v_ptrs, v_mask = _tile(V, offs_n, mask_n, sq_n, D, DP)
        v = tl.load(v_ptrs, mask=v_mask, other=0.0).to(DOT)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        p = tl.exp2(s - lse[:, None])
        p = tl.where(mask_m[:, None] & _seen(S, offs_m, offs_n, N, HAS_SEG), p, 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(DOT), k, input_precision=PREC)
    dq = dq * sm_scale
    if HAS_POS:
        dq = _rope(dq, P, offs_m, mask_m, sp_n, log2_theta, D, DP, -1.0)
    ptrs, mask = _tile(DQ + off, offs_m, mask_m, sq_n, D, DP)
    tl.store(ptrs, dq.to(DQ.dtype.element_ty), mask=mask)

# ----------------------------------------------------------------------------- custom operators

LOG2E = 1.4426950408889634


# Launch parameters per padded head dim DP (the head dim d rounded up to a power of two, at least 16: d = 24 runs
# the DP = 32 kernels with 8 channels masked), read off kernels/compile_check.py (registers, spills and shared
# memory of every launch compiled for each target): the largest block of tokens a program holds and its warps.
# One block holds a sequence up to that size; longer ones loop over blocks. The backward keeps more tiles
# live (q, k, v, dO, dq or dk and dv), so its blocks are smaller or its warps more; fp32 tiles are twice the
# bytes, so fp32 halves the blocks.
LAUNCH = {  # DP: (forward block, forward warps, backward block, backward warps)
    16: (128, 4, 64, 4),
    32: (64, 4, 64, 4),
    64: (64, 4, 32, 4),
    128: (64, 8, 32, 8),
}
# One table fits every GPU the kernels run on: the largest launch takes 99,840 B of shared memory, under the
# 99 KB per block of the RTX 30/40, L4 and A10 (sm_86, sm_89), let alone the A100's 163 and H100's 227 KB.


def padded(d):
    """The power-of-two tile width the kernels use for head dim d."""
    return max(16, triton.next_power_of_2(d))


def supports(d):
    """Can the kernels run head dim d? RoPE needs d % 4 == 0; tiles go up to 128 channels."""
    return d % 4 == 0 and padded(d) in LAUNCH


def _launch(N, D, dtype, backward, seg=False):
    """dict(BLOCK_M, BLOCK_N, num_warps) for a sequence of N tokens of head dim D. Segments keep an id tile
    live: their launches take blocks of at most 64 forward and 16 backward; so does the channel mask of a head
    dim between tile widths, which halves the block (compile_check: no spills)."""
    f_block, f_warps, b_block, b_warps = LAUNCH[padded(D)]
    block_cap, warps = (b_block, b_warps) if backward else (f_block, f_warps)
    block_cap //= (2 if dtype == torch.float32 else 1) * (2 if padded(D) != D else 1)
    if seg:
        block_cap = min(block_cap, 16 if backward else 64)
    block = min(block_cap, max(16, triton.next_power_of_2(N)))
    return dict(BLOCK_M=block, BLOCK_N=block, num_warps=warps, enable_fp_fusion=True)  # fusion: stated, not
    # left to Triton's default (which a Triton release changes)


def _dot_args(dtype):
    """Operand dtype and precision of tl.dot: the input's 16-bit type on the tensor cores, exact fp32 for fp32
    input. Triton 3.9's interpreter gets tl.dot wrong on 16-bit operands, so under it the dots run in fp32
    (inputs, outputs and everything stored keep the 16-bit type)."""
    if dtype == torch.float32 or INTERPRET:
        return dict(DOT=tl.float32, PREC='ieee')
    return dict(DOT={torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype], PREC='tf32')


def _check_positions(pos, B, N):
    if pos.shape[-2:] != (N, 2) or pos.dim() not in (2, 3) or (pos.dim() == 3 and pos.shape[0] != B):
        raise ValueError(f"pos must be (B, N, 2) or (N, 2) for q of (B, H, N, d) = ({B}, ., {N}, .); got {tuple(pos.shape)}")


def _check_segments(seg, N):
    if seg.shape != (N,) or seg.dtype.is_floating_point:
        raise ValueError(f"seg must be (N,) integer segment ids for N = {N}; got {tuple(seg.shape)} {seg.dtype}")


def _positions(pos, B, N, device):
    """pos (B, N, 2) or (N, 2) -> int32 tensor and its (batch, token) strides; batch stride 0 when shared."""
    pos = pos.to(device=device, dtype=torch.int32).contiguous()
    return pos, (pos.stride(0) if pos.dim() == 3 else 0), pos.stride(-2)


def _segments(seg, N, device):
    """seg (N,) integer segment ids, shared by every sequence of the batch -> int32 tensor."""
    return seg.to(device=device, dtype=torch.int32).contiguous()


# The kernels enter PyTorch as custom operators (torch.library): torch.compile records one opaque call per
# forward or backward and takes output shapes from the fake implementations, instead of breaking its graph at
# Python it cannot trace. Inside them a Triton error switches the family to its PyTorch reference (one warning);
# which path a run takes is decided before training by kernels.self_test, outside any traced code.

def _forward(q, k, v, pos, seg):
    """(o, lse) through the forward kernel: lse is the log2-sum-exp2 of each query's scaled scores."""
    B, H, N, D = q.shape
    has_pos, has_seg = pos is not None, seg is not None
    p, sp_b, sp_n = _positions(pos, B, N, q.device) if has_pos else (q.new_zeros(1, dtype=torch.int32), 0, 0)
    s = _segments(seg, N, q.device) if has_seg else q.new_zeros(1, dtype=torch.int32)
    o = torch.empty_like(q)
    lse = torch.empty(B * H, N, device=q.device, dtype=torch.float32)
    meta = _launch(N, D, q.dtype, backward=False, seg=has_seg)
    sm_scale = 1 / math.sqrt(D)
    _attn_fwd[(B * H, triton.cdiv(N, meta['BLOCK_M']))](
        q, k, v, p, s, o, lse, N, H, q.stride(0), q.stride(1), q.stride(2), o.stride(0), o.stride(1), o.stride(2),
        sp_b, sp_n, sm_scale * LOG2E, math.log2(jepa.ROPE_THETA), D=D, DP=padded(D), HAS_POS=has_pos, HAS_SEG=has_seg,
        **meta, **_dot_args(q.dtype))
    return o, lse


def _backward(q, k, v, pos, seg, o, lse, do):
    """dq, dk, dv through the two backward kernels."""
    B, H, N, D = q.shape
    has_pos, has_seg = pos is not None, seg is not None
    p, sp_b, sp_n = _positions(pos, B, N, q.device) if has_pos else (q.new_zeros(1, dtype=torch.int32), 0, 0)
    s = _segments(seg, N, q.device) if has_seg else q.new_zeros(1, dtype=torch.int32)
    delta = (do.float() * o.float()).sum(-1).view(B * H, N)  # rowsum(dO * O), FlashAttention-2's D
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    meta = dict(D=D, DP=padded(D), HAS_POS=has_pos, HAS_SEG=has_seg,
                **_launch(N, D, q.dtype, backward=True, seg=has_seg), **_dot_args(q.dtype))
    sm_scale = 1 / math.sqrt(D)
    args = (N, H, q.stride(0), q.stride(1), q.stride(2), sp_b, sp_n, sm_scale * LOG2E, sm_scale, math.log2(jepa.ROPE_THETA))
    _attn_bwd_dkdv[(B * H, triton.cdiv(N, meta['BLOCK_N']))](q, k, v, p, s, do, lse, delta, dk, dv, *args, **meta)
    _attn_bwd_dq[(B * H, triton.cdiv(N, meta['BLOCK_M']))](q, k, v, p, s, do, lse, delta, dq, *args, **meta)
    return dq, dk, dv


@torch.library.custom_op('nano_jepa::attention_fwd', mutates_args=())
def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: Optional[torch.Tensor],
                  seg: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    config = lambda: (f"forward, {q.dtype}, (B, H, N, d) = {tuple(q.shape)}"  # noqa: E731
                      + (', RoPE' if pos is not None else '') + (', segments' if seg is not None else ''))
    return run_or_fall_back('attention', config, lambda: _forward(q, k, v, pos, seg),
                            lambda: _forward_fallback(q, k, v, pos, seg))


def _forward_fallback(q, k, v, pos, seg):
    """The forward operator's PyTorch path, with outputs exactly as the fake implementation below describes them
    (torch.compile's inductor checks every size and stride): o contiguous in q's dtype, lse (B*H, N) fp32. The lse
    is zeros: after a failure the backward falls back too and does not read it."""
    B, H, N, _ = q.shape
    return attention_reference(q, k, v, pos, seg).contiguous(), q.new_zeros(B * H, N, dtype=torch.float32)


@attention_fwd.register_fake
def _(q, k, v, pos, seg):
    B, H, N, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(B * H, N, dtype=torch.float32)


@torch.library.custom_op('nano_jepa::attention_bwd', mutates_args=())
def attention_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: Optional[torch.Tensor],
                  seg: Optional[torch.Tensor], o: torch.Tensor, lse: torch.Tensor, do: torch.Tensor,
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    do = do.contiguous()
    config = lambda: f"backward, {q.dtype}, (B, H, N, d) = {tuple(q.shape)}"  # noqa: E731
    return run_or_fall_back('attention', config, lambda: _backward(q, k, v, pos, seg, o, lse, do),
                            lambda: attention_backward_reference(q, k, v, pos, seg, do))


@attention_bwd.register_fake
def _(q, k, v, pos, seg, o, lse, do):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, pos, seg = inputs
    ctx.save_for_backward(q.contiguous(), k.contiguous(), v.contiguous(), pos, seg, *output)


def _attention_backward(ctx, do, _dlse):
    q, k, v, pos, seg, o, lse = ctx.saved_tensors
    return (*attention_bwd(q, k, v, pos, seg, o, lse, do), None, None)


attention_fwd.register_autograd(_attention_backward, setup_context=_setup_context)


def attention(q, k, v, pos=None, seg=None):
    """softmax(rope(q) rope(k)^T / sqrt(d)) v for q, k, v (B, H, N, d); RoPE only when pos is given.
    pos: LongTensor (B, N, 2) or (N, 2) of (column, row) grid positions. Non-causal; any N; d divisible by 4 up to 128.
    seg: LongTensor (N,) of segment ids (module docstring), or None: every query sees every key.
    Once the kernels have failed (the start-up self-test, or a Triton error in a call, which prints one warning and
    computes that call in PyTorch) this is attention_reference."""
    B, H, N, D = q.shape
    if has_failed('attention'):
        return attention_reference(q, k, v, pos, seg)
    if not supports(D):
        raise ValueError(f"head dim {D} not supported: the kernels take d divisible by 4 up to {max(LAUNCH)}")
    if pos is not None:
        _check_positions(pos, B, N)
    if seg is not None:
        _check_segments(seg, N)
    return attention_fwd(q, k, v, pos, seg)[0]


def variants(uses, dtype):
    """One (N, d, heads, seg) shape per distinct kernel a run launches. uses: (d, heads, longest N, segments?)
    per attention layer kind (the encoder; the predictor, with segments). Sequence lengths change every step
    (a gathered context), so every length up to the longest is covered: two compiles differ by block sizes,
    by whether a sequence loops over several blocks, and by the divisibility of the strides by 16 (N * d and
    heads * N * d: Triton specialises on it); each candidate length is odd or even on both sides of a block."""
    out = {}
    for d, heads, longest, seg in uses:
        candidates = sorted({n for b in (16, 32, 64, 128, 256, 512) for n in (b - 3, b - 2, b + 5, b + 6)
                             if n <= longest} | {longest, max(1, longest - 1)})
        for N in candidates:
            fwd, bwd = (_launch(N, d, dtype, backward, seg) for backward in (False, True))
            key = (d, heads, seg, str(fwd), str(bwd), N > fwd['BLOCK_M'], N > bwd['BLOCK_M'], N * d % 16 == 0,
                   heads * N * d % 16 == 0)
            out.setdefault(key, (N, d, heads, seg))
    return list(out.values())


def self_test(device, dtype, uses=((16, 2, 21, True),)):
    """Forward and backward through the kernels for every variant the run will launch (variants(uses)), each
    against the PyTorch reference in fp64 on the same rounded inputs, with RoPE positions of gathered tokens and,
    where the run has them, the predictor's segments (a context and four blocks). Raises on any error or a
    mismatch. Compiles every variant now, so no Triton compile falls inside a timed step."""
    for d, *_ in uses:
        if not supports(d):
            raise ValueError(f"head dim {d}: the kernels take d divisible by 4 up to {max(LAUNCH)}")
    for N, d, H, has_seg in variants(uses, dtype):
        g = torch.Generator().manual_seed(N * 1000 + d)
        q, k, v, do = (torch.randn(2, H, N, d, generator=g) for _ in range(4))
        pos = torch.stack([torch.randperm(256, generator=g)[:N].sort().values for _ in range(2)])  # 16 x 16 grid
        pos = torch.stack([pos % 16, pos // 16], -1)  # (2, N, 2)
        idx = torch.arange(N)
        seg = torch.where(idx < N // 3, 0, 1 + (idx - N // 3) * 4 // max(1, N - N // 3)) if has_seg else None
        x = [t.to(device, dtype, copy=True) for t in (q, k, v)]
        dev_seg = None if seg is None else seg.to(device)
        out, lse = attention_fwd(*x, pos.to(device), dev_seg)
        grads = attention_bwd(*x, pos.to(device), dev_seg, out, lse, do.to(device, dtype))
        ref = [t.to(dtype).double().requires_grad_() for t in (q, k, v)]  # the same rounded inputs, in fp64
        expected = attention_reference(*ref, pos, seg)
        expected.backward(do.to(dtype).double())
        for name, a, b in zip(('out', 'dq', 'dk', 'dv'), (out, *grads), (expected, *(t.grad for t in ref))):
            err = ((a.detach().double().cpu() - b).norm() / b.norm().clamp_min(0.1)).item()
            if not err < (1e-3 if dtype == torch.float32 else 3e-2):  # a NaN fails too
                raise AssertionError(f"{name} differs from the reference by {err:.2g} (relative) at (B, H, N, d) = "
                                     f"(2, {H}, {N}, {d}){', segments' if has_seg else ''}")

# ----------------------------------------------------------------------------- benchmark


def bench(Ns=(64, 65, 128, 256), ds=(32, 64), BH=4096, dtype=torch.bfloat16):
    """Forward and forward+backward vs naive eager and every SDPA backend present, with RoPE applied separately
    (for SDPA and eager) or fused (here). TFLOP/s counts 4*N^2*d per (batch, head) forward and 3.5x that for forward+backward;
    the bandwidth share is the minimum traffic (q, k, v, o; plus gradients in backward) over measured DRAM speed."""
    if not torch.cuda.is_available():
        print("kernels/attention.py bench: needs a CUDA GPU (the interpreter is for correctness, not speed)")
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from triton.testing import do_bench
    buf = torch.empty(2 ** 28, dtype=torch.uint8, device='cuda')
    bw = 2 * buf.numel() / do_bench(lambda: buf.clone(), return_mode='median') / 1e9  # TB/s, read + write
    backends = {'flash': SDPBackend.FLASH_ATTENTION, 'efficient': SDPBackend.EFFICIENT_ATTENTION,
                'cudnn': SDPBackend.CUDNN_ATTENTION, 'math': SDPBackend.MATH}
    import kernels  # the self-test first: a kernel that fails it is timed as what runs instead, and named so
    kernels.self_test(torch.device('cuda'), dtype, [(d, 256 // d, max(Ns), False) for d in ds], [])
    fused = 'fused (rope inside)' if 'attention' not in kernels.failed else 'FELL BACK: SDPA + rope'
    print(f"attention bench, {torch.cuda.get_device_name()}, {dtype}, B*H = {BH}, torch {torch.__version__}, "
          f"triton {triton.__version__}, measured copy bandwidth {bw:.2f} TB/s")
    print(f"{'N':>4} {'d':>3} | {'impl':>22} | {'fwd ms':>7} | {'f+b ms':>7} | {'fwd TF/s':>8} | {'f+b TF/s':>8} | {'fwd %bw':>7}")
    for N in Ns:
        for d in ds:
            B, H = BH // (256 // d), 256 // d
            q, k, v = (torch.randn(B, H, N, d, device='cuda', dtype=dtype, requires_grad=True) for _ in range(3))
            side = int(math.ceil(math.sqrt(N)))
            idx = torch.arange(N, device='cuda')
            pos = torch.stack([idx % side, idx // side], -1)
            naive = lambda: (jepa.rope(q, pos) @ jepa.rope(k, pos).transpose(-1, -2) / math.sqrt(d)).softmax(-1) @ v  # noqa: E731
            impls = {'naive eager + rope': naive,
                     fused: lambda: attention(q, k, v, pos)}
            for name, be in backends.items():
                def run(be=be):
                    with sdpa_kernel(be):
                        return F.scaled_dot_product_attention(jepa.rope(q, pos), jepa.rope(k, pos), v)
                try:
                    run().sum().backward()
                    impls[f'sdpa {name} + rope'] = run
                except RuntimeError:
                    pass  # backend not available for this shape/dtype
            flops = 4 * BH * N * N * d
            bytes_fwd = 4 * BH * N * d * q.element_size()
            for name, fn in impls.items():
                fn().sum().backward()
                fwd = do_bench(fn, return_mode='median')
                both = do_bench(lambda: fn().backward(torch.ones_like(q)), return_mode='median', grad_to_none=[q, k, v])
                print(f"{N:>4} {d:>3} | {name:>22} | {fwd:7.3f} | {both:7.3f} | {flops / fwd / 1e9:8.1f} | "
                      f"{3.5 * flops / both / 1e9:8.1f} | {100 * bytes_fwd / fwd / 1e9 / bw:6.1f}%", flush=True)


if __name__ == '__main__':
    bench()
