"""
analyze.py: what the embeddings and attention of a JEPA run look like, epoch by epoch, as numbers and pictures.

    python analyze.py --run=runs/shapes_ijepa                        # every checkpoint of the run
    python analyze.py --run=RUN --data=tinyimagenet --data_dir=...   # on another dataset than it trained on
    python analyze.py --run=RUN --compare=other.npz                  # side by side with embeddings from elsewhere

Writes RUN/metrics.json and RUN/report.html: one self-contained page (inline SVG charts, embedded PNGs, no
scripts, no network) with training curves; per-epoch sparsity, spectrum and cluster metrics for the student
(context encoder on a masked image) and the teacher (target encoder on the full image); the I-JEPA sparsity
protocol (student against teacher over 5 mask draws x 500 images, and their difference); variance-explained
curves; nearest-neighbour retrieval images; class-centroid similarities; PCA and t-SNE maps; attention entropy,
peak, sparsity and head diversity per layer; attention maps; patch-feature PCA images; group sparsity and group
activation maps for SparseJEPA runs; and the teacher's embedding and attention metrics at twice the training
resolution (RoPE extrapolation).

Metric definitions (per sample z in R^D, then averaged): Hoyer (sqrt(D) - |z|_1/|z|_2) / (sqrt(D) - 1); L1
sparsity: mean |z_j|; activation ratio: share of |z_j| above 10 % of max_j |z_j|; Gini of |z| (sorted-values
formula); L0 fraction (share of nonzero entries) and its smooth form (|z|_1/|z|_2)^2 / D. Set level: dead units
(dims varying by < 1e-6), PCA variance of the first 10 and 50 components (and of the first k, for every k: the
curve), effective rank (RankMe: exp of the entropy of the normalised singular values), mean per-dimension std,
cosine silhouette, precision@5. Patch tokens of the teacher (the masked methods' targets): their effective rank
and std over all tokens, and the within-image share of their variance (near 0: every patch of an image carries the
same feature). Attention per layer and head: entropy of each query's distribution, its largest weight, the share
of weights below 1/N, and head similarity (mean pairwise cosine of the heads' maps), diversity = 1 - similarity.
"""
import base64
import html
import io
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import jepa
import probe

# ----------------------------------------------------------------------------- config
DEFAULTS = {'run': '', 'data': '', 'data_dir': '', 'compare': '', 'samples': 2000, 'images': 6, 'device': 'auto',
            'tsne': True, 'protocol_images': 500, 'masks': 5}
HELP = """usage: python analyze.py --run=RUN_DIR [--key=value ...]

  --run=PATH           run directory with ckpt_*.pt (and log.jsonl) written by jepa.py
  --data=NAME          dataset to analyse on ('' = the run's own)
  --data_dir=PATH      its folder or archive ('' = the run's own)
  --compare=FILE.npz   embeddings from elsewhere (probe.py --export, or any npz with embeddings [and labels])
  --samples=2000       test images used for the metrics and the 2-D maps
  --images=6           example images for attention maps, patch-feature PCA and nearest-neighbour retrieval
  --protocol_images=500  student vs teacher: the first N test images ...
  --masks=5            ... under this many multi-block mask draws (the I-JEPA sparsity protocol)
  --device=auto        auto | cuda | mps | cpu
  --tsne=True          also a t-SNE map (a few seconds for 2000 points)"""

# ----------------------------------------------------------------------------- embedding metrics


def gini(a):
    """Gini coefficient of each row of a non-negative (N, D) tensor: 0 for equal entries, 1 - 1/D for one-hot."""
    a, _ = a.sort(dim=1)
    D = a.shape[1]
    i = torch.arange(1, D + 1, dtype=a.dtype, device=a.device)
    return ((2 * i - D - 1) * a).sum(1) / (D * a.sum(1)).clamp_min(1e-12)


def effective_rank(z):
    """RankMe (Garrido et al. 2023): exp of the entropy of the normalised singular values of z (N, D)."""
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum().clamp_min(1e-30) + 1e-12
    return math.exp(-(p * p.log()).sum().item())


def silhouette_cosine(z, y):
    """Mean silhouette with cosine distance: (b - a) / max(a, b), a = mean distance to the own class (self
    excluded), b = smallest mean distance to another class. Samples alone in their class count 0."""
    zn = F.normalize(z.double(), dim=1)
    dist = 1 - zn @ zn.T  # (N, N)
    classes = y.unique()
    onehot = (y[:, None] == classes[None, :]).double()  # (N, C)
    sums, counts = dist @ onehot, onehot.sum(0)  # (N, C), (C,)
    own = (y[:, None] == classes[None, :])
    own_count = counts[None, :].expand_as(sums)[own] - 1
    a = sums[own] / own_count.clamp_min(1)
    other = (sums / counts).masked_fill(own, float('inf'))
    b = other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    return torch.where(own_count > 0, s, torch.zeros_like(s)).mean().item()


