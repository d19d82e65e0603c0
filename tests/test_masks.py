"""I-JEPA multi-block masking: the invariants every batch must satisfy, on random grids from 4x4 up."""
import collections
import math
import random

import torch
from hypothesis import given, strategies as st

import jepa

grids = st.tuples(st.integers(4, 16), st.integers(4, 16))


@given(grid=grids, batch=st.integers(1, 64), seed=st.integers(0, 10_000))
def test_multiblock_masks_invariants(grid, batch, seed):
    H, W = grid
    g = torch.Generator().manual_seed(seed)
    ctx, tgt = jepa.multiblock_masks(batch, H, W, rng=random.Random(seed), generator=g)
    assert ctx.dtype == torch.long and tgt.dtype == torch.long
    assert ctx.shape[0] == batch and tgt.shape[:2] == (batch, 4)
    assert ctx.shape[1] >= 1 and tgt.shape[2] >= 1           # never an empty context or target
    assert ctx.min() >= 0 and ctx.max() < H * W and tgt.min() >= 0 and tgt.max() < H * W
    assert (ctx.diff(dim=1) > 0).all()                       # sorted, row-major, no duplicates
    for b in range(batch):
        assert not set(ctx[b].tolist()) & set(tgt[b].flatten().tolist())  # context disjoint from every target
        for k in range(4):                                   # each target is a full h x w rectangle
            r, c = tgt[b, k] // W, tgt[b, k] % W
            h, w = int(r.max() - r.min() + 1), int(c.max() - c.min() + 1)
            assert h * w == tgt.shape[2] == len(set(tgt[b, k].tolist()))


def test_targets_cover_every_row_and_column_over_many_draws():
    H, W = 8, 8
    g, rng = torch.Generator().manual_seed(0), random.Random(0)
    seen = torch.zeros(H * W, dtype=torch.bool)
    for _ in range(50):
        _, tgt = jepa.multiblock_masks(64, H, W, rng=rng, generator=g)
        seen[tgt.flatten()] = True
    assert seen.all(), "the last row/column must be reachable (the official collator's off-by-one)"


def test_context_subset_is_not_a_row_major_prefix():
    """The equal-count cut takes a random subset: the bottom rows keep context as often as the top rows."""
    g, rng = torch.Generator().manual_seed(1), random.Random(1)
    counts = torch.zeros(8)
    for _ in range(40):
        ctx, _ = jepa.multiblock_masks(64, 8, 8, rng=rng, generator=g)
        counts += torch.bincount((ctx // 8).flatten(), minlength=8)
    top, bottom = counts[:2].sum(), counts[-2:].sum()
    assert bottom > 0.6 * top, (top, bottom)


def test_target_sizes_follow_the_scale_range():
    g, rng = torch.Generator().manual_seed(2), random.Random(2)
    sizes = [jepa.multiblock_masks(8, 14, 14, rng=rng, generator=g)[1].shape[2] for _ in range(200)]
    lo, hi = min(sizes), max(sizes)
    assert 0.10 * 196 <= lo and hi <= 0.26 * 196, (lo, hi)


def test_masks_are_reproducible_from_the_generator():
    a = jepa.multiblock_masks(16, 8, 8, rng=random.Random(5), generator=torch.Generator().manual_seed(5))
    b = jepa.multiblock_masks(16, 8, 8, rng=random.Random(5), generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_expected_context_matches_a_monte_carlo_count():
    """The context length is E|block minus targets| in closed form (a host-side number, no read-back from the
    device): against the mean over 20,000 random placements of one block and four targets."""
    g = torch.Generator().manual_seed(4)
    for H, W, h, w, ch, cw in ((8, 8, 3, 3, 7, 7), (14, 14, 5, 6, 13, 13), (5, 7, 2, 1, 5, 5)):
        n = 20_000
        cell = torch.arange(H * W)
        r, c = cell // W, cell % W

        def inside(bh, bw):  # (n, H*W): which cells a (bh, bw) rectangle at a uniform corner covers
            top, left = torch.randint(0, H - bh + 1, (n, 1), generator=g), torch.randint(0, W - bw + 1, (n, 1), generator=g)
            return (r >= top) & (r < top + bh) & (c >= left) & (c < left + bw)
        ctx = inside(ch, cw) & ~(inside(h, w) | inside(h, w) | inside(h, w) | inside(h, w))
        mc = ctx.sum(1).double().mean().item()
        assert -0.1 < mc - jepa.expected_context(H, W, h, w, ch, cw, 4) < 1.1, (H, W, mc)  # floor(E), E = mc +- 0.05


def block_shape(target_idx, W):
    """(height, width) of the first target block of the first image, from its row-major indices."""
    rows, cols = target_idx[0, 0] // W, target_idx[0, 0] % W
    return (rows.max() - rows.min() + 1).item(), (cols.max() - cols.min() + 1).item()


def test_block_shapes_follow_the_scale_and_aspect_distributions():
    """Goodness of fit of the target blocks' (height, width) on a 14 x 14 grid: their frequencies over 3,000 draws
    against those of the stated recipe -- scale ~ U(0.15, 0.2), aspect ~ U(0.75, 1.5), h = round(sqrt(L s r)),
    w = round(sqrt(L s / r)) -- simulated with another generator (chi-square, far beyond its 1-in-10^5 point)."""
    H = W = 14
    L, n, n_sim = H * W, 3000, 100_000
    rng, g = random.Random(5), torch.Generator().manual_seed(0)
    seen = collections.Counter(block_shape(jepa.multiblock_masks(1, H, W, rng=rng, generator=g)[1], W) for _ in range(n))
    sim_rng, expected = random.Random(123), collections.Counter()
    for _ in range(n_sim):
        s, r = sim_rng.uniform(0.15, 0.2), sim_rng.uniform(0.75, 1.5)
        area = math.floor(L * s)
        expected[min(max(round(math.sqrt(area * r)), 1), H), min(max(round(math.sqrt(area / r)), 1), W)] += 1
    assert set(seen) <= set(expected), (seen, expected)
    chi2 = sum((seen[c] - n * e / n_sim) ** 2 / (n * e / n_sim) for c, e in expected.items())
    df = len(expected) - 1
    assert chi2 < df + 6 * math.sqrt(2 * df) + 10, (chi2, df, seen, expected)
