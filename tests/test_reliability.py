"""Runs that stop: SIGKILL at random moments never leaves an unloadable newest checkpoint; non-finite losses stop
the run with the step and term named."""
import os
import random
import signal
import subprocess
import sys
import time


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