def embedding_metrics(z, labels=None):
    """Sparsity, spectrum and (with labels) cluster metrics of a set of embeddings z (N, D)."""
    z = z.double()
    N, D = z.shape
    a = z.abs()
    l1, l2 = a.sum(1), z.norm(dim=1).clamp_min(1e-12)
    centred = z - z.mean(0)
    var = torch.linalg.svdvals(centred) ** 2
    var = var / var.sum().clamp_min(1e-30)
    out = {
        'hoyer': ((math.sqrt(D) - l1 / l2) / (math.sqrt(D) - 1)).mean().item() if D > 1 else 0.0,
        'activation_ratio': (a > 0.1 * a.max(1, keepdim=True).values).double().mean().item(),
        'gini': gini(a).mean().item(),
        'dead_units': int(((z.max(0).values - z.min(0).values) < 1e-6).sum()),
        'l0_fraction': (a > 0).double().mean().item(),
        'l1_l2_fraction': ((l1 / l2) ** 2 / D).mean().item(),
        'l1_sparsity': (l1 / D).mean().item(),
        'pca_var_10': var[:10].sum().item(),
        'pca_var_50': var[:50].sum().item(),
        'effective_rank': effective_rank(z),
        'variance_curve': var.cumsum(0).tolist(),  # share of variance in the first k components, k = 1..D
        'dim_std': z.std(0).mean().item(),
    }
    if labels is not None:
        out['silhouette'] = silhouette_cosine(z, labels)
        out['nn_precision_at_5'] = probe.nn_precision_at_k(z, labels, k=5)
    return out

def patch_metrics(h, max_tokens=16384):
    """Token-level view of patch features h (N, L, D), the targets of the masked methods: effective rank and
    mean per-dimension std over (a sample of) all tokens, and the within-image share of their variance (total
    = within + between images). Near 0: every patch of an image has the same feature (the tokens collapsed onto
    the image's pooled vector: targets any context token predicts); independent tokens give (L - 1) / L."""
    h = h.double()
    tokens = h.flatten(0, 1)  # (N*L, D)
    sample = tokens[torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))[:max_tokens]]
    total = (tokens - tokens.mean(0)).pow(2).sum(-1).mean()  # = within + between images: the share is in [0, 1]
    within = (h - h.mean(1, keepdim=True)).pow(2).sum(-1).mean()
    return {'patch_effective_rank': effective_rank(sample), 'patch_dim_std': tokens.std(0).mean().item(),
            'within_image_share': (within / total.clamp_min(1e-30)).item()}


@torch.no_grad()
def patch_features(encoder, images, batch_size=256):
    """Unpooled output tokens of an encoder on full images: uint8 (N, 3, S, S) -> (N, L, D) float32."""
    return torch.cat([encoder(jepa.normalize(x)).float() for x in images.split(batch_size)])

# ----------------------------------------------------------------------------- attention metrics


def attention_metrics(w):
    """Per-head statistics of attention weights w (B, H, N, N) -> dict of (H,) lists and the (H, H) head
    similarity matrix (mean over images of the cosine between heads' flattened maps)."""
    B, H, N, _ = w.shape
    w = w.double()
    entropy = -(w * w.clamp_min(1e-12).log()).sum(-1).mean((0, 2))  # (H,)
    flat = F.normalize(w.flatten(2), dim=-1)  # (B, H, N*N)
    sim = (flat @ flat.transpose(1, 2)).mean(0)  # (H, H)
    off = sim[~torch.eye(H, dtype=torch.bool)].mean().item() if H > 1 else 1.0
    return {'entropy': entropy.tolist(), 'max_weight': w.max(-1).values.mean((0, 2)).tolist(),
            'sparsity': (w < 1 / N).double().mean((0, 2, 3)).tolist(), 'head_similarity': sim.tolist(),
            'head_diversity': 1 - off}


@torch.no_grad()
def attention_weights(encoder, img):
    """Attention weights of every block of a ViT for a normalised batch -> list of (B, H, N, N), layer order: each
    attention module's own weights (jepa.Attention.weights) of the input a forward pre-hook sees."""
    weights = []

    def hook(attn, args):
        weights.append(attn.weights(*args[:2]))  # input (B, N, D), positions -> (B, H, N, N)
    handles = [blk.attn.register_forward_pre_hook(hook) for blk in encoder.blocks]
    try:
        encoder(img)
    finally:
        for h in handles:
            h.remove()
    return weights

# ----------------------------------------------------------------------------- maps


