import json

import pytest

import jepa


def test_override_and_int_accepted_for_float():
    cfg = jepa.parse_args(['--lr=1', '--epochs=3', '--compile=True', '--method=lejepa'])
    assert cfg['lr'] == 1.0 and isinstance(cfg['lr'], float)
    assert cfg['epochs'] == 3 and cfg['compile'] is True and cfg['method'] == 'lejepa'


def test_peak_lr_follows_width():
    """The run's peak lr is lr * 128 / width (Adam's muP rule): the config's lr is the width-128 value."""
    assert jepa.derive(jepa.parse_args([]))['peak_lr'] == pytest.approx(1e-3)
    assert jepa.derive(jepa.parse_args(['--width=192', '--heads=3']))['peak_lr'] == pytest.approx(1e-3 * 128 / 192)
    assert jepa.derive(jepa.parse_args(['--width=64', '--heads=2', '--lr=5e-4']))['peak_lr'] == pytest.approx(1e-3)
    assert jepa.parse_args(['--width=192', '--heads=3', '--lr=5e-4'])['lr'] == 5e-4  # the key keeps its value


def test_ema_momentum_keeps_the_teachers_window_in_images():
    """The momenta are ema ** (B / 16) and ema_end ** (B / 16) (the EMA scaling rule: B / (1 - m), the images the
    teacher averages over, stays about 1,600 at any batch), 0 included."""
    for B in (16, 128):
        d = jepa.derive(jepa.parse_args([f'--batch_size={B}']))
        assert d['momentum'] == pytest.approx(0.99 ** (B / 16)) and d['momentum_end'] == d['momentum']
        assert B / (1 - d['momentum']) == pytest.approx(1600, rel=0.04)
    d = jepa.derive(jepa.parse_args(['--ema=0.996', '--ema_end=1.0']))
    assert (d['momentum'], d['momentum_end']) == (0.996, 1.0)
    assert jepa.derive(jepa.parse_args(['--ema=0', '--ema_end=0']))['momentum'] == 0.0  # a teacher that copies


def test_method_records_set_their_own_values_and_arguments_win():
    """pred_lr is 0.3 in the config block (ijepa) and 1 in the records of ijepa_sigreg and sparse; sigreg_weight is
    0.05 (ijepa_sigreg) and 0.1 in lejepa's record; a value given on the command line wins, 0 included."""
    assert jepa.parse_args([])['pred_lr'] == 0.3
    for method in ('sparse', 'ijepa_sigreg'):
        assert jepa.parse_args([f'--method={method}'])['pred_lr'] == 1.0
    assert jepa.parse_args(['--method=sparse', '--pred_lr=0'])['pred_lr'] == 0.0
    assert jepa.parse_args(['--method=lejepa'])['sigreg_weight'] == 0.1
    assert jepa.parse_args(['--method=ijepa_sigreg'])['sigreg_weight'] == 0.05
    assert jepa.parse_args(['--method=lejepa', '--sigreg_weight=0'])['sigreg_weight'] == 0.0
    with pytest.raises(jepa.UserError, match='lambda'):
        jepa.parse_args(['--method=lejepa', '--sigreg_weight=-0.5'])


def help_values(argv, capsys):
    """-h's printed values -> {key: value as text}, {derived name: value as text}."""
    with pytest.raises(SystemExit):
        jepa.parse_args(argv + ['-h'])
    lines = capsys.readouterr().out.splitlines()
    keys = dict(line.split()[0][2:].split('=', 1) for line in lines if line.startswith('  --'))
    derived = dict(line.split(' = ') for line in lines[lines.index('derived (not keys):') + 1:])
    return keys, {k.strip(): float(v) for k, v in derived.items()}


@pytest.mark.parametrize('method', list(jepa.METHODS))
def test_help_shows_the_values_the_run_uses(method, tiny_args, capsys):
    """`--method=M -h` prints every key with the value a run of M with the same arguments saves in config.json,
    and the derived values it saves beside them."""
    argv = tiny_args + [f'--method={method}', '--steps=1', '--probe=False', '--batch_size=16']
    keys, derived = help_values(argv, capsys)
    jepa.train(jepa.parse_args(argv))
    with open(jepa.parse_args(argv)['out_dir'] + '/config.json') as f:
        saved = json.load(f)
    assert keys == {k: str(v) for k, v in saved['config'].items()}
    assert derived == pytest.approx(saved['derived'], rel=1e-5)


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
