"""Benchmark (a script, not a test): img/s of jepa.py's whole training step on the current device, I-JEPA and
LeJEPA, at the default model size and at the official size (ViT 192 x 6 x 3, predictor 96 x 4 x 3), with the
Triton kernels on and off and torch.compile on and off. Each row is a short `jepa.train` run on the embedded
shapes data at 64 px (patch 8); its first step (compiles) is off the clock, as in training. The path column says
what actually ran: a kernel family that fell back to PyTorch (self-test or launch failure) is named.

    python tests/bench_train_step.py                      # every row the device can run
    python tests/bench_train_step.py --steps=100 --batch_size=512 --methods=ijepa --sizes=official

On a CPU the kernel rows are skipped (Triton's interpreter is for correctness, not speed).
"""
import argparse
import contextlib
import io
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import jepa  # noqa: E402

SIZES = {'default': [], 'official': ['--width=192', '--depth=6', '--heads=3', '--pred_width=96', '--pred_depth=4',
                                     '--pred_heads=3']}


def path_taken(model):
    """Which attention / SIGReg path the run used, after its self-test and any failure."""
    if not model.cfg['triton_kernels']:
        return 'PyTorch (SDPA, PyTorch SIGReg)'
    import kernels
    off = sorted(kernels.failed)
    return 'Triton kernels' + (f" (fell back: {', '.join(off)})" if off else '')


def run(method, size, use_kernels, use_compile, steps, batch_size):
    args = ['--data=shapes', '--img_size=64', '--patch_size=8', f'--method={method}', f'--steps={steps}',
            f'--batch_size={batch_size}', f'--log_every={steps}', '--probe=False', f'--triton_kernels={use_kernels}',
            f'--compile={use_compile}', f'--out_dir={tempfile.mkdtemp(prefix="bench_")}'] + SIZES[size]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        model, _, stats = jepa.train(jepa.parse_args(args))
    warm = next((line for line in out.getvalue().splitlines() if line.startswith('warm-up')), '')
    return stats['img_per_s'], warm.split('took ')[-1].split(' s')[0] if warm else '?', path_taken(model)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--steps', type=int, default=0, help='timed steps per row (default 60 on CUDA, 6 on CPU)')
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
    print(f"whole training step, {device}, torch {torch.__version__}, triton {tv}, batch {batch}, {steps} steps "
          f"per row, 64 px, patch 8" + ('' if cuda else ' (kernel rows need CUDA: skipped)'))
    print(f"{'method':<8} {'size':<9} {'kernels':<8} {'compile':<8} | {'img/s':>8} | {'warm-up s':>9} | path")
    for method in a.methods.split(','):
        for size in a.sizes.split(','):
            for use_compile in (False, True):
                for use_kernels in ((False, True) if cuda else (False,)):
                    try:
                        ips, warm, path = run(method, size, use_kernels, use_compile, steps, batch)
                        print(f"{method:<8} {size:<9} {str(use_kernels):<8} {str(use_compile):<8} | {ips:8.0f} | "
                              f"{warm:>9} | {path}", flush=True)
                    except Exception as e:  # one failing row (e.g. no C compiler for inductor) does not end the table
                        print(f"{method:<8} {size:<9} {str(use_kernels):<8} {str(use_compile):<8} | {'-':>8} | "
                              f"{'-':>9} | failed: {type(e).__name__}: {str(e).strip().splitlines()[-1][:100]}", flush=True)


if __name__ == '__main__':
    main()
