"""Data parallelism through torchrun: SIGReg's all-reduce gives the global batch's statistic and gradient, and a
2-process run (gloo on CPU) trains every method, writes one summary and one set of checkpoints, and resumes exactly."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import jepa
from conftest import ROOT, TINY

N, D, M, STEP = 24, 6, 16, 3  # samples per process, embedding dim, slices, the step that seeds the directions


def batch_and_head():
    """The global batch (2N, D) and a linear head (D, D), in float64, the same in every process."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2 * N, D, generator=g, dtype=torch.float64) @ torch.randn(D, D, generator=g, dtype=torch.float64)
    head = nn.Linear(D, D, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.eye(D, dtype=torch.float64) + 0.1 * torch.randn(D, D, generator=g, dtype=torch.float64))
        head.bias.zero_()
    return z, head


def sigreg_on_shards(rank, init_file, out_file):
    """One process of two: SIGReg of its half of the batch through a DDP-wrapped head; rank 0 saves value and grads."""
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        z, head = batch_and_head()
        ddp = nn.parallel.DistributedDataParallel(head)
        loss = jepa.sigreg(ddp(z[rank * N:(rank + 1) * N]), STEP, M)
        loss.backward()  # DDP averages the two processes' gradients
        if rank == 0:
            torch.save({'loss': loss.detach(), 'weight': head.weight.grad, 'bias': head.bias.grad}, out_file)
    finally:
        dist.destroy_process_group()


def test_sigreg_under_ddp_equals_one_process_on_the_whole_batch(tmp_path):
    """Value and gradient of SIGReg on two processes' shards equal one process on the concatenated batch (1e-10):
    the statistic is the global batch's, and its gradient is not 1/2 too small."""
    out = tmp_path / 'ddp.pt'
    mp.spawn(sigreg_on_shards, args=(str(tmp_path / 'init'), str(out)), nprocs=2)
    z, head = batch_and_head()
    loss = jepa.sigreg(head(z), STEP, M)
    loss.backward()
    got = torch.load(out)
    assert not dist.is_initialized()
    torch.testing.assert_close(got['loss'], loss.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got['weight'], head.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got['bias'], head.bias.grad, rtol=1e-10, atol=1e-10)
    assert head.weight.grad.abs().max() > 1e-3  # a real gradient, not zeros on both sides


def torchrun(args, cwd=ROOT):
    """python -m torch.distributed.run --nproc_per_node=2 jepa.py ARGS -> the finished process (gloo, CPU)."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(ROOT, 'jepa.py'), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize('method', list(jepa.METHODS))
def test_torchrun_trains_every_method_with_one_summary_and_one_set_of_checkpoints(method, tmp_path):
    out_dir = tmp_path / method
    args = [a for a in TINY if not a.startswith('--batch_size')] + [
        '--batch_size=64', '--epochs=1', '--steps=6', '--log_every=3', '--device=cpu', f'--method={method}',
        f'--out_dir={out_dir}']
    p = torchrun(args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count('-- summary') == 1 and '2 processes (torchrun)' in p.stdout, p.stdout
    summary = json.loads((out_dir / 'summary.json').read_text())
    assert summary['steps'] == 6 and summary['probe_acc'] > 0
    assert [os.path.basename(c) for c in jepa.list_checkpoints(str(out_dir))] == ['ckpt_0000006.pt']
    log = [json.loads(line) for line in (out_dir / 'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in log] == [3, 6]
    assert json.loads((out_dir / 'config.json').read_text())['processes'] == 2


def test_torchrun_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path):
    """Two epochs on two processes; a copy of the run cut back to its first checkpoint, resumed, ends with the
    same weights and logged losses, bit for bit."""
    args = [a for a in TINY if not a.startswith('--batch_size')] + [
        '--batch_size=1000', '--epochs=2', '--log_every=2', '--probe=False', '--device=cpu', '--method=ijepa_sigreg']
    full, part = tmp_path / 'full', tmp_path / 'part'
    p = torchrun(args + [f'--out_dir={full}'])
    assert p.returncode == 0, p.stderr[-3000:]
    ckpts = jepa.list_checkpoints(str(full))
    assert len(ckpts) == 2
    part.mkdir()
    shutil.copy(ckpts[0], part)
    first = jepa.load_checkpoint(ckpts[0])['step']
    lines = [line for line in (full / 'log.jsonl').read_text().splitlines(True) if json.loads(line)['step'] <= first]
    (part / 'log.jsonl').write_text(''.join(lines))
    p = torchrun(args + [f'--out_dir={part}', '--resume=True'])
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = (jepa.load_checkpoint(jepa.list_checkpoints(str(d))[-1])['model'] for d in (full, part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(line)['loss'] for line in (d / 'log.jsonl').read_text().splitlines()] for d in (full, part)]
    assert losses[0] == losses[1] and len(losses[0]) == 10


def test_a_batch_that_does_not_split_over_the_processes_is_one_clear_error(tmp_path):
    p = torchrun(TINY + ['--batch_size=33', '--steps=2', f'--out_dir={tmp_path / "run"}', '--device=cpu'])
    assert p.returncode != 0
    assert p.stderr.count('error: --batch_size=33 is not divisible by the 2 processes') == 1, p.stderr[-2000:]
