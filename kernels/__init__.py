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


def has_failed(family):
    return family in failed


def fail(family, where, error):
    """Switch a kernel family off for the rest of the run, with one warning line naming where and why."""
    failed[family] = error
    msg = str(error).strip().splitlines()
    print(f"warning: Triton {family} kernel failed ({where}): {type(error).__name__}: {msg[-1] if msg else ''}; "
          f"using the PyTorch path for the rest of the run", file=sys.stderr, flush=True)


def run_or_fall_back(family, config, kernel_call, fallback_call):
    """kernel_call() unless this family has failed before; on a Triton compile or out-of-resources error (the
    self-test has already caught anything broader) one warning naming config() (a callable: nothing is
    formatted on the hot path), and fallback_call() (the PyTorch path) for this call and every later one."""
    if family not in failed:
        try:
            return kernel_call()
        except TritonError as e:
            fail(family, config(), e)
    return fallback_call()


def self_test(device, dtype, attention_uses=((16, 2, 21, True),), sigreg_shapes=((300, 20),)):
    """Before training: forward and backward through each kernel family on the run's device, for every kernel
    variant the run will launch (attention in the run's compute dtype for attention_uses, see
    attention.variants; SIGReg in fp32 for its (N, M) shapes), compared with the PyTorch reference, then a
    synchronisation so that an asynchronous launch error surfaces here. Any exception (an unsupported head dim,
    no C compiler to build Triton's launcher, no libcuda, a CUDA launch error, a compile error) or a mismatch
    switches that family off with one warning. -> {family: None, or the error}."""
    from kernels import attention, sigreg
    tests = {'attention': lambda: attention.self_test(device, dtype, attention_uses),
             'sigreg': lambda: sigreg.self_test(device, sigreg_shapes)}
    for family, test in tests.items():
        if family in failed:
            continue
        try:
            test()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
        except Exception as e:  # noqa: BLE001  anything at all: the run goes on without this family
            fail(family, f"self-test on {device}", e)
    return {family: failed.get(family) for family in tests}
