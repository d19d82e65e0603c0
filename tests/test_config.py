import pytest

import jepa


def test_override_and_int_accepted_for_float():
    cfg = jepa.parse_args(['--lr=1', '--epochs=3', '--compile=True', '--method=lejepa'])
    assert cfg['lr'] == 1.0 and isinstance(cfg['lr'], float)
    assert cfg['epochs'] == 3 and cfg['compile'] is True and cfg['method'] == 'lejepa'


def test_default_lr_follows_width_unless_given():
    """lr defaults to 1e-3 at width 128 and scales as 128/width (Adam's muP rule); a given lr is kept as is."""
    assert jepa.parse_args([])['lr'] == pytest.approx(1e-3)
    assert jepa.parse_args(['--width=192', '--heads=3'])['lr'] == pytest.approx(1e-3 * 128 / 192)
    assert jepa.parse_args(['--width=64', '--heads=2'])['lr'] == pytest.approx(2e-3)
    assert jepa.parse_args(['--width=192', '--heads=3', '--lr=5e-4'])['lr'] == 5e-4
    assert jepa.parse_args(['--width=192', '--heads=3', '--lr=1e-3'])['lr'] == 1e-3  # given: not rescaled


def test_default_ema_keeps_the_teachers_window_in_images_unless_given():
    """ema defaults to 0.99 at batch 16 and 0.99 ** (B / 16) at batch B (the EMA scaling rule: B / (1 - m), the
    images the teacher averages over, stays about 1,600); ema_end follows ema; given values are kept, 0 included."""
    for B in (16, 128):
        cfg = jepa.parse_args([f'--batch_size={B}'])
        assert cfg['ema'] == pytest.approx(0.99 ** (B / 16)) and cfg['ema_end'] == cfg['ema']
        assert B / (1 - cfg['ema']) == pytest.approx(1600, rel=0.04)
    assert jepa.parse_args(['--batch_size=128', '--ema=0.996'])['ema_end'] == 0.996
    assert jepa.parse_args(['--ema=0.996', '--ema_end=1.0'])['ema_end'] == 1.0
    cfg = jepa.parse_args(['--ema=0'])  # a teacher that copies the student every step: expressible
    assert cfg['ema'] == 0.0 and cfg['ema_end'] == 0.0


def test_default_pred_lr_is_slower_for_ijepa_only_unless_given():
    """pred_lr defaults to 0.3 for ijepa and 1 for the other methods; a given value is kept, 0 (a frozen
    predictor) included."""
    assert jepa.parse_args([])['pred_lr'] == 0.3
    for method in ('sparse', 'ijepa_sigreg', 'lejepa'):
        assert jepa.parse_args([f'--method={method}'])['pred_lr'] == 1.0
    assert jepa.parse_args(['--pred_lr=10'])['pred_lr'] == 10.0
    assert jepa.parse_args(['--pred_lr=0'])['pred_lr'] == 0.0


def test_default_sigreg_weight_is_per_method_unless_given():
    """sigreg_weight defaults to 0.1 for lejepa and 0.05 for ijepa_sigreg; a given value, 0 included (SIGReg off),
    is kept, and a negative one is refused."""
    assert jepa.parse_args(['--method=lejepa'])['sigreg_weight'] == 0.1
    assert jepa.parse_args(['--method=ijepa_sigreg'])['sigreg_weight'] == 0.05
    assert jepa.parse_args(['--method=lejepa', '--sigreg_weight=0'])['sigreg_weight'] == 0.0
    assert jepa.parse_args(['--method=ijepa_sigreg', '--sigreg_weight=0.3'])['sigreg_weight'] == 0.3
    with pytest.raises(jepa.UserError, match='lambda'):
        jepa.parse_args(['--method=lejepa', '--sigreg_weight=-0.5'])


def test_required_keys_exist():
    for key in ('data', 'data_dir', 'out_dir', 'epochs', 'steps', 'budget_minutes', 'batch_size', 'seed',
                'resume', 'device', 'compile'):
        assert key in jepa.CONFIG_KEYS


def test_unknown_key_suggests_closest():
    with pytest.raises(jepa.UserError, match='did you mean --batch_size'):
        jepa.parse_args(['--batchsize=3'])


@pytest.mark.parametrize('arg, msg', [
    ('--epochs=two', 'expected int'),
    ('--batch_size=-4', 'positive'),
    ('--pred_depth=0', 'positive'),
    ('--patch_size=5', 'does not divide'),
    ('--heads=5', 'does not divide'),
    ('--width=40', 'divisible by 4'),  # 40 / 4 heads = head dim 10: no room for 2-D RoPE pairs
    ('--method=byol', 'choose one of'),
    ('--data=imagenet', 'choose one of'),
    ('--compile=maybe', 'expected bool'),
    ('epochs=3', 'not of the form'),
])
def test_bad_values_are_rejected(arg, msg):
    with pytest.raises(jepa.UserError, match=msg):
        jepa.parse_args([arg])


def test_help_lists_every_key(capsys):
    with pytest.raises(SystemExit) as e:
        jepa.parse_args(['-h'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key in jepa.CONFIG_KEYS:
        assert f'--{key}=' in out, key