def pca_2d(z):
    z = z.double() - z.double().mean(0)
    _, _, V = torch.linalg.svd(z, full_matrices=False)
    return (z @ V[:2].T).float()


def tsne(x, dims=2, perplexity=30.0, iters=500, seed=0):
    """Compact exact t-SNE (van der Maaten & Hinton 2008) in torch, for up to a few thousand points."""
    x = x.double()
    N = x.shape[0]
    d2 = torch.cdist(x, x) ** 2
    d2 = d2 / d2[d2 > 0].median().clamp_min(1e-12)
    target = math.log(min(perplexity, (N - 1) / 3))
    lo, hi = torch.full((N, 1), 1e-20, dtype=x.dtype), torch.full((N, 1), 1e20, dtype=x.dtype)
    beta = torch.ones(N, 1, dtype=x.dtype)
    eye = torch.eye(N, dtype=torch.bool)
    for _ in range(60):  # bisection on the precision of each point's Gaussian to match the perplexity
        P = torch.exp(-d2 * beta).masked_fill(eye, 0)
        sumP = P.sum(1, keepdim=True).clamp_min(1e-30)
        H = (beta * (d2 * P).sum(1, keepdim=True) / sumP + sumP.log())  # entropy, nats
        too_flat = H > target
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(hi < 1e19, (lo + hi) / 2, beta * 2)
    P = P / sumP
    P = ((P + P.T) / (2 * N)).clamp_min(1e-12)
    g = torch.Generator().manual_seed(seed)
    Y = torch.randn(N, dims, generator=g, dtype=x.dtype) * 1e-4
    vel = torch.zeros_like(Y)
    lr = max(N / (4 * 12.0), 50.0)  # step size of scikit-learn's 'auto' rule
    for it in range(iters):
        exag = 12.0 if it < 100 else 1.0
        num = 1 / (1 + torch.cdist(Y, Y) ** 2)
        num = num.masked_fill(eye, 0)
        Q = (num / num.sum()).clamp_min(1e-12)
        W = (exag * P - Q) * num  # (N, N)
        grad = 4 * (W.sum(1, keepdim=True) * Y - W @ Y)
        vel = (0.5 if it < 100 else 0.8) * vel - lr * grad
        Y = Y + vel
        Y = Y - Y.mean(0)
    return Y.float()

# ----------------------------------------------------------------------------- pictures (no plotting library)

PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
           '#17becf', '#393b79', '#637939', '#8c6d31', '#843c39', '#7b4173', '#3182bd', '#e6550d', '#31a354',
           '#756bb1', '#636363']


VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]]  # 5 stops, low to high


def viridis(t):
    """t in [0, 1] (any shape) -> uint8 RGB (..., 3), a 5-point piecewise-linear viridis."""
    stops = np.array(VIRIDIS, dtype=np.float64)
    t = np.clip(np.nan_to_num(np.asarray(t, dtype=np.float64)), 0, 1) * (len(stops) - 1)
    i = np.minimum(t.astype(int), len(stops) - 2)
    f = (t - i)[..., None]
    return (stops[i] * (1 - f) + stops[i + 1] * f).round().astype(np.uint8)


def png_uri(rgb, scale=1):
    """uint8 (H, W, 3) -> data: URI of a PNG, nearest-neighbour upscaled."""
    from PIL import Image
    im = Image.fromarray(np.ascontiguousarray(rgb))
    if scale != 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format='PNG')
    return 'data:image/png;base64,' + base64.b64encode(buf.getvalue()).decode()


def heatmap(m, scale=16, caption=''):
    """A matrix as a viridis image, with a colour bar labelled by its value range, as one HTML figure."""
    m = np.asarray(m, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    img = png_uri(viridis((m - lo) / (hi - lo if hi > lo else 1)), scale)
    return (f'<figure><img src="{img}"><br>{colorbar(lo, hi, max(120, m.shape[1] * scale))}'
            + (f'<figcaption>{html.escape(caption)}</figcaption>' if caption else '') + '</figure>')


def colorbar(lo, hi, width=160, steps=32):
    """Inline SVG: the viridis scale from lo (left) to hi (right) in `steps` swatches, ends and middle labelled."""
    w = width / steps
    swatches = ''.join(f'<rect x="{i * w:.2f}" y="0" width="{w + 0.5:.2f}" height="10" fill="rgb({r},{g},{b})"/>'
                       for i, (r, g, b) in enumerate(viridis(np.linspace(0, 1, steps))))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="26" class="colorbar">{swatches}'
            f'<text x="0" y="22" font-size="10">{lo:.3g}</text>'
            f'<text x="{width / 2}" y="22" font-size="10" text-anchor="middle">{(lo + hi) / 2:.3g}</text>'
            f'<text x="{width}" y="22" font-size="10" text-anchor="end">{hi:.3g}</text></svg>')


