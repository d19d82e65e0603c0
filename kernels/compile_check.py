"""
What the GPU compiler makes of our kernels, seen from a machine without a GPU.

    python -m kernels.compile_check            # the table: every launch, for every GPU generation in TARGETS
    python -m kernels.compile_check --check    # the same, and exit 1 if a rule below is broken (a test runs this)

The kernel APIs (kernels.attention.attention forward + backward, kernels.sigreg.cf_sums forward + backward) are
called on small CPU tensors of every dtype and shape in GRID, with each Triton kernel swapped for a recorder, so
the launches listed are exactly the ones the APIs make (grid, block sizes, num_warps, argument specialisation).
Each distinct launch is then compiled by Triton's own compiler for a GPUTarget -- no GPU or driver needed -- and
its cubin read by the cuobjdump that ships inside the triton wheel: registers per thread, STACK and LOCAL bytes
(register spills go there) and shared memory per block.

Targets: the A100 (sm_80), RTX 30 / A10 (sm_86), RTX 40 / L4 (sm_89) and H100 (sm_90), each with its shared
memory per block and the dtypes that can reach the kernels there (training runs bf16; fp16 and fp32 are the
kernel API's other inputs, checked on the two datacenter cards). The T4 and V100 (sm_75, sm_70) are not
targets: jepa.device_policy turns the kernels off below sm_80, where Triton makes no tensor-core dots (its
dots become FMA loops, which spill hundreds of bytes per thread).

Rules (--check): every launch compiles for every target; shared memory fits the card's per-block limit; no
spill bytes (STACK + LOCAL = 0) for fp16/bf16 attention and for the SIGReg kernels. fp32 attention may spill:
it is the exact-fp32 path (tests, the CPU interpreter), not what training runs on a GPU (bf16 autocast).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import jepa
from kernels import attention as attention_mod, sigreg as sigreg_mod

# target: (compute capability, shared memory per block with opt-in in bytes, attention dtypes checked there)
TARGETS = {'sm_80': (80, 166_912, (torch.bfloat16, torch.float32)),
           'sm_86': (86, 101_376, (torch.bfloat16,)),
           'sm_89': (89, 101_376, (torch.bfloat16,)),
           'sm_90': (90, 232_448, (torch.bfloat16, torch.float16, torch.float32))}
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), 'backends', 'nvidia', 'bin', 'cuobjdump')

# What training launches: ViT heads of d = 8..128 (the defaults: d = 32 encoder and predictor; the official
# ViT-Tiny size d = 64, 24 and 48 by other widths), always with RoPE positions: full grids, gathered contexts and
# predictor sequences (with segments) of every length class up to 256 tokens (the blocks they take, one block or
# several, odd and even lengths); SIGReg on batches up to 4096 with up to 1024 slices. Attention dtypes: per
# target, above; fp32 (the exact path of the tests) at the tile widths only.
GRID = {
    'attention': dict(d=(8, 16, 24, 32, 48, 64, 128), fp32_d=(16, 32, 64, 128), N=(20, 50, 65, 130),
                      pos=('shared', 'batch+seg')),
    'sigreg': dict(dtype=(torch.float32, torch.bfloat16), NM=((64, 32), (512, 256), (4096, 1024))),
}


class Recorder:
    """Stands in for a @triton.jit kernel: `kernel[grid](*args, **meta)` is written down instead of run."""
    def __init__(self, fn, log, config):
        self.fn, self.log, self.config = fn, log, config

    def __getitem__(self, grid):
        # a tensor argument matters to the compiler only by its dtype (and 16-byte alignment): keep a stand-in
        light = lambda a: torch.empty(16, dtype=a.dtype) if torch.is_tensor(a) else a
        return lambda *args, **meta: self.log.append((self.fn, self.config(), [light(a) for a in args], meta))


def record(module, call, config):
    """The launches `call()` makes through the kernels of `module`, as (kernel, config, args, meta)."""
    log = []
    jitted = {name: fn for name, fn in vars(module).items() if isinstance(fn, triton.runtime.JITFunction)}
    for name, fn in jitted.items():
        setattr(module, name, Recorder(fn, log, config))
    try:
        call()
    finally:
        for name, fn in jitted.items():
            setattr(module, name, fn)
    return log


def attention_launches(dtypes):
    g = GRID['attention']
    for dtype in dtypes:
        for d in g['fp32_d'] if dtype == torch.float32 else g['d']:
            for N in g['N']:
                for pos_kind in g['pos']:
                    B, H = 2, 2
                    q, k, v = (torch.zeros(B, H, N, d, dtype=dtype, requires_grad=True) for _ in range(3))
                    idx = torch.arange(N)
                    grid = torch.stack([idx % 16, idx // 16], -1)
                    pos = grid if pos_kind == 'shared' else grid.expand(B, N, 2)
                    seg = idx % 5 if pos_kind == 'batch+seg' else None  # the I-JEPA predictor's segments

                    def call():
                        attention_mod.attention(q, k, v, pos, seg=seg).backward(torch.zeros(B, H, N, d, dtype=dtype))
                    yield from record(attention_mod, call, lambda: f"{str(dtype)[6:]} d={d} N={N} pos={pos_kind}")


def sigreg_launches():
    for dtype in GRID['sigreg']['dtype']:
        for N, M in GRID['sigreg']['NM']:
            y = torch.zeros(N, M, dtype=dtype, requires_grad=True)

            def call():
                cos_sum, sin_sum = sigreg_mod.cf_sums(y, jepa.NUM_KNOTS, jepa.T_MAX / (jepa.NUM_KNOTS - 1))
                (cos_sum.sum() + sin_sum.sum()).backward()
            yield from record(sigreg_mod, call, lambda: f"{str(dtype)[6:]} N={N} M={M}")


def compile_one(job):
    """Compile one recorded launch for one target; -> a table row (dict). Runs in a worker process."""
    fn_name, config, args, meta, target_name = job
    module_name, name = fn_name.rsplit('.', 1)
    fn = getattr(sys.modules[module_name], name)
    target = GPUTarget('cuda', TARGETS[target_name][0], 32)
    signature, constexprs, attrs, options = specialization(fn, args, meta)
    row = dict(kernel=fn.__name__, config=config, target=target_name,
               meta=' '.join(f"{k}={v}" for k, v in meta.items() if k not in ('DOT', 'PREC')))
    t0 = time.time()
    try:
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options)
    except Exception as e:  # a compile error is a result to report, not a crash of the report
        return dict(row, error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:120]}")
    with tempfile.NamedTemporaryFile(suffix='.cubin') as f:
        f.write(compiled.asm['cubin'])
        f.flush()
        usage = subprocess.run([CUOBJDUMP, '--dump-resource-usage', f.name], capture_output=True, text=True).stdout
    res = dict(re.findall(r'(REG|STACK|SHARED|LOCAL):(\d+)', usage.split('Function')[-1]))
    return dict(row, error='', regs=int(res['REG']), spill=int(res['STACK']) + int(res['LOCAL']),
                shared=compiled.metadata.shared + int(res['SHARED']), warps=compiled.metadata.num_warps,
                seconds=time.time() - t0)


TL_DTYPE = {torch.float32: 'fp32', torch.float16: 'fp16', torch.bfloat16: 'bf16', torch.int32: 'i32',
            torch.int64: 'i64', torch.int8: 'i8', torch.uint8: 'u8', torch.bool: 'i1'}
DIVISIBILITY = [['tt.divisibility', 16]]


def specialization(fn, args, meta):
    """What a launch `fn[grid](*args, **meta)` compiles to, as triton.compile's inputs: (signature, constexprs,
    attrs, options). Triton's launcher specialises each argument the same way in every release we support
    (3.8, 3.9), which is written out here instead of calling its internals (their keywords change between
    releases): a tensor is a typed pointer, marked divisible by 16 when its address is 16-byte aligned; an int
    is i32 (i64 past 32 bits), the constant 1 when it equals 1, and marked divisible by 16 when it is -- both
    unless listed in do_not_specialize; floats are fp32, bools u1. Keyword arguments that name a parameter are
    constexprs; the others (num_warps, num_stages) are compiler options."""
    signature, constexprs, attrs = {}, {}, {}
    values = dict(zip(fn.arg_names, args), **{k: v for k, v in meta.items() if k in fn.arg_names})
    for i, param in enumerate(fn.params):
        name, value = param.name, values[param.name]
        if param.is_constexpr:
            signature[name], constexprs[(i,)] = 'constexpr', value
        elif torch.is_tensor(value):
            signature[name] = '*' + TL_DTYPE[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(i,)] = DIVISIBILITY
        elif isinstance(value, bool):
            signature[name] = 'u1'
        elif isinstance(value, int):
            if value == 1 and not param.do_not_specialize:
                signature[name], constexprs[(i,)] = 'constexpr', 1
                continue
            signature[name] = 'i32' if -2 ** 31 <= value < 2 ** 31 else 'i64'
            if value % 16 == 0 and not param.do_not_specialize:
                attrs[(i,)] = DIVISIBILITY
        elif isinstance(value, float):
            signature[name] = 'fp32'
        else:
            raise TypeError(f"{fn.__name__}: argument {name} of type {type(value).__name__} is not modelled here")
    options = {k: v for k, v in meta.items() if k not in fn.arg_names}
    return signature, constexprs, attrs, options


def launches(target):
    """Every distinct launch of both APIs over GRID on a target (as Triton's cache tells them apart), named by
    the first configuration that makes it."""
    seen = {}
    for fn, config, args, meta in list(attention_launches(TARGETS[target][2])) + list(sigreg_launches()):
        signature, constexprs, attrs, options = specialization(fn, args, meta)
        key = (fn.__name__, str(signature), str(sorted(constexprs.items(), key=str)), str(attrs), str(options))
        seen.setdefault(key, (fn, config, args, meta))
    return list(seen.values())


def must_not_spill(row):
    return row['kernel'].startswith('_cf_sums') or 'float32' not in row['config']


def violations(row):
    if row['error']:
        return [f"does not compile: {row['error']}"]
    out = []
    limit = TARGETS[row['target']][1]
    if row['shared'] > limit:
        out.append(f"shared memory {row['shared']} B > {limit} B per block")
    if row['spill'] and must_not_spill(row):
        out.append(f"spills {row['spill']} B per thread")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    ap.add_argument('--check', action='store_true', help='exit 1 if any launch breaks a rule (see the module docstring)')
    ap.add_argument('--jobs', type=int, default=os.cpu_count(), help='compiler processes (default: all cores)')
    a = ap.parse_args(argv)
    if os.environ.get('TRITON_INTERPRET') == '1':  # the interpreter replaces @triton.jit: nothing to compile
        sys.exit("kernels/compile_check.py compiles real kernels: run it without TRITON_INTERPRET=1")
    jobs = [(f"{fn.__module__}.{fn.__name__}", config, args, meta, t) for t in TARGETS
            for fn, config, args, meta in launches(t)]
    print(f"compiling {len(jobs)} launches for {', '.join(TARGETS)} with triton {triton.__version__}, {a.jobs} "
          "processes", flush=True)
    t0 = time.time()
    with ProcessPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(compile_one, jobs))
    print(f"{'kernel':<15} {'first configuration':<32} {'target':<6} {'launch':<44} {'regs':>4} {'spill B':>7} "
          f"{'shared B':>8}  problems")
    bad = 0
    for r in sorted(rows, key=lambda r: (r['kernel'], r['config'], r['target'])):
        problems = violations(r)
        bad += bool(problems)
        nums = (f"{r['regs']:>4} {r['spill']:>7} {r['shared']:>8}" if not r['error'] else f"{'-':>4} {'-':>7} {'-':>8}")
        print(f"{r['kernel']:<15} {r['config']:<32} {r['target']:<6} {r['meta']:<44} {nums}  {'; '.join(problems)}")
    ok = [r for r in rows if not r['error']]
    for t in TARGETS:
        mine = [r for r in ok if r['target'] == t]
        print(f"{t}: {sum(r['target'] == t for r in rows)} compiles, {sum(r['spill'] > 0 for r in mine)} spill "
              f"({sum(r['spill'] > 0 for r in mine if must_not_spill(r))} of them 16-bit attention or SIGReg), "
              f"largest shared memory {max((r['shared'] for r in mine), default=0)} B of {TARGETS[t][1]}, "
              f"most registers {max((r['regs'] for r in mine), default=0)}")
    print(f"\n{len(rows)} compiles in {time.time() - t0:.0f} s: {len(rows) - len(ok)} failed, "
          f"{sum(r['spill'] > 0 for r in ok)} spill (largest {max((r['spill'] for r in ok), default=0)} B, "
          f"{sum(r['spill'] > 0 for r in ok if must_not_spill(r))} of them 16-bit attention or SIGReg), "
          f"largest shared memory {max((r['shared'] for r in ok), default=0)} B, most registers "
          f"{max((r['regs'] for r in ok), default=0)}; {bad} break a rule")
    return 1 if a.check and bad else 0


if __name__ == '__main__':
    sys.exit(main())
