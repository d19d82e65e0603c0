"""Runs that stop: SIGKILL at random moments never leaves an unloadable newest checkpoint; non-finite losses stop
the run with the step and term named; torchrun with 2 CPU processes (gloo) gives the single-process SIGReg and
trains."""
import os
import random
import signal
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import jepa
import probe
from test_data import jpeg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--img_size=16', '--width=32', '--depth=1', '--heads=2', '--pred_width=16', '--pred_depth=1',
        '--pred_heads=1', '--probe=False', '--log_every=2']


def tiny_folder(root, classes=2, per_class=20):
    for c in range(classes):
        os.makedirs(root / f'c{c}')
        for i in range(per_class):
            (root / f'c{c}' / f'{i}.png').write_bytes(jpeg((100 * c, 5 * i, 50), size=(16, 16)))
    return root


def test_sigkill_at_random_moments_never_loses_the_run(tmp_path):
    data = tiny_folder(tmp_path / 'imgs')  # 36 train images, batch 6: a checkpoint every 6 steps
    run_dir = tmp_path / 'run'
    base = [sys.executable, os.path.join(ROOT, 'jepa.py')] + TINY + [
        '--data=folder', f'--data_dir={data}', '--batch_size=6', '--epochs=100000', f'--out_dir={run_dir}']
    rng = random.Random(0)
    kills, steps_seen = 0, []
    while kills < 20:
        before = jepa.list_checkpoints(str(run_dir))
        resume = ['--resume=True'] if before else []
        proc = subprocess.Popen(base + resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
        if kills % 2 == 0 or not before:  # wait until this process has written a checkpoint of its own,
            deadline = time.time() + 120   # then kill within half a second: mid-step or mid-write
            while (jepa.list_checkpoints(str(run_dir))[-1:] == before[-1:] and time.time() < deadline
                   and proc.poll() is None):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # anywhere in the first 3 s: often during start-up or the resume itself
            time.sleep(rng.uniform(0.0, 3.0))
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        newest = jepa.list_checkpoints(str(run_dir))[-1]
        ck = jepa.load_checkpoint(newest)  # must load, with weights_only=True, every time
        probe.model_from_checkpoint(ck)
        steps_seen.append(ck['step'])
    assert steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0], steps_seen
    last = steps_seen[-1]
    r = subprocess.run(base[:-2] + ['--epochs=100000', f'--steps={last + 6}', f'--out_dir={run_dir}', '--resume=True'],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert 'resumed from' in r.stdout and jepa.load_checkpoint(jepa.list_checkpoints(str(run_dir))[-1])['step'] == last + 6


def test_non_finite_loss_stops_with_step_and_term_and_keeps_checkpoint(tmp_path, capsys):
    data = tiny_folder(tmp_path / 'imgs')
    args = TINY + ['--data=folder', f'--data_dir={data}', '--batch_size=6', f'--out_dir={tmp_path / "r"}']
    assert jepa.cli(jepa.main, args + ['--steps=6']) == 0  # one good epoch, one checkpoint
    good = jepa.list_checkpoints(str(tmp_path / 'r'))
    code = jepa.cli(jepa.main, args + ['--steps=12', '--resume=True', '--lr=1e30', '--warmup=0'])
    err = capsys.readouterr().err
    assert code == 2 and 'non-finite' in err and 'at step' in err and 'Traceback' not in err, err
    assert jepa.list_checkpoints(str(tmp_path / 'r')) == good  # nothing written after the bad step
    jepa.load_checkpoint(good[-1])


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _sigreg_worker(rank, world, port, X, out):
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world)
    torch.manual_seed(0)
    proj = torch.nn.Linear(X.shape[1], 16, bias=False).double()  # a shared parameter, as under DDP
    shard = X.chunk(world)[rank]
    value = jepa.sigreg(proj(shard), step=3)
    value.backward()
    dist.all_reduce(proj.weight.grad)  # what DDP does: average the parameter gradients over ranks
    out[rank] = torch.cat([value.detach().view(1), (proj.weight.grad / world).flatten()])
    dist.destroy_process_group()


def test_distributed_sigreg_equals_single_process_on_the_whole_batch():
    X = torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = mp.Manager().dict()
    mp.spawn(_sigreg_worker, args=(2, free_port(), X, out), nprocs=2, join=True)
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, 16, bias=False).double()
    value = jepa.sigreg(proj(X), step=3)
    value.backward()
    single = torch.cat([value.detach().view(1), proj.weight.grad.flatten()])
    for rank in (0, 1):
        err = (out[rank] - single).abs().max().item()
        print(f"rank {rank}: max |distributed - single| = {err:.2e} (value and gradient)")
        assert err < 1e-10


def test_torchrun_two_cpu_processes_train_and_checkpoint(tmp_path):
    data = tiny_folder(tmp_path / 'imgs')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           os.path.join(ROOT, 'jepa.py')] + TINY + ['--data=folder', f'--data_dir={data}', '--batch_size=6',
                                                   '--steps=12', '--method=lejepa', f'--out_dir={tmp_path / "r"}']
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert 'x 2 processes' in r.stdout
    ckpts = jepa.list_checkpoints(str(tmp_path / 'r'))
    assert ckpts and jepa.load_checkpoint(ckpts[-1])['step'] == 12
    probe.model_from_checkpoint(jepa.load_checkpoint(ckpts[-1]))