def to_rgb(img):
    """uint8 (3, S, S) tensor -> (S, S, 3) numpy."""
    return img.permute(1, 2, 0).cpu().numpy()


def svg_lines(series, title, width=420, height=220, logy=False):
    """Inline SVG line chart of {name: [(x, y), ...]}."""
    pts = [(x, y) for s in series.values() for x, y in s if y is not None and math.isfinite(y) and (not logy or y > 0)]
    if not pts:
        return ''
    f = (lambda v: math.log10(v)) if logy else (lambda v: v)
    xs, ys = [p[0] for p in pts], [f(p[1]) for p in pts]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:  # a single x: centre it in a range around it
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - (abs(y0) * 0.1 or 0.5), y1 + (abs(y1) * 0.1 or 0.5)
    L, R, T, Bm = 50, 10, 24, 28
    X = lambda x: L + (x - x0) / (x1 - x0) * (width - L - R)  # noqa: E731
    Y = lambda y: height - Bm - (f(y) - y0) / (y1 - y0) * (height - T - Bm)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="chart">',
           f'<text x="{width / 2}" y="15" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
           f'<line x1="{L}" y1="{height - Bm}" x2="{width - R}" y2="{height - Bm}" stroke="#999"/>',
           f'<line x1="{L}" y1="{T}" x2="{L}" y2="{height - Bm}" stroke="#999"/>',
           f'<text x="{L - 4}" y="{T + 4}" text-anchor="end" font-size="10">{(10 ** y1 if logy else y1):.3g}</text>',
           f'<text x="{L - 4}" y="{height - Bm}" text-anchor="end" font-size="10">{(10 ** y0 if logy else y0):.3g}</text>',
           f'<text x="{L}" y="{height - 10}" font-size="10">{x0:.3g}</text>',
           f'<text x="{width - R}" y="{height - 10}" text-anchor="end" font-size="10">{x1:.3g}</text>']
    for k, (name, s) in enumerate(series.items()):
        s = [(x, y) for x, y in s if y is not None and math.isfinite(y) and (not logy or y > 0)]
        if not s:
            continue
        c = PALETTE[k % len(PALETTE)]
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.5" points="' +
                   ' '.join(f'{X(x):.1f},{Y(y):.1f}' for x, y in s) + '"/>')
        out += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{c}"/>' for x, y in s if len(s) <= 20]
        if len(s) == 1:  # one point (one checkpoint): say its value beside it
            out.append(f'<text x="{X(s[0][0]) + 6:.1f}" y="{Y(s[0][1]) - 4:.1f}" font-size="10" fill="{c}">'
                       f'{s[0][1]:.4g}</text>')
        out.append(f'<text x="{width - R - 4}" y="{T + 12 + 12 * k}" text-anchor="end" font-size="10" fill="{c}">'
                   f'{html.escape(name)}</text>')
    return ''.join(out) + '</svg>'


def svg_scatter(xy, labels, title, size=320):
    xy = np.asarray(xy, dtype=np.float64)
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi > lo, hi - lo, 1)
    p = 10 + (xy - lo) / span * (size - 20)
    dots = ''.join(f'<circle cx="{x:.1f}" cy="{size + 10 - y:.1f}" r="2" fill="{PALETTE[int(c) % len(PALETTE)]}" '
                   f'fill-opacity="0.7"/>' for (x, y), c in zip(p, labels))
    ends = (f'<text x="10" y="{size + 18}" font-size="9" fill="#666">x {lo[0]:.3g}</text>'
            f'<text x="{size - 10}" y="{size + 18}" font-size="9" fill="#666" text-anchor="end">{hi[0]:.3g}</text>'
            f'<text x="2" y="{size + 10}" font-size="9" fill="#666">y {lo[1]:.3g}</text>'
            f'<text x="2" y="30" font-size="9" fill="#666">{hi[1]:.3g}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size + 22}" class="chart">'
            f'<text x="{size / 2}" y="14" text-anchor="middle" font-size="13">{html.escape(title)}</text>{dots}{ends}</svg>')


def html_table(rows, cols=None):
    """rows: list of dicts -> HTML table (floats to 4 significant digits)."""
    if not rows:
        return ''
    cols = cols or list(rows[0])
    fmt = lambda v: f'{v:.4g}' if isinstance(v, float) else html.escape(str(v))  # noqa: E731
    head = ''.join(f'<th>{html.escape(c)}</th>' for c in cols)
    body = ''.join('<tr>' + ''.join(f'<td>{fmt(r.get(c, ""))}</td>' for c in cols) + '</tr>' for r in rows)
    return f'<table><tr>{head}</tr>{body}</table>'

