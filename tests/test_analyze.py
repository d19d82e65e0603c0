"""analyze.py: every metric on inputs with known answers, and a self-contained report from a tiny run."""
import json
import math
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import analyze
import jepa
import probe


@given(D=st.integers(2, 64), N=st.integers(1, 20), seed=st.integers(0, 999))
def test_one_hot_rows_are_maximally_sparse(D, N, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.zeros(N, D)
    z[torch.arange(N), torch.randint(D, (N,), generator=g)] = torch.rand(N, generator=g) + 0.5
    m = analyze.embedding_metrics(z)
    assert abs(m['hoyer'] - 1) < 1e-9 and abs(m['gini'] - (1 - 1 / D)) < 1e-9
    assert abs(m['l0_fraction'] - 1 / D) < 1e-9 and abs(m['activation_ratio'] - 1 / D) < 1e-9


@given(D=st.integers(2, 64), N=st.integers(1, 20), seed=st.integers(0, 999))
def test_constant_magnitudes_are_not_sparse(D, N, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.where(torch.rand(N, D, generator=g) < 0.5, -1.0, 1.0) * 3
    m = analyze.embedding_metrics(z)
    assert abs(m['hoyer']) < 1e-9 and abs(m['gini']) < 1e-9
    assert m['l0_fraction'] == 1 and m['activation_ratio'] == 1 and abs(m['l1_l2_fraction'] - 1) < 1e-9


def test_effective_rank_of_identity_like_and_low_rank_data():
    D = 32
    assert abs(analyze.embedding_metrics(torch.eye(D))['effective_rank'] - D) < 1e-6
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(20000, D, generator=g)
    assert analyze.effective_rank(iso) > 0.95 * D
    for r in (1, 3, 7):
        low = torch.randn(500, r, generator=g, dtype=torch.float64) @ torch.randn(r, D, generator=g, dtype=torch.float64)
        assert analyze.effective_rank(low) <= r + 1e-6
        m = analyze.embedding_metrics(low)
        assert m['pca_var_10'] > 1 - 1e-9


def test_dead_units_and_pca_variance():
    z = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    z[:, [2, 5]] = 0.7
    m = analyze.embedding_metrics(z)
    assert m['dead_units'] == 2
    assert 0 < m['pca_var_10'] <= 1 and m['pca_var_50'] == pytest.approx(1.0)


def silhouette_direct(z, y):
    """The textbook silhouette, loop by loop, cosine distance."""
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    d = 1 - zn @ zn.T
    s = []
    for i in range(len(z)):
        own = [j for j in range(len(z)) if y[j] == y[i] and j != i]
        if not own:
            s.append(0.0)
            continue
        a = d[i, own].mean()
        b = min(d[i, y == c].mean() for c in set(y.tolist()) if c != y[i])
        s.append((b - a) / max(a, b))
    return float(np.mean(s))


@settings(max_examples=10)
@given(n=st.integers(4, 40), C=st.integers(2, 4), seed=st.integers(0, 999))
def test_silhouette_and_precision_match_direct_formulas(n, C, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(C, (n,), generator=g)
    y[:C] = torch.arange(C)
    m = analyze.embedding_metrics(z, y)
    assert abs(m['silhouette'] - silhouette_direct(z.numpy(), y.numpy())) < 1e-9
    assert m['nn_precision_at_5'] == probe.nn_precision_at_k(z, y, k=5)


def test_well_separated_clusters_have_high_silhouette():
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(4) * 10
    y = torch.arange(4).repeat_interleave(30)
    z = centres[y] + 0.1 * torch.randn(120, 4, generator=g)
    m = analyze.embedding_metrics(z, y)
    assert m['silhouette'] > 0.9 and m['nn_precision_at_5'] == 1.0


def test_attention_metrics_on_known_maps():
    N = 8
    uniform = torch.full((2, 2, N, N), 1 / N)
    m = analyze.attention_metrics(uniform)
    assert all(abs(e - math.log(N)) < 1e-9 for e in m['entropy'])
    assert all(abs(w - 1 / N) < 1e-9 for w in m['max_weight']) and all(s == 0 for s in m['sparsity'])
    assert abs(m['head_diversity']) < 1e-9
    one_hot = torch.eye(N).expand(1, 2, N, N).clone()
    one_hot[0, 1] = one_hot[0, 1].roll(1, dims=1)  # the two heads look at different tokens
    m = analyze.attention_metrics(one_hot)
    assert all(abs(e) < 1e-9 for e in m['entropy']) and all(w == 1 for w in m['max_weight'])
    assert all(abs(s - (N - 1) / N) < 1e-9 for s in m['sparsity']) and abs(m['head_diversity'] - 1) < 1e-9


def test_tsne_separates_clusters():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(40)
    x = torch.eye(3)[y] * 8 + torch.randn(120, 3, generator=g)
    Y = analyze.tsne(x, iters=300)
    assert Y.shape == (120, 2) and torch.isfinite(Y).all()
    assert probe.knn_accuracy(Y[::2], y[::2], Y[1::2], y[1::2], k=5) > 0.95


def test_report_from_a_tiny_run_is_self_contained(tiny_args, tmp_path):
    jepa.main(tiny_args + ['--epochs=2', '--probe=False', '--method=sparse'])
    run_dir = [a.split('=', 1)[1] for a in tiny_args if a.startswith('--out_dir')][0]
    np.savez(tmp_path / 'other.npz', embeddings=np.random.default_rng(0).normal(size=(300, 7)),
             labels=np.arange(300) % 3)
    rows = analyze.main([f'--run={run_dir}', '--samples=300', '--images=3', f'--compare={tmp_path / "other.npz"}'])
    assert len(rows) == 2 and {'teacher', 'student', 'patches', 'attention', 'group_sparsity'} <= set(rows[0])
    assert 0 <= rows[-1]['patches']['within_image_share'] <= 1 and rows[-1]['patches']['patch_effective_rank'] >= 1
    at_2x = rows[-1]['rope_2x']['attention']  # the attention metrics at twice the resolution, per layer and head
    assert len(at_2x) == len(rows[-1]['attention']) and all(len(a['entropy']) == 2 for a in at_2x)
    assert all(e2 > e1 for a1, a2 in zip(rows[-1]['attention'], at_2x) for e1, e2 in zip(a1['entropy'], a2['entropy']))
    page = open(os.path.join(run_dir, 'report.html')).read()
    metrics = json.load(open(os.path.join(run_dir, 'metrics.json')))
    assert len(metrics['checkpoints']) == 2 and metrics['compare'][1]['set'] == 'other.npz'
    assert '<script' not in page.lower()
    sources = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert sources and all(s.startswith('data:image/png;base64,') for s in sources), sources[:3]
    assert not re.search(r'url\(|@import|https?://(?!www\.w3\.org/2000/svg)', page)
    svt = rows[-1]['student_vs_teacher']  # the sparsity protocol: 5 mask draws x min(500, 300) images
    assert set(svt) == set(analyze.STUDENT_TEACHER) and svt['l1_sparsity']['student_sd'] > 0  # the draws differ
    assert all(v['difference'] == pytest.approx(v['student'] - v['teacher']) for v in svt.values())
    curve = rows[-1]['teacher']['variance_curve']
    assert curve[9] == pytest.approx(rows[-1]['teacher']['pca_var_10']) and curve[-1] == pytest.approx(1)
    assert all(b >= a for a, b in zip(curve, curve[1:]))
    for section in ('student vs teacher: 5 mask draws', 'Variance explained', 'Nearest-neighbour retrieval',
                    'Training curves', 'teacher', 'student', 'Group sparsity', 'Attention', 'Patch features',
                    't-SNE', 'Class-centroid', 'RoPE extrapolation', 'Attention per layer at both resolutions', 'Comparison'):
        assert section in page, section


def patch_tokens(img, ctx=None):
    """A toy encoder: each 4x4 patch's mean colour is its token, (B, 3, S, S) -> (B, L, 3); with a context, its tokens."""
    tokens = F.avg_pool2d(img, 4).flatten(2).transpose(1, 2)  # (B, L, 3)
    return tokens if ctx is None else tokens.gather(1, ctx[..., None].expand(-1, -1, 3))


def test_student_vs_teacher_compares_masked_and_full_views():
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    z = patch_tokens(jepa.normalize(x)).mean(1)  # (N, 3): the teacher on the full image
    blind = analyze.student_vs_teacher(lambda img, ctx=None: patch_tokens(img).mean(1, keepdim=True), x, z, 4, masks=3)
    for v in blind.values():  # a student that ignores the mask sees what the teacher sees
        assert v['student'] == pytest.approx(v['teacher']) and abs(v['difference']) < 1e-9 and v['student_sd'] < 1e-9
    out = analyze.student_vs_teacher(patch_tokens, x, z, 4, masks=3)
    draws = [analyze.embedding_metrics(analyze.student_features(patch_tokens, x, 4, seed=s)) for s in range(3)]
    expected = np.mean([d['l1_sparsity'] for d in draws])
    assert out['l1_sparsity']['student'] == pytest.approx(expected) and out['l1_sparsity']['student_sd'] > 0
    assert out['l1_sparsity']['teacher'] == pytest.approx(z.abs().mean().item())


def test_retrieval_frames_neighbours_by_class():
    y = torch.arange(3).repeat_interleave(8)
    z = torch.eye(3)[y] + 0.01 * torch.randn(24, 3, generator=torch.Generator().manual_seed(0))
    images = torch.zeros(24, 3, 8, 8, dtype=torch.uint8)
    rows = analyze.retrieval_images(z, y, images, queries=2, k=5)
    assert len(rows) == 2 and all(len(hits) == 5 for _, hits in rows)
    same = analyze.retrieval_images(z, y, images, queries=1, k=5)[0][1][0]
    relabelled = y.clone()
    relabelled[0] = 2  # the query's neighbours (its cluster, class 0) now have another class than it
    other = analyze.retrieval_images(z, relabelled, images, queries=1, k=5)[0][1][0]
    assert same != other  # a neighbour of the query's class is framed differently from one of another class


@pytest.mark.parametrize('argv, msg', [([], 'required'), (['--run=/nonexistent'], 'not a directory'),
                                       (['--runn=x'], 'did you mean --run')])
def test_analyze_cli_errors(argv, msg, capsys):
    assert jepa.cli(analyze.main, argv) == 2
    assert msg in capsys.readouterr().err


def test_heatmaps_carry_a_labelled_colour_bar():
    fig = analyze.heatmap(np.array([[0.0, 0.5], [1.0, -0.25]]), 8, 'layer 0')
    labels = re.findall(r'<text[^>]*>([^<]*)</text>', fig)
    assert 'class="colorbar"' in fig and fig.count('<rect') == 32 and labels == ['-0.25', '0.375', '1']
    assert '<figcaption>layer 0</figcaption>' in fig and fig.count('<img src="data:image/png;base64,') == 1


def test_a_chart_with_one_point_shows_the_point_and_its_value():
    svg = analyze.svg_lines({'effective_rank': [(1.0, 7.25)]}, 'effective_rank')
    labels = re.findall(r'<text[^>]*>([^<]*)</text>', svg)
    assert svg.count('<circle') == 1 and '7.25' in labels
    assert len([t for t in labels if re.fullmatch(r'-?[\d.e+-]+', t)]) >= 5  # both ends of both axes, and the value
