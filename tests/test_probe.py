"""probe.py: the evaluation protocol's functions against known answers and brute-force references."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import jepa
import probe


def clusters(n_per, C, D, sep, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(C, D, generator=g) * sep
    y = torch.arange(C).repeat_interleave(n_per)
    return centres[y] + torch.randn(len(y), D, generator=g), y


def split(x, y, seed=0):
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    a, b = perm[: len(x) * 3 // 4], perm[len(x) * 3 // 4:]
    return x[a], y[a], x[b], y[b]


def test_linear_probe_separates_clusters():
    x, y = clusters(100, 5, 16, sep=4.0, seed=0)
    assert probe.linear_probe(*split(x, y)) >= 0.95


def test_xor_is_linearly_unsolvable_but_knn_solves_it():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2000, 2, generator=g) * 2 - 1
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    x = torch.cat([x, 0.01 * torch.randn(2000, 1, generator=g) + 3], 1)  # an offset axis so cosine kNN sees quadrants
    data = split(x, y)
    assert abs(probe.linear_probe(*data) - 0.5) < 0.1
    assert probe.knn_accuracy(*data, k=10) > 0.9


def test_shuffled_labels_give_chance():
    x, y = clusters(200, 4, 8, sep=4.0, seed=2)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]
    assert abs(probe.linear_probe(*split(x, y)) - 0.25) < 0.1


def knn_numpy(tr, ytr, te, k, tau, C):
    tr = tr / np.linalg.norm(tr, axis=1, keepdims=True)
    te = te / np.linalg.norm(te, axis=1, keepdims=True)
    pred = []
    for row in te @ tr.T:
        idx = np.argsort(-row, kind='stable')[:k]
        votes = np.zeros(C)
        for i in idx:
            votes[ytr[i]] += np.exp(row[i] / tau)
        pred.append(votes.argmax())
    return np.array(pred)


@settings(max_examples=10)
@given(n=st.integers(10, 80), m=st.integers(1, 30), C=st.integers(2, 5), k=st.integers(1, 8), seed=st.integers(0, 999))
def test_knn_equals_brute_force(n, m, C, k, seed):
    g = torch.Generator().manual_seed(seed)
    tr, te = torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randn(m, 6, generator=g, dtype=torch.float64)
    ytr, yte = torch.randint(C, (n,), generator=g), torch.randint(C, (m,), generator=g)
    ytr[:C] = torch.arange(C)
    ours = probe.knn_accuracy(tr, ytr, te, yte, k=k, tau=0.07)
    pred = knn_numpy(tr.numpy(), ytr.numpy(), te.numpy(), min(k, n), 0.07, int(max(ytr.max(), yte.max())) + 1)
    assert abs(ours - (pred == yte.numpy()).mean()) < 1e-9


@settings(max_examples=10)
@given(n=st.integers(3, 60), C=st.integers(1, 4), k=st.integers(1, 6), seed=st.integers(0, 999))
def test_precision_at_k_equals_brute_force(n, C, k, seed):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(C, (n,), generator=g)
    xn = (x / x.norm(dim=1, keepdim=True)).numpy()
    kk = min(k, n - 1)
    hits = 0
    for i in range(n):
        sims = xn @ xn[i]
        sims[i] = -np.inf
        nn = np.argsort(-sims, kind='stable')[:kk]
        hits += (y.numpy()[nn] == y.numpy()[i]).sum()
    assert abs(probe.nn_precision_at_k(x, y, k=k) - hits / (n * kk)) < 1e-9


def test_extract_features_pools_the_frozen_encoder():
    enc = jepa.ViT(4, 16, 1, 2).train()
    imgs = torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8)
    f = probe.extract_features(enc, imgs, batch_size=2)
    assert f.shape == (5, 16) and enc.training  # mode restored
    with torch.no_grad():
        torch.testing.assert_close(f, enc.eval()(jepa.normalize(imgs)).mean(1))


def test_end_to_end_on_a_tiny_checkpoint(tiny_args, tmp_path, capsys):
    jepa.main(tiny_args + ['--epochs=2', '--probe=False'])
    run_dir = [a.split('=', 1)[1] for a in tiny_args if a.startswith('--out_dir')][0]
    rows = probe.main([f'--ckpt={run_dir}', f'--export={tmp_path / "e.npz"}'])
    assert [r['checkpoint'] for r in rows][0] == 'random-init' and len(rows) == 3
    assert all(0 <= r['linear'] <= 1 and 0 <= r['knn'] <= 1 and 0 <= r['p_at_5'] <= 1 for r in rows)
    z = np.load(tmp_path / 'e.npz')
    assert z['embeddings'].shape == (2000, 32) and len(z['classes']) == len(jepa.SHAPES)
    out = capsys.readouterr().out
    assert 'random-init' in out and 'probe_shapes.json' in out


@pytest.mark.parametrize('argv, msg', [([], 'required'), (['--ckpt=/nonexistent'], 'does not exist'),
                                       (['--ckpts=x'], 'did you mean --ckpt')])
def test_probe_cli_errors(argv, msg):
    with pytest.raises(jepa.UserError, match=msg):
        probe.main(argv)