# ----------------------------------------------------------------------------- analysis of one checkpoint


@torch.no_grad()
def student_features(encoder, images, patch_size, batch_size=256, seed=0):
    """Pooled context-encoder features on I-JEPA-masked images (the student's view)."""
    g, rng = torch.Generator(device=images.device).manual_seed(seed), random.Random(seed)
    out = []
    for x in images.split(batch_size):
        grid = x.shape[-1] // patch_size
        ctx, _ = jepa.multiblock_masks(x.shape[0], grid, grid, rng=rng, generator=g, device=x.device)
        out.append(encoder(jepa.normalize(x), ctx).mean(1).float())
    return torch.cat(out)


STUDENT_TEACHER = ['l1_sparsity', 'activation_ratio', 'dead_units', 'gini']


def student_vs_teacher(encoder, x, z_teacher, patch_size, masks=5):
    """The I-JEPA sparsity protocol: the student (context encoder on the I-JEPA context of a fresh multi-block mask,
    `masks` draws) against the teacher (target encoder on the full image, z_teacher (N, D)) on the same N images.
    Per metric: the teacher's value, the student's mean and sd over the draws, and student minus teacher."""
    teacher = embedding_metrics(z_teacher)
    draws = [embedding_metrics(student_features(encoder, x, patch_size, seed=s)) for s in range(masks)]
    out = {}
    for k in STUDENT_TEACHER:
        v = torch.tensor([d[k] for d in draws], dtype=torch.float64)  # (masks,)
        out[k] = {'teacher': teacher[k], 'student': v.mean().item(), 'student_sd': v.std().item() if masks > 1 else 0.0,
                  'difference': v.mean().item() - teacher[k]}
    return out


