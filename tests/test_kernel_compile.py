"""The GPU compiler's view of the kernels, checked without a GPU: kernels/compile_check.py records every launch
the kernel APIs make over its grid of dtypes and shapes, compiles each for sm_80, sm_86, sm_89 and sm_90 with
Triton's own compiler and reads the cubins. It runs in a subprocess because this test session runs Triton's interpreter."""
import os
import re
import subprocess
import sys

import pytest

pytest.importorskip('triton', reason='triton is not installed (make install adds it where it installs)')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_launch_compiles_spill_free_and_fits_shared_memory():
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    r = subprocess.run([sys.executable, '-m', 'kernels.compile_check', '--check'], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:]
    assert r.returncode == 0, '\n'.join(line for line in r.stdout.splitlines() if 'spills' in line or 'shared memory' in line
                                        or 'compile:' in line) + '\n' + summary
    m = re.match(r'(\d+) compiles in \d+ s: (\d+) failed, \d+ spill \(largest (\d+) B, (\d+) of them', summary)
    assert m, summary
    compiles, failed, _, spilling_16bit = map(int, m.groups())
    assert compiles >= 380 and failed == 0 and spilling_16bit == 0, summary
    rows = [line.split() for line in r.stdout.splitlines() if line.startswith('_')]
    assert {row[0] for row in rows} == {'_attn_fwd', '_attn_bwd_dkdv', '_attn_bwd_dq', '_cf_sums_fwd', '_cf_sums_bwd'}
    assert {row[5] for row in rows if row[0].startswith('_attn')} == {'sm_80', 'sm_86', 'sm_89', 'sm_90'}
    per_target = [line for line in r.stdout.splitlines() if re.match(r'sm_\d\d: \d+ compiles', line)]
    assert len(per_target) == 4 and all('(0 of them 16-bit attention or SIGReg)' in line for line in per_target), per_target


def test_check_flags_what_breaks_a_rule():
    """The rules themselves, on made-up rows: a 16-bit spill, a shared-memory overflow (per target) and a compile
    error fail; an fp32 attention spill does not (it is not what training runs on a GPU)."""
    env = dict(os.environ)
    env.pop('TRITON_INTERPRET', None)
    code = ("from kernels.compile_check import violations as v\n"
            "row = dict(kernel='_attn_fwd', config='bfloat16 d=32 N=64 pos=none', target='sm_90', error='', spill=0, shared=1000)\n"
            "print(len(v(row)), len(v(dict(row, spill=8))), len(v(dict(row, shared=240000))), len(v(dict(row, error='x'))),"
            " len(v(dict(row, config='float32 d=32', spill=8))), len(v(dict(row, kernel='_cf_sums_fwd', config='float32', spill=8))),"
            " len(v(dict(row, target='sm_86', shared=120000))), len(v(dict(row, shared=120000))))")
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ['0', '1', '1', '1', '0', '1', '1', '0'], r.stderr[-2000:]  # 99 KB on sm_86, 227 on sm_90


def test_specialization_matches_tritons_own():
    """compile_check writes out Triton's argument specialisation instead of calling its internals (whose keywords
    change between releases); where those internals import, both agree on every launch of the grid: types,
    constexprs (the int 1 included) and divisibility-16 hints (do_not_specialize honoured)."""
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    code = """
from triton.backends.compiler import GPUTarget
from triton.compiler import make_backend
from triton.runtime.jit import create_function_from_signature
import torch
from kernels.compile_check import attention_launches, sigreg_launches, specialization
backend = make_backend(GPUTarget('cuda', 90, 32))
n = differ = 0
for fn, config, args, meta in list(attention_launches((torch.bfloat16, torch.float32))) + list(sigreg_launches()):
    signature, constexprs, attrs, _ = specialization(fn, args, meta)
    consts = {k: v for k, v in meta.items() if k in fn.arg_names}
    _, spec, _ = create_function_from_signature(fn.signature, fn.params, backend)(*args, **consts)
    theirs = ({name: s[0] for name, s in zip(fn.arg_names, spec)},
              {(i,): s[1] for i, s in enumerate(spec) if s[0] == 'constexpr'},
              {(i,): backend.parse_attr(s[1]) for i, s in enumerate(spec) if s[0] != 'constexpr' and s[1]})
    n, differ = n + 1, differ + ((signature, constexprs, attrs) != theirs)
print(n, differ)
"""
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    n, differ = map(int, r.stdout.split())
    assert n > 250 and differ == 0, r.stdout
