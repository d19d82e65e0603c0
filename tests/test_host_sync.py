"""No training step waits on the device: counted on CPU, where host and device tensors look alike, over the
operations that would synchronise a CUDA device (a scalar read back, nonzero's data-dependent shape, a tensor
built from Python data, tolist). The steps between two log lines use none of them; a log step reads its numbers
back at most twice (the non-finite check and the logged values)."""
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import jepa

SYNCS = {'aten._local_scalar_dense.default', 'aten.nonzero.default', 'aten.lift_fresh.default', 'aten.item.default',
         'aten.equal.default', 'aten.is_nonzero.default'}


class SyncCounter(TorchDispatchMode):
    """Counts, per training step, the operations above (tolist bypasses the dispatcher: wrapped separately)."""
    def __init__(self):
        super().__init__()
        self.step, self.per_step = 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNCS:
            self.per_step[self.step] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('method', jepa.METHODS)
@pytest.mark.parametrize('use_kernels', [False, True])
def test_steps_between_log_lines_never_sync(tiny_args, method, use_kernels, monkeypatch):
    if use_kernels:
        pytest.importorskip('triton')
    counter = SyncCounter()
    real_generator, real_tolist = jepa.step_generator, torch.Tensor.tolist

    def step_generator(seed, step, dev, rank=0):  # called once at the start of every step
        counter.step = step + 1
        return real_generator(seed, step, dev, rank)

    def tolist(self):
        counter.per_step[counter.step] += 1
        return real_tolist(self)
    monkeypatch.setattr(jepa, 'step_generator', step_generator)
    monkeypatch.setattr(torch.Tensor, 'tolist', tolist)
    args = [a for a in tiny_args if not a.startswith(('--triton_kernels', '--log_every', '--batch_size'))]
    cfg = jepa.parse_args(args + [f'--method={method}', '--steps=9', '--log_every=4', '--probe=False',
                                  '--batch_size=8', f'--triton_kernels={use_kernels}'])
    with counter:
        jepa.train(cfg)
    steps = {s: counter.per_step[s] for s in range(5, 9)}  # steps 5-8: after the first log line (step 4)
    assert steps[5] == steps[6] == steps[7] == 0, steps
    assert steps[8] <= 2, steps  # the log step
