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


def test_vit_context_tokens_keep_their_place():
    """Encoding a subset of patches equals encoding them with their original positions (no position table)."""
    torch.manual_seed(0)
    vit = jepa.ViT(patch_size=4, width=32, depth=2, heads=2).eval()
    img = torch.randn(2, 3, 16, 16)
    idx = torch.tensor([[0, 5, 10, 15], [1, 2, 3, 12]])
    sub = vit(img, idx)
    assert sub.shape == (2, 4, 32)
    # the same tokens moved to other rows of the image give different features: position matters
    perm_img = img.roll(shifts=4, dims=2)
    assert not torch.allclose(sub, vit(perm_img, idx), atol=1e-4)
