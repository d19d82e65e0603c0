"""2-D axial RoPE: the properties that make it a relative position encoding."""
import torch
from hypothesis import given, strategies as st

import jepa

pos_st = st.tuples(st.integers(-20, 20), st.integers(-20, 20))


@given(d=st.sampled_from([4, 8, 16, 32]), p=pos_st, q=pos_st, shift=pos_st, seed=st.integers(0, 1000))
def test_rope_depends_only_on_relative_position(d, p, q, shift, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64), torch.randn(1, 1, 1, d, generator=g, dtype=torch.float64)
    def score(pa, pb):
        return (jepa.rope(a, torch.tensor([pa])) * jepa.rope(b, torch.tensor([pb]))).sum()
    moved = score((p[0] + shift[0], p[1] + shift[1]), (q[0] + shift[0], q[1] + shift[1]))
    torch.testing.assert_close(score(p, q), moved, rtol=1e-4, atol=1e-4)


@given(d=st.sampled_from([4, 8, 64]), p=pos_st, seed=st.integers(0, 1000))
def test_rope_preserves_norms(d, p, seed):
    x = torch.randn(2, 3, 1, d, generator=torch.Generator().manual_seed(seed))
    y = jepa.rope(x, torch.tensor([p]))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)


@given(d=st.sampled_from([4, 16]), p=pos_st, seed=st.integers(0, 1000))
def test_rope_is_identity_in_dot_products_at_equal_positions(d, p, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(1, 1, 1, d, generator=g), torch.randn(1, 1, 1, d, generator=g)
    pos = torch.tensor([p])
    torch.testing.assert_close((jepa.rope(a, pos) * jepa.rope(b, pos)).sum(), (a * b).sum(), rtol=1e-4, atol=1e-4)


def test_rope_at_origin_is_identity_and_axes_use_their_channels():
    x = torch.randn(1, 1, 1, 8)
    torch.testing.assert_close(jepa.rope(x, torch.tensor([[0, 0]])), x)
    # moving along the column touches only the first d/2 channels (pairs m < d/4), along the row only the rest
    col, row = jepa.rope(x, torch.tensor([[3, 0]])), jepa.rope(x, torch.tensor([[0, 3]]))
    torch.testing.assert_close(col[..., 4:], x[..., 4:])
    torch.testing.assert_close(row[..., :4], x[..., :4])
    assert not torch.allclose(col[..., :4], x[..., :4])


def test_rope_matches_the_pairwise_formula():
    d, theta = 8, 100.0
    x, pos = torch.randn(1, 1, 1, d, dtype=torch.float64), (5, 2)
    out = jepa.rope(x, torch.tensor([pos])).flatten()
    x = x.flatten()
    for m in range(d // 2):
        k = m % (d // 4)
        phi = (pos[0] if m < d // 4 else pos[1]) * theta ** (-4 * k / d)
        c, s = torch.cos(torch.tensor(phi, dtype=torch.float64)), torch.sin(torch.tensor(phi, dtype=torch.float64))
        torch.testing.assert_close(out[2 * m], x[2 * m] * c - x[2 * m + 1] * s, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[2 * m + 1], x[2 * m] * s + x[2 * m + 1] * c, rtol=1e-5, atol=1e-6)


def place(patches, idx, grid=4, p=4):
    """An image (1, 3, grid*p, grid*p), zero but for patch k of patches (N, 3, p, p) at row-major grid index idx[k]."""
    img = torch.zeros(1, 3, grid * p, grid * p)
    for k, i in enumerate(idx.tolist()):
        r, c = divmod(i, grid)
        img[0, :, r * p:(r + 1) * p, c * p:(c + 1) * p] = patches[k]
    return img


def test_vit_features_follow_relative_positions_only():
    """RoPE encodes positions through their differences: the same patches kept at a whole-grid translation of
    their places give the same features; the same patches in another arrangement give different ones (which an
    encoder that ignored positions would not: its features depend on the contents alone)."""
    torch.manual_seed(0)
    vit = jepa.ViT(patch_size=4, width=32, depth=2, heads=2).eval()
    for m in vit.modules():  # weights large enough that attention is far from uniform, so arrangement shows
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.3)
    patches = torch.randn(4, 3, 4, 4)
    idx = torch.tensor([0, 1, 4, 9])  # (row, col): (0, 0), (0, 1), (1, 0), (2, 1)
    moved = idx + 4 + 2  # one row down, two columns right: (1, 2), (1, 3), (2, 2), (3, 3)
    other = torch.tensor([0, 1, 4, 10])  # the last patch one column further: a different arrangement
    feats = {name: vit(place(patches, i), i[None]) for name, i in (('idx', idx), ('moved', moved), ('other', other))}
    torch.testing.assert_close(feats['moved'], feats['idx'], rtol=1e-4, atol=1e-5)
    assert (feats['other'] - feats['idx']).abs().max() > 0.1