def retrieval_images(z, y, images, queries=6, k=5):
    """Nearest-neighbour retrieval: per query image its k cosine nearest neighbours among the other images (itself
    excluded), framed green when their class is the query's, red when not."""
    zn = F.normalize(z.float(), dim=1)
    sim = zn[:queries] @ zn.T  # (queries, N)
    sim[torch.arange(queries), torch.arange(queries)] = float('-inf')
    idx = sim.topk(k, dim=1).indices.cpu()  # (queries, k)
    scale = max(1, 64 // images.shape[-1])

    def framed(img, colour):
        rgb = np.pad(to_rgb(img), ((2, 2), (2, 2), (0, 0)))
        rgb[:2], rgb[-2:], rgb[:, :2], rgb[:, -2:] = colour, colour, colour, colour
        return png_uri(rgb, scale)
    rows = []
    for q in range(queries):
        hits = [framed(images[j], (40, 170, 40) if y[j] == y[q] else (200, 40, 40)) for j in idx[q].tolist()]
        rows.append((framed(images[q], (120, 120, 120)), hits))
    return rows


@torch.no_grad()
def patch_pca_images(encoder, images):
    """Each image beside its patch features' first three principal components as RGB (fit over all images)."""
    tokens = encoder(jepa.normalize(images)).float()  # (n, L, D)
    n, L, D = tokens.shape
    grid = int(math.isqrt(L))
    flat = tokens.reshape(-1, D)
    flat = flat - flat.mean(0)
    _, _, V = torch.linalg.svd(flat, full_matrices=False)
    comp = (flat @ V[:3].T).view(n, grid, grid, 3)
    lo, hi = comp.amin((0, 1, 2)), comp.amax((0, 1, 2))
    rgb = ((comp - lo) / (hi - lo).clamp_min(1e-12) * 255).byte().cpu().numpy()
    S = images.shape[-1]
    return [(png_uri(to_rgb(img), max(1, 96 // S)), png_uri(r, max(1, 96 // grid))) for img, r in zip(images, rgb)]


def attention_map_images(weights, images):
    """Per image, the last layer's attention over the patch grid: how much each patch is attended to, averaged over
    queries and heads."""
    rows = weights[-1].mean((1, 2))  # (B, L)
    grid = int(math.isqrt(rows.shape[1]))
    out = []
    for img, r in zip(images, rows):
        m = r.view(grid, grid).cpu().numpy()
        S = img.shape[-1]
        base = to_rgb(img).astype(np.float64)
        heat = viridis((m - m.min()) / max(m.max() - m.min(), 1e-12)).astype(np.float64)
        heat = np.kron(heat, np.ones((S // grid, S // grid, 1)))
        out.append(png_uri((0.45 * base + 0.55 * heat).astype(np.uint8), max(1, 96 // S)))
    return out


def group_activation_maps(model, cfg, images):
    """SparseJEPA: for each group g, a_(g,i) = ||W^(g) e_i|| over the patch grid of one image, e_i the context
    encoder's feature of patch i."""
    W = model.predictor.embed.weight.detach()  # (Dp, D)
    G = cfg['num_groups']
    with torch.no_grad():
        e = model.encoder(jepa.normalize(images[:1])).float()[0]  # (L, D)
    act = (W.view(G, -1, W.shape[1]) @ e.T).norm(dim=1)  # (G, L)
    grid = int(math.isqrt(act.shape[1]))
    return [heatmap(a.view(grid, grid).cpu().numpy(), 8, f'group {g}') for g, a in enumerate(act)]


@torch.no_grad()
def analyze_checkpoint(ck, data, args, last):
    """Metrics of one checkpoint (and, for the last one, the pictures)."""
    model, cfg = probe.model_from_checkpoint(ck, data['test_x'].device)
    model.eval()
    teacher = model.features_encoder()
    n = min(args['samples'], len(data['test_x']))
    x, y = data['test_x'][:n], data['test_y'][:n].to(data['test_x'].device)
    h_t = patch_features(teacher, x)  # (N, L, D): one pass gives the patch metrics and the pooled features
    z_t = h_t.mean(1)
    z_s = student_features(model.encoder, x, cfg['patch_size'])
    m = min(args['protocol_images'], n)
    row = {'epoch': float(ck['epoch']), 'step': ck['step'],
           'teacher': embedding_metrics(z_t, y), 'student': embedding_metrics(z_s, y),
           'student_vs_teacher': student_vs_teacher(model.encoder, x[:m], z_t[:m], cfg['patch_size'], args['masks']),
           'patches': patch_metrics(h_t)}
    imgs = x[:args['images']]
    weights = attention_weights(teacher, jepa.normalize(imgs))
    row['attention'] = [attention_metrics(w) for w in weights]
    if model.method.log_terms:  # the method's own logged numbers (SparseJEPA: omega, group sparsity)
        row.update({k: float(v) for k, v in model.method.log_terms(model).items()})
    if not last:
        return row, {}
    pics = {'attention_maps': attention_map_images(weights, imgs),
            'patch_pca': patch_pca_images(teacher, imgs), 'pca': pca_2d(z_t).cpu().numpy(),
            'retrieval': retrieval_images(z_t, y.cpu(), x, args['images'])}
    if args['tsne']:
        print(f"  t-SNE of {n} points", flush=True)
        pics['tsne'] = tsne(z_t.cpu()).numpy()
    C = len(data['classes'])
    cent = torch.stack([z_t[y == c].mean(0) if (y == c).any() else torch.zeros_like(z_t[0]) for c in range(C)])
    cent = F.normalize(cent, dim=1)
    row['centroid_similarity'] = (cent @ cent.T).tolist()
    big = F.interpolate(x.float(), scale_factor=2, mode='bilinear', align_corners=False).round().clamp(0, 255).byte()
    z_big = probe.extract_features(teacher, big)
    row['rope_2x'] = embedding_metrics(z_big, y)
    row['rope_2x']['attention'] = [attention_metrics(w) for w in attention_weights(teacher, jepa.normalize(big[:len(imgs)]))]
    half = n // 2
    row['rope_2x']['knn_accuracy'] = probe.knn_accuracy(z_big[:half], y[:half], z_big[half:], y[half:])
    row['teacher']['knn_accuracy'] = probe.knn_accuracy(z_t[:half], y[:half], z_t[half:], y[half:])
    pics['labels'] = y.cpu().numpy()
    pics['embeddings'] = z_t
    if 'group_sparsity' in row:  # SparseJEPA: which groups each patch's features feed
        pics['group_maps'] = group_activation_maps(model, cfg, imgs)
    return row, pics

# ----------------------------------------------------------------------------- report


def read_log(run_dir):
    path = os.path.join(run_dir, 'log.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


SET_METRICS = ['hoyer', 'activation_ratio', 'gini', 'dead_units', 'l0_fraction', 'l1_l2_fraction', 'pca_var_10',
               'pca_var_50', 'effective_rank', 'dim_std', 'silhouette', 'nn_precision_at_5']
PATCH_METRICS = ['patch_effective_rank', 'patch_dim_std', 'within_image_share']


def build_report(run_dir, cfg, rows, pics, log, compare, classes, args):
    """The self-contained HTML page."""
    h = [f'<!doctype html><html><head><meta charset="utf-8"><title>nano-jepa analysis: {html.escape(run_dir)}</title>',
         '<style>body{font-family:sans-serif;margin:24px;max-width:1100px}table{border-collapse:collapse;'
         'margin:8px 0}td,th{border:1px solid #ccc;padding:3px 6px;font-size:12px;text-align:right}'
         'img{image-rendering:pixelated;margin:2px}.chart{margin:4px;border:1px solid #eee}figure{display:inline-block;'
         'margin:4px;text-align:center;font-size:11px}</style></head><body>',
         f'<h1>{html.escape(cfg["method"])} on {html.escape(cfg["data"])}</h1>',
         f'<p>Run <code>{html.escape(run_dir)}</code>: {len(rows)} checkpoint(s), encoder width {cfg["width"]}, depth '
         f'{cfg["depth"]}, {cfg["img_size"]}px images, patch {cfg["patch_size"]}. Metrics on the first '
         f'{len(pics.get("labels", []))} test images.</p>']
    if log:
        keys = [k for k in log[0] if k not in ('step', 'epoch', 'elapsed_s', 'img_per_s', 'lr', 'wd', 'momentum')]
        h.append('<h2>Training curves</h2>')
        h += [svg_lines({k: [(r['step'], r.get(k)) for r in log]}, k, logy=k in ('loss', 'pred', 'grad_norm')) for k in keys]
        h.append(svg_lines({'lr': [(r['step'], r['lr']) for r in log]}, 'learning rate'))
    h.append('<h2>Embeddings per epoch: teacher (full image) vs student (masked context)</h2>')
    for who in ('teacher', 'student'):
        h.append(f'<h3>{who}</h3>' + html_table([{'epoch': r['epoch'], **r[who]} for r in rows], ['epoch'] + SET_METRICS))
    st = rows[-1]['student_vs_teacher']
    h.append(f'<h3>student vs teacher: {args["masks"]} mask draws × {args["protocol_images"]} images</h3>'
             '<p>Student: context encoder on the I-JEPA context of each draw, mean ± sd over the draws; teacher: target '
             'encoder on the full image; difference: student − teacher.</p>' +
             html_table([{'epoch': r['epoch'], **{f'{k} {w}': r['student_vs_teacher'][k][w] for k in st
                                                  for w in ('student', 'student_sd', 'teacher', 'difference')}}
                         for r in rows]))
    h.append('<h3>teacher patch tokens (the targets of the masked methods)</h3>' +
             html_table([{'epoch': r['epoch'], **r['patches']} for r in rows], ['epoch'] + PATCH_METRICS))
    ep = [r['epoch'] for r in rows]
    for k in ('hoyer', 'gini', 'effective_rank', 'nn_precision_at_5'):
        h.append(svg_lines({w: list(zip(ep, [r[w][k] for r in rows])) for w in ('teacher', 'student')}, k))
    if 'group_sparsity' in rows[-1]:
        h.append('<h2>Group sparsity (SparseJEPA)</h2>' +
                 svg_lines({'groups per latent': list(zip(ep, [r['group_sparsity'] for r in rows]))}, 'group sparsity') +
                 svg_lines({'omega': list(zip(ep, [r['omega'] for r in rows]))}, 'group lasso penalty'))
        h.append('<p>Group activation maps a<sub>g,i</sub> = ||W<sup>(g)</sup> e<sub>i</sub>|| over the patches of one '
                 'image, one per group:</p>' +
                 ''.join(pics['group_maps']))
    last = rows[-1]
    h.append('<h2>Attention (teacher, last checkpoint)</h2>')
    att_rows = []
    for li, a in enumerate(last['attention']):
        for hd in range(len(a['entropy'])):
            att_rows.append({'layer': li, 'head': hd, 'entropy': a['entropy'][hd], 'max_weight': a['max_weight'][hd],
                             'sparsity': a['sparsity'][hd], 'layer head diversity': a['head_diversity']})
    h.append(html_table(att_rows))
    h.append('<p>Head similarity per layer (mean cosine between heads\' maps):</p>' +
             ''.join(heatmap(a['head_similarity'], 24, f'layer {i}') for i, a in enumerate(last['attention'])))
    h.append('<p>Last-layer attention over each image (how much each patch is attended to, mean over queries):</p>' +
             ''.join(f'<img src="{u}">' for u in pics['attention_maps']))
    h.append('<h2>Patch features: first three principal components as RGB</h2>' +
             ''.join(f'<figure><img src="{a}"><img src="{b}"></figure>' for a, b in pics['patch_pca']))
    h.append('<h2>Variance explained: the first k principal components of the pooled teacher features</h2>' +
             svg_lines({f'epoch {r["epoch"]:g}': list(enumerate(r['teacher']['variance_curve'], 1)) for r in rows},
                       'cumulative share of variance'))
    h.append('<h2>Nearest-neighbour retrieval (teacher features, cosine)</h2><p>Each query (grey) and its five nearest '
             'test images: green frame, same class; red, another class.</p>' +
             ''.join(f'<div><img src="{q}"> → ' + ''.join(f'<img src="{u}">' for u in hits) + '</div>'
                     for q, hits in pics['retrieval']))
    h.append('<h2>Maps of the embeddings (colour = class)</h2>' + svg_scatter(pics['pca'], pics['labels'], 'PCA'))
    if 'tsne' in pics:
        h.append(svg_scatter(pics['tsne'], pics['labels'], 't-SNE'))
    h.append('<h2>Class-centroid cosine similarity</h2>' +
             heatmap(last['centroid_similarity'], max(4, 320 // max(1, len(classes)))) + '<p>Classes: ' +
             ', '.join(html.escape(c) for c in classes) + '</p>')
    h.append('<h2>RoPE extrapolation: the same encoder at twice the training resolution</h2>' +
             html_table([{'resolution': f'{cfg["img_size"]}px (trained)', **last['teacher']},
                         {'resolution': f'{2 * cfg["img_size"]}px', **last['rope_2x']}],
                        ['resolution'] + SET_METRICS + ['knn_accuracy']) +
             '<p>Attention per layer at both resolutions (mean over heads; entropy grows by up to log 4 = 1.39 nats '
             'when a query spreads its weight evenly over four times the tokens):</p>' +
             html_table([{'layer': li, 'resolution': res, **{k: float(np.mean(a[k])) for k in ('entropy', 'max_weight', 'sparsity')},
                          'head diversity': a['head_diversity']}
                         for li in range(len(last['attention']))
                         for res, a in ((f'{cfg["img_size"]}px', last['attention'][li]),
                                        (f'{2 * cfg["img_size"]}px', last['rope_2x']['attention'][li]))]))
    if compare:
        h.append('<h2>Comparison</h2>' + html_table(compare, ['set'] + SET_METRICS))
    h.append('</body></html>')
    return '\n'.join(h)


def load_compare(path, ours, labels):
    """Set-level metrics of embeddings from elsewhere, beside ours."""
    if not os.path.isfile(path):
        raise jepa.UserError(f"--compare={path} does not exist")
    try:
        npz = np.load(path)
        z = torch.from_numpy(np.asarray(npz['embeddings'], dtype=np.float64))
        y = torch.from_numpy(np.asarray(npz['labels'])).long() if 'labels' in npz.files else None
    except Exception as e:
        raise jepa.UserError(f"--compare={path} is not an .npz with an 'embeddings' array ({type(e).__name__})")
    if z.dim() != 2:
        raise jepa.UserError(f"--compare={path}: embeddings must be (N, D), got {tuple(z.shape)}")
    return [{'set': 'this run (teacher)', **ours}, {'set': os.path.basename(path), **embedding_metrics(z, y)}]


def main(argv):
    args = jepa.parse_args(argv, DEFAULTS, HELP)
    if not args['run']:
        raise jepa.UserError("--run=RUN_DIR is required: a run directory written by jepa.py")
    if not os.path.isdir(args['run']):
        raise jepa.UserError(f"--run={args['run']} is not a directory")
    paths = jepa.list_checkpoints(args['run'])
    if not paths:
        raise jepa.UserError(f"{args['run']} holds no ckpt_*.pt: is it a jepa.py run directory?")
    dev = jepa.pick_device(args['device'])
    cfg, data = probe.evaluation_data(jepa.load_checkpoint(paths[-1])['config'], args, dev)
    rows, pics = [], {}
    t0 = time.time()
    for i, path in enumerate(paths):
        print(f"[{i + 1}/{len(paths)}] {os.path.basename(path)} ({time.time() - t0:.0f}s)", flush=True)
        row, p = analyze_checkpoint(jepa.load_checkpoint(path), data, args, last=i == len(paths) - 1)
        rows.append(row)
        pics.update(p)
        t, pm = row['teacher'], row['patches']
        print(f"  pooled: effective rank {t['effective_rank']:.1f}, dim std {t['dim_std']:.3f} | patches: effective "
              f"rank {pm['patch_effective_rank']:.1f}, dim std {pm['patch_dim_std']:.3f}, within-image share "
              f"{pm['within_image_share']:.3f}", flush=True)
    compare = load_compare(args['compare'], rows[-1]['teacher'], pics['labels']) if args['compare'] else None
    with open(os.path.join(args['run'], 'metrics.json'), 'w') as f:
        json.dump({'checkpoints': rows, 'compare': compare}, f, indent=1)
    page = build_report(args['run'], cfg, rows, pics, read_log(args['run']), compare, data['classes'], args)
    out = os.path.join(args['run'], 'report.html')
    with open(out, 'w') as f:
        f.write(page)
    print(f"wrote {os.path.join(args['run'], 'metrics.json')} and {out} ({len(page) / 1024:.0f} KiB)")
    return rows


if __name__ == '__main__':
    sys.exit(jepa.cli(main, sys.argv[1:]))
