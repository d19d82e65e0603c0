"""Dataset readers on small archives written in the real formats, and `make cifar10`'s verified download."""
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import jepa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg_for(**kw):
    return dict(jepa.parse_args([]), **kw)


def write_cifar_tar(path, name='cifar10', n=6):
    """A CIFAR python-format .tar.gz with n images per batch; image i of a batch has constant value i."""
    folder, key = ('cifar-10-batches-py', b'labels') if name == 'cifar10' else ('cifar-100-python', b'fine_labels')
    files = ([f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']) if name == 'cifar10' else ['train', 'test']
    with tarfile.open(path, 'w:gz') as tar:
        def add(fname, obj):
            blob = pickle.dumps(obj)
            info = tarfile.TarInfo(f'{folder}/{fname}')
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
        for f in files:
            data = np.repeat(np.arange(n, dtype=np.uint8)[:, None], 3072, 1)
            add(f, {key: list(range(n)), b'data': data})
        meta = {b'label_names': [f'c{i}'.encode() for i in range(10)]} if name == 'cifar10' else \
            {b'fine_label_names': [f'c{i}'.encode() for i in range(100)]}
        add('batches.meta' if name == 'cifar10' else 'meta', meta)


@pytest.mark.parametrize('name, n_train', [('cifar10', 30), ('cifar100', 6)])
def test_cifar_reads_tarball_and_extracted_folder(tmp_path, name, n_train):
    tar = tmp_path / f'{name}.tar.gz'
    write_cifar_tar(tar, name)
    d = jepa.load_cifar(cfg_for(data=name, data_dir=str(tar)))
    assert d['train_x'].shape == (n_train, 3, 32, 32) and d['train_x'].dtype == torch.uint8
    assert d['test_x'].shape == (6, 3, 32, 32) and d['test_y'].tolist() == list(range(6))
    assert (d['train_x'][3] == 3).all()  # rows decode as (3, 32, 32) planes
    with tarfile.open(tar) as t:
        t.extractall(tmp_path / 'x')
    d2 = jepa.load_cifar(cfg_for(data=name, data_dir=str(tmp_path / 'x')))
    assert torch.equal(d['train_x'], d2['train_x']) and d['classes'] == d2['classes']


def test_cifar_truncated_archive_is_a_clear_error(tmp_path):
    tar = tmp_path / 'c.tar.gz'
    write_cifar_tar(tar)
    blob = tar.read_bytes()
    tar.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(jepa.UserError, match='truncated'):
        jepa.load_cifar(cfg_for(data='cifar10', data_dir=str(tar)))


def make_cifar10(where, srv, md5):
    """`make cifar10` run in the folder `where`, curl fetching from the folder srv by file:// URL."""
    where.mkdir()
    return subprocess.run(['make', '-s', '-f', os.path.join(ROOT, 'Makefile'), '-C', str(where), 'cifar10',
                           f'CIFAR_URL=file://{srv}', f'CIFAR_MD5_10={md5}', f'PYTHON={sys.executable}'],
                          capture_output=True, text=True, timeout=120)


def test_make_cifar10_downloads_verifies_md5_and_keeps_nothing_unverified(tmp_path, monkeypatch):
    (tmp_path / 'srv').mkdir()
    write_cifar_tar(tmp_path / 'srv' / 'cifar-10-python.tar.gz')
    r = make_cifar10(tmp_path / 'bad', tmp_path / 'srv', md5='0' * 32)
    assert r.returncode != 0 and 'md5' in r.stderr, r.stderr
    assert not list((tmp_path / 'bad' / 'data').iterdir()), "nothing unverified may stay"
    good = hashlib.md5((tmp_path / 'srv' / 'cifar-10-python.tar.gz').read_bytes()).hexdigest()
    r = make_cifar10(tmp_path / 'ok', tmp_path / 'srv', md5=good)
    assert r.returncode == 0, r.stderr
    monkeypatch.chdir(tmp_path / 'ok')  # --data=cifar10 without --data_dir reads data/cifar-10-python.tar.gz
    assert jepa.load_cifar(cfg_for(data='cifar10'))['train_x'].shape[0] == 30


def test_cifar_without_its_archive_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(jepa.UserError, match='make cifar100'):
        jepa.load_cifar(cfg_for(data='cifar100'))


def jpeg(color, mode='RGB', size=(64, 64)):
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format='JPEG')
    return buf.getvalue()


def write_tinyimagenet(path, as_zip=True):
    """tiny-imagenet-200 layout with 3 classes, 4 train images each, 2 val each; one grayscale, one CMYK,
    one of an odd size."""
    wnids = ['n001', 'n002', 'n003']
    files = {'tiny-imagenet-200/wnids.txt': '\n'.join(wnids).encode(),
             'tiny-imagenet-200/words.txt': b'n001\tcat, kitty\nn002\tdog\nn003\tcar\n'}
    for c, w in enumerate(wnids):
        for i in range(4):
            files[f'tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG'] = jpeg((80 * c, 10 * i, 0))
        files[f'tiny-imagenet-200/train/{w}/{w}_boxes.txt'] = b''
    files['tiny-imagenet-200/train/n001/images/n001_0.JPEG'] = jpeg(128, mode='L')
    files['tiny-imagenet-200/train/n002/images/n002_0.JPEG'] = jpeg((0, 0, 0, 0), mode='CMYK')
    files['tiny-imagenet-200/train/n003/images/n003_0.JPEG'] = jpeg((1, 2, 3), size=(50, 70))
    ann = []
    for j in range(6):
        files[f'tiny-imagenet-200/val/images/val_{j}.JPEG'] = jpeg((80 * (j % 3), 0, 0))
        ann.append(f'val_{j}.JPEG\t{wnids[j % 3]}\t0\t0\t10\t10')
    files['tiny-imagenet-200/val/val_annotations.txt'] = '\n'.join(ann).encode()
    if as_zip:
        with zipfile.ZipFile(path, 'w') as z:
            for name, blob in files.items():
                z.writestr(name, blob)
    else:
        for name, blob in files.items():
            os.makedirs(os.path.dirname(os.path.join(path, name)), exist_ok=True)
            with open(os.path.join(path, name), 'wb') as f:
                f.write(blob)


def test_tinyimagenet_from_zip_and_folder(tmp_path):
    write_tinyimagenet(tmp_path / 't.zip')
    write_tinyimagenet(tmp_path / 'folder', as_zip=False)
    a = jepa.load_tinyimagenet(cfg_for(data='tinyimagenet', data_dir=str(tmp_path / 't.zip'), img_size=64))
    b = jepa.load_tinyimagenet(cfg_for(data='tinyimagenet', data_dir=str(tmp_path / 'folder'), img_size=64))
    assert a['train_x'].shape == (12, 3, 64, 64) and a['test_x'].shape == (6, 3, 64, 64)
    assert a['train_y'].tolist() == [0] * 4 + [1] * 4 + [2] * 4 and a['test_y'].tolist() == [0, 1, 2] * 2
    assert a['classes'] == ['cat', 'dog', 'car']
    assert torch.equal(a['train_x'], b['train_x']) and torch.equal(a['test_y'], b['test_y'])
    gray = a['train_x'][0]
    assert (gray[0] == gray[1]).all() and (gray[1] == gray[2]).all()  # grayscale became 3 equal channels
    small = jepa.load_tinyimagenet(cfg_for(data='tinyimagenet', data_dir=str(tmp_path / 't.zip'), img_size=32))
    assert small['train_x'].shape == (12, 3, 32, 32)


def test_folder_dataset_splits_and_converts(tmp_path):
    for c in ('a', 'b'):
        os.makedirs(tmp_path / 'imgs' / c)
        for i in range(10):
            (tmp_path / 'imgs' / c / f'{i}.jpg').write_bytes(jpeg((100 if c == 'a' else 0, i, 0), size=(40, 30)))
    d = jepa.load_folder(cfg_for(data='folder', data_dir=str(tmp_path / 'imgs'), img_size=16))
    assert d['classes'] == ['a', 'b'] and d['train_x'].shape == (18, 3, 16, 16) and d['test_x'].shape == (2, 3, 16, 16)
    assert sorted(d['test_y'].tolist()) == [0, 1]


def test_shapes_dataset_is_deterministic_and_balanced():
    x1, y1 = jepa.make_shapes(600, 32, seed=3)
    x2, y2 = jepa.make_shapes(600, 32, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.dtype == torch.uint8
    counts = torch.bincount(y1, minlength=len(jepa.SHAPES))
    assert len(jepa.SHAPES) >= 10 and counts.min() > 20
    # colour alone does not tell the classes apart: mean colour per class is nearly the same
    means = torch.stack([x1[y1 == c].float().mean((0, 2, 3)) for c in range(len(jepa.SHAPES))])
    assert (means.max(0).values - means.min(0).values).max() < 40


def test_make_tin40_builds_a_class_subset_and_its_splits(tmp_path, capsys):
    """tests/make_tin40.py: a class subset of a tiny-imagenet-200 source in the same layout (read back by
    --data=tinyimagenet), the class-disjoint splits beside it, and a clear error for a source without the classes."""
    import make_tin40
    write_tinyimagenet(tmp_path / 'tiny.zip')
    out = tmp_path / 'sub' / 'tin-2.zip'
    make_tin40.main([str(tmp_path / 'tiny.zip'), str(out), '--classes=2', '--seed=0', '--splits'])
    d = jepa.load_tinyimagenet(cfg_for(data='tinyimagenet', data_dir=str(out)))
    assert len(d['classes']) == 2 and d['train_x'].shape[0] == 8 and d['test_x'].shape[0] == 4
    pre, held = jepa.load_folder(cfg_for(data='folder', data_dir=str(tmp_path / 'sub' / 'tin2_pre1'))), \
        jepa.load_folder(cfg_for(data='folder', data_dir=str(tmp_path / 'sub' / 'tin2_held1')))
    assert len(pre['classes']) == len(held['classes']) == 1 and pre['classes'] != held['classes']
    with pytest.raises(jepa.UserError, match='lacks 40 of the classes'):
        make_tin40.main([str(tmp_path / 'tiny.zip'), str(tmp_path / 'tin40.zip')])
