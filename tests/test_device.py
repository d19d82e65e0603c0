"""What a run does on each GPU a learner may have, decided from the compute capability alone (so tested on CPU):
precision, loss scaling, the Triton kernels, and the device line that states them; the fp16 path with loss
scaling trains; TF32 stays inside the training step; the clock waits for the GPU before it is read."""
import json

import pytest
import torch

import jepa
import probe

pytest.importorskip('triton', reason='triton is not installed (make install adds it where it installs)')


@pytest.mark.parametrize('capability,dtype,scaler,kernels', [
    ((7, 5), torch.float16, True, False),   # T4 (Colab): no native bf16, no tensor-core dots from Triton
    ((8, 0), torch.bfloat16, False, True),  # A100
    ((8, 6), torch.bfloat16, False, True),  # RTX 30, A10
    ((8, 9), torch.bfloat16, False, True),  # RTX 40, L4
    ((9, 0), torch.bfloat16, False, True),  # H100
])
def test_device_policy_per_gpu(capability, dtype, scaler, kernels):
    policy = jepa.device_policy('cuda', True, capability)
    assert (policy.dtype, policy.scaler, policy.kernels) == (dtype, scaler, kernels)
    assert f"sm_{capability[0]}{capability[1]}" in policy.why
    assert ('fp16 autocast with loss scaling' in policy.why) == scaler and ('bf16 autocast' in policy.why) != scaler
    assert not jepa.device_policy('cuda', False, capability).kernels  # --triton_kernels=False wins everywhere


def test_device_line_names_precision_and_paths(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda *a: 'Tesla T4')
    line = jepa.device_line('cuda', jepa.device_policy('cuda', True, (7, 5)))
    assert line.startswith('device: cuda (Tesla T4), sm_75: fp16 autocast with loss scaling') and 'SDPA attention' in line
    assert 'PyTorch SIGReg' in line and 'no tensor-core dots below sm_80' in line


def test_fp16_with_loss_scaling_trains_and_resumes(tiny_args, tmp_path, monkeypatch):
    """The T4 path (fp16 autocast, a gradient scaler), run on CPU where autocast takes fp16 too: it trains, its
    checkpoints carry the scaler's state, and a resumed run ends where an uninterrupted one does."""
    monkeypatch.setattr(jepa, 'device_policy', lambda dev, kernels=True, capability=None:
                        jepa.Policy(torch.float16, True, False, 'fp16 autocast with loss scaling (test)'))
    import shutil
    args = [a for a in tiny_args if not a.startswith(('--out_dir', '--batch_size'))] + ['--batch_size=2000', '--probe=False',
                                                                                       '--epochs=2']
    _, _, stats = jepa.train(jepa.parse_args(args + [f'--out_dir={tmp_path / "full"}']))
    ckpts = jepa.list_checkpoints(str(tmp_path / 'full'))
    assert stats['steps'] == 10 and stats['final_loss'] == stats['final_loss'] and len(ckpts) == 2
    assert jepa.load_checkpoint(ckpts[0])['scaler']['scale'] > 0
    (tmp_path / 'part').mkdir()
    shutil.copy(ckpts[0], tmp_path / 'part')
    jepa.train(jepa.parse_args(args + [f'--out_dir={tmp_path / "part"}', '--resume=True']))
    a, b = (jepa.load_checkpoint(jepa.list_checkpoints(str(tmp_path / r))[-1]) for r in ('full', 'part'))
    assert a['scaler'] == b['scaler']
    for k in a['model']:
        assert torch.equal(a['model'][k], b['model'][k]), k


def test_tf32_is_restored_and_the_summary_probe_equals_probe_py(tiny_args, tmp_path):
    """Training turns TF32 on for its own steps only: afterwards the global setting is what it was, so the
    summary's linear probe and probe.py on the final checkpoint compute in the same precision and agree."""
    torch.backends.cuda.matmul.allow_tf32 = False
    args = [a for a in tiny_args if not a.startswith('--batch_size')] + ['--steps=4', '--batch_size=16']
    out = jepa.main(args)
    assert torch.backends.cuda.matmul.allow_tf32 is False
    run = [a.split('=', 1)[1] for a in tiny_args if a.startswith('--out_dir')][0]
    rows = probe.main([f'--ckpt={run}', '--knn=False'])
    assert rows[-1]['linear'] == out['probe_acc'] and rows[0]['linear'] == out['probe_acc_random_init']
    with open(f'{run}/summary.json') as f:
        assert json.load(f)['probe_acc'] == out['probe_acc']


def test_clock_synchronises_the_gpu_before_it_is_read(monkeypatch):
    """On CUDA the step time is the GPU's, not the host's enqueue time: start and read wait for queued work."""
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda *a: calls.append(a))
    clock = jepa.Clock('cuda:0', 10.0)
    assert clock.elapsed() == 10.0 and not calls  # before the first step: what a resumed run had
    assert clock.start(1) >= 0 and clock.first == 1 and len(calls) == 1
    assert clock.elapsed(sync=True) >= 10.0 and len(calls) == 2
    assert clock.elapsed() >= 10.0 and len(calls) == 2  # the host's estimate: no wait
    jepa.Clock('cpu', 0.0).elapsed(sync=True)
    assert len(calls) == 2
