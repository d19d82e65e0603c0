"""Shared test set-up: the repository root on sys.path, Triton's interpreter where there is no CUDA GPU (the
kernels then run on CPU tensors; on a GPU they run compiled), small hypothesis budgets for a 2-core CI machine,
and a tiny model configuration that trains in seconds on a CPU."""
import os
import sys

import pytest
import torch
from hypothesis import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
if not torch.cuda.is_available():  # before triton is imported: @triton.jit reads it
    os.environ.setdefault('TRITON_INTERPRET', '1')
DEV = 'cuda' if torch.cuda.is_available() else 'cpu'  # where the kernel tests run
# relative tolerance of a training loss through the kernels against the PyTorch path: exact fp32 on CPU; on CUDA
# both run under bf16 autocast, the kernels with bf16 tensor-core dots and sin.approx, SDPA with its own rounding
LOSS_RTOL = 2e-2 if DEV == 'cuda' else 1e-3

settings.register_profile('ci', max_examples=25, deadline=None, derandomize=True, database=None)
settings.load_profile('ci')

TINY = ['--img_size=16', '--patch_size=4', '--width=32', '--depth=1', '--heads=2', '--pred_width=16',
        '--pred_depth=1', '--pred_heads=1', '--batch_size=32', '--num_slices=32', '--log_every=5',
        '--proj_dim=16', '--local_views=2', '--num_groups=4', '--triton_kernels=False']


@pytest.fixture
def tiny_args(tmp_path):
    return TINY + [f'--out_dir={tmp_path / "run"}']
