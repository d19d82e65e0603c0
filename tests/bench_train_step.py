"""Benchmark (a script, not a test): img/s of jepa.py's whole training step on the current device, I-JEPA and
LeJEPA, at the default model size and at the official size (ViT 192 x 6 x 3, predictor 96 x 4 x 3), with the
Triton kernels on and off and torch.compile on and off.

Each row is `python jepa.py` in a fresh process (nothing compiled by an earlier row, no shared torch.compile
cache limits) on the embedded shapes data at 64 px (patch 8), trained at that size throughout
(--lowres_frac=0). A row trains 2 x --steps steps and logs twice: the speed reported is the second log line's,
over the last --steps steps only, with the clock read after a GPU synchronisation. Everything that compiles
happens before that window: the kernels' start-up self-test launches every kernel variant the run will use
(all head dims, context lengths and block sizes), torch.compile compiles in the first steps. The path column is
what actually ran (the run's device line, and any kernel family that fell back); a row labelled compile=True
whose process reports a torch.compile recompile limit, or falling back to eager, is marked failed.

    python tests/bench_train_step.py                      # every row the device can run
    python tests/bench_train_step.py --steps=100 --batch_size=512 --methods=ijepa --sizes=official

On a CPU the kernel rows are skipped (Triton's interpreter is for correctness, not speed).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {'default': [], 'official': ['--width=192', '--depth=6', '--heads=3', '--pred_width=96', '--pred_depth=4',
                                     '--pred_heads=3']}
NOT_COMPILED = ('recompile_limit', 'cache_size_limit', 'falling back to eager', 'Falling back to eager')


def run(method, size, use_kernels, use_compile, steps, batch_size):
    """One row in a fresh process -> (img/s over the last `steps` steps, warm-up seconds, path, problem or '')."""
    out_dir = tempfile.mkdtemp(prefix='bench_')
    args = ['--data=shapes', '--img_size=64', '--patch_size=8', '--lowres_frac=0', f'--method={method}',
            f'--steps={2 * steps}', f'--log_every={steps}', f'--batch_size={batch_size}', '--probe=False',
            f'--triton_kernels={use_kernels}', f'--compile={use_compile}', f'--out_dir={out_dir}'] + SIZES[size]
    env = {k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}
    r = subprocess.run([sys.executable, os.path.join(ROOT, 'jepa.py'), *args], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, '-', '-', (r.stderr.strip().splitlines() or ['exit code %d' % r.returncode])[-1][:120]
    with open(os.path.join(out_dir, 'log.jsonl')) as f:
        records = [json.loads(line) for line in f]
    device = next(line for line in r.stdout.splitlines() if line.startswith('device:'))
    fell_back = re.findall(r'warning: Triton (\w+) kernel failed', r.stderr)
    path = device.split(', ', 1)[-1] + (f" (fell back: {', '.join(fell_back)})" if fell_back else '')
    warm = re.search(r'the first step took ([\d.]+) s', r.stdout)
    problem = ''
    if use_compile and any(s in r.stderr for s in NOT_COMPILED):
        problem = 'labelled compile=True but torch.compile gave up (recompile limit or eager fallback)'
    return records[-1]['img_per_s'], warm[1] if warm else '?', path, problem


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--steps', type=int, default=0, help='timed steps per row, after as many untimed (default 60 on '
                                                         'CUDA, 6 on CPU)')
    ap.add_argument('--batch_size', type=int, default=0, help='images per step (default 256 on CUDA, 32 on CPU)')
    ap.add_argument('--methods', default='ijepa,lejepa')
    ap.add_argument('--sizes', default='default,official')
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    steps, batch = a.steps or (60 if cuda else 6), a.batch_size or (256 if cuda else 32)
    device = torch.cuda.get_device_name() if cuda else 'CPU'
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = 'not installed'
    print(f"whole training step, {device}, torch {torch.__version__}, triton {tv}, batch {batch}, img/s over steps "
          f"{steps + 1}-{2 * steps} of each row, 64 px, patch 8" + ('' if cuda else ' (kernel rows need CUDA: skipped)'))
    print(f"{'method':<8} {'size':<9} {'kernels':<8} {'compile':<8} | {'img/s':>8} | {'warm-up s':>9} | path")
    failed = 0
    for method in a.methods.split(','):
        for size in a.sizes.split(','):
            for use_compile in (False, True):
                for use_kernels in ((False, True) if cuda else (False,)):
                    ips, warm, path, problem = run(method, size, use_kernels, use_compile, steps, batch)
                    failed += bool(problem)
                    speed = f"{ips:8.0f}" if ips is not None and not problem else f"{'-':>8}"
                    print(f"{method:<8} {size:<9} {str(use_kernels):<8} {str(use_compile):<8} | {speed} | {warm:>9} | "
                          + (f"failed: {problem}" if problem else path), flush=True)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
