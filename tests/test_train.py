"""End-to-end on a tiny model: training lowers the loss, checkpoints round-trip and resume exactly."""
import json
import os
import shutil

import pytest
import torch

import jepa


def run(args):
    cfg = jepa.parse_args(args)
    model, data, stats = jepa.train(cfg)
    return cfg, model, stats


def losses(run_dir):
    with open(os.path.join(run_dir, 'log.jsonl')) as f:
        return [json.loads(line)['loss'] for line in f]


def test_tiny_ijepa_run_lowers_the_loss(tiny_args):
    # 80 steps: with the default constant EMA momentum the targets keep moving (a teacher frozen by a momentum
    # rising to 1 made 40 enough)
    cfg, model, stats = run(tiny_args + ['--steps=80', '--lr=2e-3', '--warmup=0.05'])
    ls = losses(stats['run_dir'])
    assert len(ls) == 16 and ls[-1] < 0.7 * ls[0], ls
    assert stats['steps'] == 80 and stats['img_per_s'] > 0


@pytest.mark.parametrize('method', ['ijepa_sigreg', 'lejepa', 'sparse', 'infonce'])
def test_every_method_trains_a_few_steps(tiny_args, method):
    cfg, model, stats = run(tiny_args + [f'--method={method}', '--steps=10'])
    ls = losses(stats['run_dir'])
    assert all(torch.isfinite(torch.tensor(ls))) and len(ls) == 2
    if method == 'sparse':
        with open(os.path.join(stats['run_dir'], 'log.jsonl')) as f:
            rec = json.loads(f.readlines()[-1])
        assert 'omega' in rec and 'group_sparsity' in rec


def test_the_prox_step_zeroes_whole_groups_exactly(tiny_args):
    """At a lambda large enough, the group-lasso prox step sets whole (group, latent) blocks of the predictor's
    input projection to exactly 0.0 (every entry, not merely small), the others stay nonzero, and the logged
    group sparsity is what the weights say."""
    cfg, model, stats = run(tiny_args + ['--method=sparse', '--steps=10', '--group_lambda=2', '--warmup=0'])
    W = model.predictor.embed.weight.detach()  # (Dp, D)
    blocks = W.view(cfg['num_groups'], -1, W.shape[1])  # (G, Dp/G, D)
    zero = (blocks == 0).all(1)  # (G, D): blocks whose every entry is exactly zero
    assert 0 < zero.sum() < zero.numel(), zero.sum()
    assert ((blocks != 0).all(1) | zero).all()  # a block is all zero or has no zero entry: the prox zeroes blocks
    with open(os.path.join(stats['run_dir'], 'log.jsonl')) as f:
        rec = json.loads(f.readlines()[-1])
    assert rec['group_sparsity'] == pytest.approx((~zero).sum(0).float().mean().item())


def test_the_predictor_steps_at_pred_lr_times_the_lr(tiny_args):
    """Adam's first step moves each weight by about lr (m / sqrt(v) is the gradient's sign), so after one step
    at full lr the predictor's weights have moved pred_lr times as far as the encoder's."""
    cfg, model, _ = run(tiny_args + ['--steps=1', '--warmup=0', '--lr=1e-3', '--pred_lr=5', '--weight_decay=0',
                                     '--weight_decay_end=0', '--probe=False'])
    init = jepa.build_model(cfg, 'cpu').state_dict()

    def step_size(prefix):
        moved = torch.cat([(p - init[n]).abs().flatten() for n, p in model.state_dict().items()
                           if n.startswith(prefix) and p.dtype.is_floating_point])
        return moved[moved > 0].median().item()
    peak = jepa.derive(cfg)['peak_lr']  # lr * 128 / width
    assert peak == pytest.approx(4e-3)
    assert step_size('encoder.') == pytest.approx(peak, rel=0.02)
    assert step_size('predictor.') == pytest.approx(5 * peak, rel=0.02)


def test_the_group_lasso_threshold_follows_the_predictors_lr(tiny_args, tmp_path):
    """The proximal step belongs to W's own gradient step, so its threshold is W's lr (lr * pred_lr) times lambda:
    at --pred_lr=1e-9 W moves by less than 1e-7; at 1, lambda 1e3 (threshold 1, far above any column norm
    of a 0.02-std init) zeroes every column of every group."""
    args = tiny_args + ['--method=sparse', '--steps=1', '--warmup=0', '--lr=1e-3', '--group_lambda=1e3', '--probe=False']
    cfg, still, _ = run(args + ['--pred_lr=1e-9'])
    init = jepa.build_model(cfg, 'cpu').predictor.embed.weight
    assert torch.allclose(still.predictor.embed.weight, init, rtol=0, atol=1e-7) and (init != 0).all()
    _, shrunk, _ = run(args + ['--pred_lr=1', f'--out_dir={tmp_path / "run1"}'])
    assert (shrunk.predictor.embed.weight == 0).all()


def test_checkpoint_round_trip_and_resume_is_exact(tiny_args, tmp_path):
    """Interrupt a 4-epoch run after epoch 2 (drop its later checkpoints and log lines) and resume it: it ends
    with exactly the weights and logged losses of the uninterrupted run, because data order, augmentation,
    masks and SIGReg directions are all seeded by (seed, epoch or step)."""
    args = [a for a in tiny_args if not a.startswith('--out_dir')] + ['--epochs=4', '--probe=False', '--batch_size=250']
    full_dir, part_dir = tmp_path / 'full', tmp_path / 'part'
    _, full, _ = run(args + [f'--out_dir={full_dir}'])
    ckpts = jepa.list_checkpoints(str(full_dir))
    assert len(ckpts) == 4
    ck = jepa.load_checkpoint(ckpts[1])  # loads with weights_only=True
    assert ck['epoch'] == 2 and isinstance(ck['config'], dict)
    part_dir.mkdir()
    shutil.copy(ckpts[1], part_dir)
    with open(full_dir / 'log.jsonl') as f:  # an interrupted run may have logged past its last checkpoint
        lines = [line for line in f if json.loads(line)['step'] <= ck['step'] + 12]
    (part_dir / 'log.jsonl').write_text(''.join(lines))
    _, resumed, _ = run(args + [f'--out_dir={part_dir}', '--resume=True'])
    for (n, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), n
    assert losses(str(full_dir)) == losses(str(part_dir))


def test_resume_without_checkpoint_is_a_clear_error(tiny_args):
    with pytest.raises(jepa.UserError, match='no checkpoint'):
        run(tiny_args + ['--steps=2', '--resume=True'])


def test_summary_reports_probe_and_baseline(tiny_args, capsys):
    out = jepa.main(tiny_args + ['--steps=5'])
    for key in ('probe_acc', 'probe_acc_random_init', 'train_seconds', 'img_per_s', 'params_M'):
        assert key in out
    printed = capsys.readouterr().out
    assert 'probe_acc:' in printed and 'probe_acc_random_init:' in printed
