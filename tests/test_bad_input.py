"""Every kind of bad input ends in a short `error:` message and exit code 2, never a traceback.
Most cases call the same entry point as the command line (jepa.cli) in-process; a few run the real command."""
import io
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest
import torch

import jepa
import probe
from test_data import jpeg, write_cifar_tar, write_tinyimagenet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ['--steps=2', '--probe=False', '--img_size=16', '--width=32', '--depth=1', '--heads=2', '--pred_width=16',
        '--pred_depth=1', '--pred_heads=1', '--batch_size=8', '--triton_kernels=False']


def run_cli(main_fn, argv, capsys):
    code = jepa.cli(main_fn, argv)
    err = capsys.readouterr().err
    return code, err


def assert_clean_error(code, err, match):
    assert code == 2, err
    assert err.startswith('error: ') and 'Traceback' not in err, err
    assert len(err.strip().splitlines()) <= 3, err
    assert match.lower() in err.lower(), err


@pytest.fixture
def files(tmp_path):
    """Bad files of every kind, written on demand."""
    def make(kind):
        p = tmp_path / kind
        if kind == 'empty_dir':
            p.mkdir()
        elif kind == 'no_images_dir':
            (p / 'cat').mkdir(parents=True)
            (p / 'cat' / 'notes.txt').write_text('not an image')
        elif kind == 'corrupt_image_dir':
            (p / 'cat').mkdir(parents=True)
            for i in range(12):
                (p / 'cat' / f'{i}.jpg').write_bytes(jpeg((i, 0, 0), size=(20, 20)))
            (p / 'cat' / 'bad.jpg').write_bytes(b'\xff\xd8 this is not a jpeg')
        elif kind == 'flat_dir':  # images but no class sub-folders
            p.mkdir()
            (p / 'a.jpg').write_bytes(jpeg((1, 2, 3)))
        elif kind == 'truncated.zip':
            write_tinyimagenet(tmp_path / 'good.zip')
            blob = (tmp_path / 'good.zip').read_bytes()
            p.write_bytes(blob[:len(blob) // 2])
        elif kind == 'garbage.zip':
            p.write_bytes(os.urandom(3000))
        elif kind == 'not_tiny.zip':
            with zipfile.ZipFile(p, 'w') as z:
                z.writestr('readme.txt', 'hello')
        elif kind == 'truncated.tar.gz':
            write_cifar_tar(tmp_path / 'good.tar.gz')
            blob = (tmp_path / 'good.tar.gz').read_bytes()
            p.write_bytes(blob[:len(blob) // 3])
        elif kind == 'wrong.tar.gz':
            with tarfile.open(p, 'w:gz') as t:
                info = tarfile.TarInfo('something/else.txt')
                info.size = 5
                t.addfile(info, io.BytesIO(b'hello'))
        elif kind == 'notes.txt':  # an existing file that is no archive at all
            p.write_text('not an archive')
        elif kind == 'garbage.pt':
            p.write_bytes(os.urandom(5000))
        elif kind == 'text.pt':
            p.write_text('not a checkpoint')
        elif kind == 'list.pt':
            torch.save([1, 2, 3], p)
        elif kind == 'dict.pt':
            torch.save({'weights': torch.zeros(3)}, p)
        return str(p)
    return make


@pytest.mark.parametrize('argv, match', [
    (['--epochs=3', '--lr=fast'], 'expected float'),
    (['--batch_size=-1'], 'positive'),
    (['--batch_size=0'], 'positive'),
    (['--patch_size=5'], 'does not divide'),
    (['--patch_size=16'], 'at least 4x4'),
    (['--heads=3'], 'does not divide'),
    (['--width=40'], 'divisible by 4'),
    (['--pred_width=40', '--pred_heads=4'], 'divisible by 4'),  # head dim 10
    (['--data=imagenet'], 'choose one of'),
    (['--method=byol'], 'choose one of'),
    (['--warmup=1.5'], '[0, 1)'),
    (['--lowres=0'], 'fraction of --img_size'),
    (['--lowres_frac=2'], 'fraction of training'),
    (['--sigreg_weight=2'], 'lambda'),
    (['--epochs=0'], 'nothing to train'),
    (['--num_groups=5'], 'must divide'),
    (['--lerning_rate=3'], 'unknown config key'),
    (['--lr'], 'not of the form'),
    (['train'], 'not of the form'),
    (['--resume=maybe'], 'expected bool'),
])
def test_bad_config(argv, match, capsys):
    assert_clean_error(*run_cli(jepa.parse_args, argv, capsys), match)  # parsing only: a valid case never trains


@pytest.mark.parametrize('argv, match', [
    (['--data=folder'], 'needs --data_dir'),
    (['--data=tinyimagenet'], 'needs --data_dir'),
    (['--data=folder', '--data_dir=/nonexistent/folder'], 'does not exist'),
    (['--data=cifar10', '--data_dir=/nonexistent/cifar.tar.gz'], 'does not exist'),
    (['--data=cifar10', '--data_dir=/nonexistent/cifar.zip'], 'does not exist'),
    (['--batch_size=20000'], 'larger than the training set'),
])
def test_bad_data_arguments(argv, match, capsys, tmp_path):
    assert_clean_error(*run_cli(jepa.main, FAST[:-1] + argv + [f'--out_dir={tmp_path}/r'], capsys), match)


@pytest.mark.parametrize('data, kind, match', [
    ('folder', 'empty_dir', 'empty'),
    ('folder', 'no_images_dir', 'no image files'),
    ('folder', 'corrupt_image_dir', 'cannot decode image'),
    ('folder', 'flat_dir', 'class sub-folders'),
    ('tinyimagenet', 'truncated.zip', 'zip'),
    ('tinyimagenet', 'garbage.zip', 'not a readable zip'),
    ('tinyimagenet', 'not_tiny.zip', 'wnids.txt'),
    ('cifar10', 'truncated.tar.gz', 'truncated'),
    ('cifar10', 'wrong.tar.gz', 'no member'),
    ('cifar10', 'garbage.zip', 'not a readable zip'),
    ('cifar10', 'not_tiny.zip', 'no member'),
    ('cifar10', 'notes.txt', 'not a readable zip'),
])
def test_bad_data_files(data, kind, match, files, capsys, tmp_path):
    argv = FAST + [f'--data={data}', f'--data_dir={files(kind)}', f'--out_dir={tmp_path}/r']
    assert_clean_error(*run_cli(jepa.main, argv, capsys), match)


@pytest.mark.parametrize('kind, match', [
    ('garbage.pt', 'not a readable checkpoint'),
    ('text.pt', 'not a readable checkpoint'),
    ('list.pt', 'not a nano-jepa checkpoint'),
    ('dict.pt', 'not a nano-jepa checkpoint'),
])
def test_bad_checkpoints_for_probe(kind, match, files, capsys):
    assert_clean_error(*run_cli(probe.main, [f'--ckpt={files(kind)}'], capsys), match)


def test_missing_checkpoint_and_empty_run_dir(tmp_path, capsys):
    assert_clean_error(*run_cli(probe.main, [f'--ckpt={tmp_path}/none.pt'], capsys), 'does not exist')
    assert_clean_error(*run_cli(probe.main, [f'--ckpt={tmp_path}'], capsys), 'holds no ckpt_')


def test_resume_with_nothing_to_resume(tmp_path, capsys):
    assert_clean_error(*run_cli(jepa.main, FAST + [f'--out_dir={tmp_path}/r', '--resume=True'], capsys),
                       'no checkpoint')


def test_resume_with_a_mismatched_checkpoint(tmp_path, capsys):
    assert jepa.cli(jepa.main, FAST + [f'--out_dir={tmp_path}/r']) == 0
    argv = FAST + [f'--out_dir={tmp_path}/r', '--resume=True', '--width=64', '--heads=4']
    assert_clean_error(*run_cli(jepa.main, argv, capsys), 'was trained with width=32')


def test_checkpoint_whose_weights_do_not_fit_its_config(tmp_path, capsys):
    assert jepa.cli(jepa.main, FAST + [f'--out_dir={tmp_path}/r']) == 0
    path = jepa.list_checkpoints(f'{tmp_path}/r')[-1]
    ck = torch.load(path, weights_only=True)
    ck['config']['width'] = 64  # as if the file had been edited or mixed up
    ck['config']['heads'] = 4
    torch.save(ck, path)
    assert_clean_error(*run_cli(probe.main, [f'--ckpt={path}'], capsys), 'do not fit')


def test_device_that_is_not_there(capsys):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    assert_clean_error(*run_cli(jepa.main, FAST + ['--device=cuda'], capsys), 'no CUDA')


@pytest.mark.parametrize('script, argv, match', [
    ('jepa.py', ['--bacth_size=4'], 'did you mean --batch_size'),
    ('jepa.py', ['--data=folder', '--data_dir=/nonexistent'], 'does not exist'),
    ('probe.py', ['--ckpt=/nonexistent.pt'], 'does not exist'),
])
def test_real_command_line_prints_one_line_and_exits_2(script, argv, match, tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, script)] + argv, capture_output=True, text=True, cwd=tmp_path)
    assert_clean_error(r.returncode, r.stderr, match)
    assert not os.path.exists(tmp_path / 'runs'), "a failed start must not leave a run directory"


@pytest.mark.parametrize('script', ['jepa.py', 'probe.py', 'analyze.py'])
def test_help_piped_into_a_reader_that_left_ends_quietly(script):
    """`python jepa.py -h | head -1`: the reader closes the pipe early; the tool must not print a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is already gone
    r = subprocess.run([sys.executable, os.path.join(ROOT, script), '-h'], stdout=write_end, stderr=subprocess.PIPE,
                       text=True, timeout=120)
    os.close(write_end)
    assert r.returncode == 0 and r.stderr == '', r.stderr[-2000:]
