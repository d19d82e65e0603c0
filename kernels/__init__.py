"""Fused Triton kernels: attention with 2-D RoPE inside (attention.py) and SIGReg's Epps-Pulley statistics
(sigreg.py). Each file holds its PyTorch reference, the kernels, an autograd Function and a bench();
compile_check.py shows what the GPU compiler makes of them. Shared here: a sincos both kernels use, and the
fallback that keeps a run going when a kernel cannot compile or launch on someone's GPU."""
import os
import sys

import torch
import triton
import triton.language as tl
from triton.errors import TritonError
from triton.language.extra.cuda import libdevice

INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'  # Triton's interpreter: kernels run on CPU tensors
FAST_SINCOS = tl.constexpr(not INTERPRET)


@triton.jit
def sincos(x):
    """(sin x, cos x) in fp32. Compiled: reduce x to [-pi, pi], then the hardware's sin.approx/cos.approx
    (absolute error < 1e-6). libdevice's accurate sinf/cosf keep a slow path for huge arguments that needs a
    32-byte local array: every launch using them spilled to local memory. The interpreter has no libdevice and
    uses numpy's sin/cos."""
    if FAST_SINCOS:
        r = x - 6.283185307179586 * tl.floor(x * 0.15915494309189535 + 0.5)  # x - 2 pi round(x / 2 pi)
        return libdevice.fast_sinf(r), libdevice.fast_cosf(r)
    else:
        return tl.sin(x), tl.cos(x)

# ----------------------------------------------------------------------------- fallback to PyTorch

failed = {}  # kernel family ('attention', 'sigreg') -> the error that switched it off for the rest of the run


def run_or_fall_back(family, config, kernel_call, fallback_call):
    """kernel_call() unless this family has failed before; on a Triton compile or out-of-resources error, one
    warning line naming config() (a callable: nothing is formatted on the hot path), and fallback_call() (the
    PyTorch path) for this call and every later one."""
    if family not in failed:
        try:
            return kernel_call()
        except TritonError as e:
            failed[family] = e
            msg = str(e).strip().splitlines()
            print(f"warning: Triton {family} kernel failed ({config()}): {type(e).__name__}: {msg[-1] if msg else ''}; "
                  f"using the PyTorch path for the rest of the run", file=sys.stderr, flush=True)
    return fallback_call()


def vjp(fn, inputs, grad_out):
    """Gradients of fn at inputs for the output gradient grad_out, by PyTorch autograd: a backward kernel's
    fallback recomputes the forward in PyTorch and differentiates it."""
    with torch.enable_grad():
        xs = [x.detach().requires_grad_() for x in inputs]
        return torch.autograd.grad(fn(*xs), xs, grad_out)
