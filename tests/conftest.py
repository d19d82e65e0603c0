"""Shared test set-up: the repository root on sys.path, small hypothesis budgets for a 2-core CI machine,
and a tiny model configuration that trains in seconds on a CPU."""
import os
import sys

import pytest
from hypothesis import settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TRITON_INTERPRET', '1')  # kernels run in Triton's interpreter on CPU tensors

settings.register_profile('ci', max_examples=25, deadline=None, derandomize=True, database=None)
settings.load_profile('ci')

TINY = ['--img_size=16', '--patch_size=4', '--width=32', '--depth=1', '--heads=2', '--pred_width=16',
        '--pred_depth=1', '--pred_heads=1', '--batch_size=32', '--num_slices=32', '--log_every=5',
        '--proj_dim=16', '--local_views=2', '--num_groups=4', '--triton_kernels=False']


@pytest.fixture
def tiny_args(tmp_path):
    return TINY + [f'--out_dir={tmp_path / "run"}']
