"""
nano-jepa: Joint-Embedding Predictive Architectures for images, in one file.

    python jepa.py                                  # I-JEPA on the embedded shapes data (a few minutes on a CPU)
    python jepa.py --method=lejepa --local_views=0  # LeJEPA: multi-view invariance + SIGReg, no EMA, no stop-grad
    python jepa.py --method=lejepa -h               # every config key with the value that run uses, and why

Read it top to bottom, the method first: config -> model (RoPE, attention, ViT, predictor) -> masking -> objectives
(I-JEPA, SIGReg, group sparsity, InfoNCE) -> methods -> EMA and schedules -> augmentation -> training loop -> summary;
then the plumbing a reader can skip: data readers, set-up, checkpoints and command line. Papers: I-JEPA (Assran et
al. 2023), LeJEPA (Balestriero & LeCun 2025), SparseJEPA (Hartman & Varshney 2025), oi-VAE (Ainsworth et al. 2018),
RoPE-ViT (Heo et al. 2024). The README's "Math" section fixes every definition used here.
"""
import collections, copy, dataclasses, difflib, functools, hashlib, io, json, math, os, pathlib, pickle, random, re, sys, tarfile
import time, types, zipfile, zlib
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- config
# Every name assigned in this block is a config key: `--key=value` overrides it, `-h` lists them all.
# data
data = 'shapes'           # shapes (embedded, procedural) | cifar10 | cifar100 | tinyimagenet | folder
data_dir = ''             # folder or archive to read ('' for cifar: data/cifar-10(0)-python.tar.gz, `make cifar10`)
img_size = 32             # images are resized to img_size x img_size once, when loaded
crop_scale = 0.6          # smallest area of the random-resized crop (ijepa, ijepa_sigreg, sparse); official 0.3 (README)
# method
method = 'ijepa'          # ijepa | ijepa_sigreg | lejepa | sparse | infonce (README: Reading jepa.py)
# encoder (ViT-nano with 2-D RoPE) and predictor
patch_size = 4            # patch side in pixels; must divide img_size
width = 128               # encoder width D
depth = 4                 # encoder blocks
heads = 4                 # attention heads; width/heads must be divisible by 4 for 2-D RoPE
pred_width = 64           # predictor width Dp (the narrow I-JEPA predictor)
pred_depth = 1            # predictor blocks (1: more steps in a budget, README: Why these defaults)
pred_heads = 2            # predictor heads; pred_width/pred_heads divisible by 4
# optimisation
epochs = 8                # passes over the training set
steps = 0                 # total optimizer steps; overrides epochs when > 0
budget_minutes = 0.0      # > 0: train for this wall-clock budget; schedules follow the elapsed fraction
batch_size = 16           # images per optimizer step (small: short CPU budgets need steps; README: Results)
lr = 1e-3                 # peak AdamW lr of a width-128 encoder, reached after warm-up; the run's: lr * 128 / width
min_lr = 1e-5             # learning rate at the end of the cosine decay
warmup = 0.1              # fraction of training spent in linear lr warm-up
lowres = 0.75             # crop side in the first lowres_frac of training, a fraction of img_size (ijepa, ijepa_sigreg, sparse)
lowres_frac = 0.5         # share of training at the lower resolution; 0 = always img_size (README: Results)
pred_lr = 0.3             # predictor lr / lr (ijepa; ijepa_sigreg and sparse: 1, their records in METHODS)
weight_decay = 0.04       # weight decay at the start; rises (cosine) to weight_decay_end
weight_decay_end = 0.4    # weight decay at the end
ema = 0.99                # EMA momentum per 16 images at the start (ijepa, sparse); the run's: ema ** (batch_size / 16)
ema_end = 0.99            # the same at the end, reached linearly; official 0.996 -> 1
# regularisers
sigreg_weight = 0.05      # lambda of (1-lambda)*loss + lambda*SIGReg (ijepa_sigreg; lejepa: 0.1, its record)
num_slices = 256          # M random directions per SIGReg evaluation
global_views = 2          # LeJEPA global views (crop scale 0.3-1, full resolution)
local_views = 2           # LeJEPA local views (crop scale 0.05-0.3, half resolution)
proj_dim = 128            # projector output size K (lejepa, infonce)
group_lambda = 0.1        # lambda of the group-lasso proximal step, threshold lr*lambda (sparse; README: Results)
num_groups = 8            # G groups of the predictor input projection's rows (sparse)
tau = 0.2                 # InfoNCE temperature
# run
out_dir = ''              # run directory ('' = runs/<data>_<method>)
seed = 0                  # seeds init, data order, augmentation, masks, SIGReg directions (and the shapes data)
resume = False            # continue from the newest checkpoint in out_dir
device = 'auto'           # auto (cuda > mps > cpu) | cuda | mps | cpu
compile = False           # torch.compile the model
triton_kernels = True     # fused Triton attention (RoPE inside) and SIGReg kernels on CUDA (on CPU under TRITON_INTERPRET=1)
log_every = 25            # steps between log lines
probe = True              # linear probe of trained and random-init encoders at the end
# -----------------------------------------------------------------------------

CONFIG_KEYS = [k for k, v in list(globals().items())
               if not k.startswith('_') and isinstance(v, (bool, int, float, str)) and k != 'CONFIG_KEYS']

def derive(cfg):
    """The values that follow from the config, computed once here, printed in the run's header and saved with it."""
    scale = cfg['batch_size'] / 16  # the teacher averages over ~1,600 images at any batch: B / (1 - m) stays put
    return {'peak_lr': cfg['lr'] * 128 / cfg['width'],  # a wider encoder takes smaller Adam steps (muP for Adam)
            'momentum': cfg['ema'] ** scale, 'momentum_end': cfg['ema_end'] ** scale}

DATASETS = ('shapes', 'cifar10', 'cifar100', 'tinyimagenet', 'folder')

class UserError(Exception):
    """Bad input from the user: printed as one line, exit code 2, no traceback."""

# ----------------------------------------------------------------------------- model
# ViT-nano: patch embedding, pre-norm transformer blocks, final LayerNorm. Positions enter only through 2-D
# axial RoPE on queries and keys; there is no position table, so a subset of tokens (the I-JEPA context) or a
# larger grid (RoPE extrapolation) needs nothing but the tokens' grid coordinates.

def grid_pos(idx, grid_w):
    """Row-major patch indices (...) -> (column, row) grid positions (..., 2)."""
    return torch.stack([idx % grid_w, idx // grid_w], -1)

ROPE_THETA = 100.0  # RoPE base: frequencies theta^(-4k/d)

def rope(x, pos, theta=ROPE_THETA):
    """2-D axial RoPE (Heo et al. 2024). x (B, H, N, d), pos (B, N, 2) or (N, 2) as (column, row).
    Channel pair m = (x_2m, x_2m+1), read as the complex number x_2m + i x_2m+1, is multiplied by e^(i phi_m):
    phi_m = column * omega_m for m < d/4 and row * omega_(m-d/4) otherwise, omega_k = theta^(-4k/d)."""
    d = x.shape[-1]
    dt = torch.promote_types(x.dtype, torch.float32)  # fp32, or fp64 for fp64 input
    omega = theta ** (-4 * torch.arange(d // 4, device=x.device, dtype=dt) / d)  # (d/4,)
    pos = pos.to(dt)
    phi = torch.cat([pos[..., :1] * omega, pos[..., 1:] * omega], -1)  # (B, N, d/2) or (N, d/2)
    if phi.dim() == 3:
        phi = phi.unsqueeze(1)  # (B, 1, N, d/2): the same positions in every head
    xc = torch.view_as_complex(x.to(dt).reshape(*x.shape[:-1], d // 2, 2))  # (B, H, N, d/2) complex
    return torch.view_as_real(xc * torch.polar(torch.ones_like(phi), phi)).flatten(-2).type_as(x)

def visible(seg):
    """seg (N,) segment ids -> bool (N, N) [query, key]: keys of segment 0 are seen by all, others by their segment."""
    return (seg[None, :] == 0) | (seg[None, :] == seg[:, None])

def attention(q, k, v, pos, seg=None, kernels=False):
    """Non-causal softmax attention with 2-D RoPE on q and k, over the keys seg makes visible: q, k, v (B, H, N, d) ->
    (B, H, N, d). RoPE then SDPA defines what the fused kernel (kernels=True) computes, and is its fallback."""
    if kernels:
        from kernels.attention import attention as fused_attention
        return fused_attention(q, k, v, pos, seg)
    return F.scaled_dot_product_attention(rope(q, pos), rope(k, pos), v, attn_mask=None if seg is None else visible(seg))

class Attention(nn.Module):
    def __init__(self, dim, heads, kernels=False):
        super().__init__()
        self.heads, self.kernels = heads, kernels  # kernels: fused Triton attention where available
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def split_heads(self, x):  # x (B, N, D) -> q, k, v (B, H, N, d)
        B, N, D = x.shape
        return self.qkv(x).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)

    def forward(self, x, pos, seg=None):  # x (B, N, D)
        x = attention(*self.split_heads(x), pos, seg, self.kernels)  # (B, H, N, d)
        return self.proj(x.transpose(1, 2).flatten(2))  # (B, N, D)

    def weights(self, x, pos):
        """The attention probabilities forward uses, softmax(RoPE(q) RoPE(k)^T / sqrt(d)) (B, H, N, N), for study."""
        q, k, _ = self.split_heads(x)
        return (rope(q, pos) @ rope(k, pos).transpose(-1, -2) / math.sqrt(q.shape[-1])).float().softmax(-1)

class Block(nn.Module):
    def __init__(self, dim, heads, kernels=False):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), Attention(dim, heads, kernels), nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, pos, seg=None):
        x = x + self.attn(self.norm1(x), pos, seg)
        return x + self.mlp(self.norm2(x))

def init_weights(module):
    """Truncated-normal linear weights (std 0.02) and zero biases, as in the official I-JEPA code."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

class ViT(nn.Module):
    def __init__(self, patch_size, width, depth, heads, kernels=False):
        super().__init__()
        self.patch_size, self.width = patch_size, width
        self.patch_embed = nn.Conv2d(3, width, patch_size, stride=patch_size)
        self.blocks = nn.ModuleList([Block(width, heads, kernels) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        init_weights(self)

    def forward(self, img, idx=None):
        """img float (B, 3, S, S); idx (B, N) row-major indices of the patches to keep (None: all).
        Returns patch tokens (B, N, D)."""
        x = self.patch_embed(img)  # (B, D, S/p, S/p)
        grid_w = x.shape[-1]
        x = x.flatten(2).transpose(1, 2).contiguous()  # (B, L, D); else each layer norm copies the transposed input
        if idx is None:
            pos = grid_pos(torch.arange(x.shape[1], device=x.device), grid_w)  # (L, 2)
        else:
            x = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, N, D)
            pos = grid_pos(idx, grid_w)  # (B, N, 2): each kept token keeps its original place
        for blk in self.blocks:
            x = blk(x, pos)
        return self.norm(x)

class Predictor(nn.Module):
    """The narrow I-JEPA predictor: context tokens projected to width Dp, one shared learned mask token per target
    position (placed there by RoPE), a few blocks, back to width D. All target blocks of an image share one sequence
    [context, block 1, ..., block nb] in segments: each block's mask tokens see the context and their own block, the
    context only itself (the official one-pass-per-block predictor lets it see the mask tokens): half the work."""
    def __init__(self, width, pred_width, depth, heads, kernels=False):
        super().__init__()
        self.embed = nn.Linear(width, pred_width)  # weight (Dp, D): SparseJEPA's latent-to-group matrix
        self.mask_token = nn.Parameter(torch.zeros(1, 1, pred_width))
        self.blocks = nn.ModuleList([Block(pred_width, heads, kernels) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(pred_width), nn.Linear(pred_width, width)
        init_weights(self)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, z, ctx_idx, tgt_idx, grid_w):
        """z (B, Nc, D) context tokens at ctx_idx (B, Nc); tgt_idx (B, nb, Nt) -> predictions (B, nb, Nt, D)."""
        B, nb, Nt = tgt_idx.shape
        Nc = ctx_idx.shape[1]
        seg = F.pad(torch.arange(1, nb + 1, device=z.device).repeat_interleave(Nt), (Nc, 0))  # 0 context, i block i
        x = torch.cat([self.embed(z), self.mask_token.expand(B, nb * Nt, -1)], 1)  # (B, Nc + nb*Nt, Dp)
        pos = grid_pos(torch.cat([ctx_idx, tgt_idx.flatten(1)], 1), grid_w)  # (B, Nc + nb*Nt, 2)
        for blk in self.blocks:
            x = blk(x, pos, seg)
        return self.head(self.norm(x[:, Nc:])).view(B, nb, Nt, -1)

class JEPA(nn.Module):
    """Everything one method trains: the encoder, and the teacher and heads its record in METHODS asks for."""
    def __init__(self, cfg):
        super().__init__()
        self.cfg, self.method, kernels = cfg, METHODS[cfg['method']], cfg['triton_kernels']
        self.encoder = ViT(cfg['patch_size'], cfg['width'], cfg['depth'], cfg['heads'], kernels)
        self.target = copy.deepcopy(self.encoder).requires_grad_(False) if self.method.teacher == 'ema' else None
        if 'predictor' in self.method.heads:
            self.predictor = Predictor(cfg['width'], cfg['pred_width'], cfg['pred_depth'], cfg['pred_heads'], kernels)
        if 'projector' in self.method.heads:
            self.projector = nn.Sequential(  # MLP head of the multi-view methods: pooled D -> K
                nn.Linear(cfg['width'], 512), nn.BatchNorm1d(512), nn.GELU(), nn.Linear(512, cfg['proj_dim']))

    def forward(self, batch):  # one training step's Batch -> (loss, dict of logged terms)
        return self.method.loss(self, batch)

    def features_encoder(self):
        """The encoder whose pooled output is the representation: the EMA target when there is one."""
        return self.target if self.target is not None else self.encoder

def build_model(cfg, dev):
    """The JEPA of cfg on dev; the Triton kernels only where the device policy runs them."""
    torch.manual_seed(cfg['seed'])
    cfg = dict(cfg, triton_kernels=device_policy(dev, cfg['triton_kernels']).kernels)
    return JEPA(cfg).to(dev)

# ----------------------------------------------------------------------------- masking (I-JEPA multi-block)
def multiblock_masks(batch_size, grid_h, grid_w, *, rng, num_targets=4, generator=None, device=None,
                     target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5), context_scale=(0.85, 1.0)):
    """I-JEPA multi-block masks for a batch, vectorised on the device, with no rejection loop and no host sync ->
    context_idx (B, Nc), target_idx (B, num_targets, Nt), row-major patch indices. The batch-wide sizes are Python
    numbers from rng (a random.Random), so every shape is known on the host; positions come from `generator` on the
    device, each block's top-left corner uniform over all valid positions. The context is a square block minus the
    targets: every image keeps a uniformly random subset of Nc of its patches, Nc that set's expected size (so no
    count is read back), topped up where smaller with non-target patches from outside it; a target is never context."""
    B, H, W, L, nb = batch_size, grid_h, grid_w, grid_h * grid_w, num_targets
    s, r = rng.uniform(*target_scale), rng.uniform(*target_aspect)  # scale, aspect: in this order from rng
    area = math.floor(L * s)
    h, w = min(max(round(math.sqrt(area * r)), 1), H), min(max(round(math.sqrt(area / r)), 1), W)
    while nb * h * w >= L and h * w > 1:  # tiny grids: leave room for context (at most H+W steps)
        h, w = (h - 1, w) if h >= w else (h, w - 1)
    cs = math.floor(L * rng.uniform(*context_scale))
    ch = cw = min(max(round(math.sqrt(cs)), 1), H, W)  # square context block
    n_keep = min(max(1, expected_context(H, W, h, w, ch, cw, nb)), L - nb * h * w)  # <= the non-target patches
    rand = torch.rand(B, 2 * nb + 2, generator=generator, device=device)  # one draw for all corners
    top = (rand[:, :nb] * (H - h + 1)).long()  # (B, nb), uniform over 0..H-h inclusive
    left = (rand[:, nb:2 * nb] * (W - w + 1)).long()
    ctop = (rand[:, 2 * nb:2 * nb + 1] * (H - ch + 1)).long()  # (B, 1)
    cleft = (rand[:, 2 * nb + 1:2 * nb + 2] * (W - cw + 1)).long()
    ar_h, ar_w = torch.arange(H, device=device), torch.arange(W, device=device)
    block = (ar_h[:h, None] * W + ar_w[:w]).flatten()  # (h*w,) offsets of a block's patches from its corner
    target_idx = (top * W + left).unsqueeze(-1) + block  # (B, nb, h*w)

    in_target = torch.zeros(B, L, dtype=torch.bool, device=device).scatter_(1, target_idx.flatten(1), True)
    rows_in = (ar_h >= ctop) & (ar_h < ctop + ch)  # (B, H)
    cols_in = (ar_w >= cleft) & (ar_w < cleft + cw)  # (B, W)
    in_block = (rows_in.unsqueeze(2) & cols_in.unsqueeze(1)).flatten(1)  # (B, L)
    # random priorities in three tiers: the context block's non-target patches first, then the other non-target
    # patches, targets last (never reached: n_keep is at most the non-target count). The top n_keep of random
    # keys restricted to a set are a uniformly random subset of it.
    tier = (~in_target).long() + (in_block & ~in_target).long()  # (B, L): 2, 1 or 0
    key = tier + torch.rand(B, L, generator=generator, device=device)
    context_idx = key.topk(n_keep, dim=1).indices.sort(dim=1).values  # (B, Nc), row-major
    return context_idx, target_idx

def expected_context(H, W, h, w, ch, cw, nb):
    """Expected size of a (ch, cw) block at a uniform position minus nb independent uniform (h, w) targets on an
    H x W grid, rounded down: sum over patches of P(in block) * P(in no target)."""
    def cover(n, size):  # P(cell i of a line of n is inside a segment of `size` at a uniform start), i < n
        return [(min(i, n - size) - max(0, i - size + 1) + 1) / (n - size + 1) for i in range(n)]
    bh, bw, th, tw = cover(H, ch), cover(W, cw), cover(H, h), cover(W, w)
    return math.floor(sum(bh[i] * bw[j] * (1 - th[i] * tw[j]) ** nb for i in range(H) for j in range(W)))

# ----------------------------------------------------------------------------- objectives
def prediction_loss(pred, target):
    """Mean smooth-L1 (beta = 1) between predicted and target features, in fp32: zero iff they are equal."""
    return F.smooth_l1_loss(pred.float(), target.float(), beta=1.0)

Batch = collections.namedtuple('Batch', 'x g step progress')  # uint8 (B, 3, S, S), generator, step, share done

def predict_targets(model, batch):
    """I-JEPA's masked prediction (Assran et al. 2023): from a context block, predict the layer-normed teacher
    features of four target blocks; smooth-L1 (beta = 1), as in the official code. The teacher (the method's
    record) is the EMA encoder, without gradient, or the encoder itself, with it. -> (loss, teacher tokens (B, L, D))."""
    cfg, g = model.cfg, batch.g
    S = crop_size(batch.progress, cfg)  # lower for the first lowres_frac of training
    img = random_resized_crop(normalize(batch.x), S, (cfg['crop_scale'], 1.0), g)  # (B, 3, S, S) float
    B, gw = img.shape[0], S // cfg['patch_size']
    with torch.no_grad() if model.method.teacher == 'ema' else nullcontext():
        h_full = model.features_encoder()(img)  # (B, L, D)
    ctx_idx, tgt_idx = multiblock_masks(B, gw, gw, rng=random.Random(g.initial_seed()), generator=g,
                                        device=img.device)  # (B, Nc), (B, 4, Nt)
    h = F.layer_norm(h_full, h_full.shape[-1:])  # (B, L, D), no affine parameters
    h = h.gather(1, tgt_idx.flatten(1).unsqueeze(-1).expand(-1, -1, h.shape[-1])).view(*tgt_idx.shape, -1)
    z = model.encoder(img, ctx_idx)  # (B, Nc, D)
    return prediction_loss(model.predictor(z, ctx_idx, tgt_idx, gw), h), h_full  # predictions (B, 4, Nt, D)

def ijepa_loss(model, batch):
    loss, _ = predict_targets(model, batch)
    return loss, {'pred': loss}

def ijepa_sigreg_loss(model, batch):
    """I-JEPA with the encoder as its own teacher, kept from collapse by SIGReg on pooled features and on every patch
    token (the targets: with the pooled term alone an image's tokens collapse onto one vector, easy to predict)."""
    cfg = model.cfg
    pred, h_full = predict_targets(model, batch)
    reg = lambda z: sigreg(z, batch.step, cfg['num_slices'], cfg['seed'], cfg['triton_kernels'])  # noqa: E731
    reg = (reg(h_full.mean(1)) + reg(h_full.flatten(0, 1))) / 2  # on (B, D) and (B*L, D) samples
    return (1 - cfg['sigreg_weight']) * pred + cfg['sigreg_weight'] * reg, {'pred': pred, 'sigreg': reg}

# SIGReg (LeJEPA, Balestriero & LeCun 2025): the sliced Epps-Pulley test that the embeddings are an
# isotropic Gaussian. For each random unit direction a_m the projections y_m = Z a_m are compared to N(0, 1)
# through the empirical characteristic function at knots t_k = k*3/(T-1), k = 0..T-1 (T = 17):
#   T_m = N * sum_k w_k [(C_mk - phi_k)^2 + S_mk^2],  C_mk = mean_n cos(t_k y_nm),  S_mk = mean_n sin(t_k y_nm)
# with phi_k = exp(-t_k^2/2) and trapezoid weights w_k on [-3, 3] folded by symmetry (interior 2*dt*phi_k,
# ends dt*phi_k). This is the official code's definition (the paper's Algorithm 1 integrates over [-5, 5]).
NUM_KNOTS, T_MAX = 17, 3.0

def ep_knots(num_knots=NUM_KNOTS, dtype=torch.float32, device=None):
    """Knots t (T,), target characteristic function phi (T,) and quadrature weights w (T,)."""
    dt = T_MAX / (num_knots - 1)
    t = torch.arange(num_knots, dtype=dtype, device=device) * dt
    phi = torch.exp(-t ** 2 / 2)
    w = 2 * dt * phi
    w[0], w[-1] = dt * phi[0], dt * phi[-1]
    return t, phi, w

def cf_sums(y, t):
    """Sums over the batch of cos(t_k y_nm) and sin(t_k y_nm): y (N, M), t (T,) -> (M, T) each. Plain autograd
    keeps (N, M, T) tensors for backward; the fused kernel (kernels/sigreg.py) needs only O(N*M) memory."""
    ty = y.unsqueeze(-1) * t  # (N, M, T)
    return ty.cos().sum(0), ty.sin().sum(0)

def epps_pulley(y, num_knots=NUM_KNOTS, kernels=False):
    """Per-slice Epps-Pulley statistic T_m for projections y (N, M) -> (M,), in fp32 (fp64 for fp64 input);
    kernels=True: the fused Triton sums. Under torchrun a gradient-carrying all-reduce makes the sums the global
    batch's: backward sums the processes' identical gradients, and DDP's average divides them back."""
    y = y.double() if y.dtype == torch.float64 else y.float()
    t, phi, w = ep_knots(num_knots, y.dtype, y.device)
    if kernels and y.dtype == torch.float32:
        from kernels.sigreg import cf_sums as cf_sums_fused
        cos_sum, sin_sum = cf_sums_fused(y, num_knots, T_MAX / (num_knots - 1))
    else:
        cos_sum, sin_sum = cf_sums(y, t)  # (M, T) each
    n = y.shape[0]
    if rank() is not None:
        import torch.distributed.nn.functional as dist_fn
        cos_sum, sin_sum = dist_fn.all_reduce(cos_sum), dist_fn.all_reduce(sin_sum)  # the global batch's sums
        n *= torch.distributed.get_world_size()  # every process holds the same number of samples
    C, S = cos_sum / n, sin_sum / n  # (M, T) empirical characteristic function, real and imaginary parts
    return n * (((C - phi) ** 2 + S ** 2) @ w)  # (M,)

def sigreg(z, step, num_slices, seed=0, kernels=False):
    """SIGReg of embeddings z (N, D) or of views (V, N, D): the Epps-Pulley statistic averaged over num_slices random
    unit directions (and views), seeded by the step: every process, and a resumed run, draws the same ones. In fp32
    (fp64 for fp64 z) even under autocast, which would run both matmuls in bf16, and without TF32's 10-bit inputs."""
    g = torch.Generator(device=z.device).manual_seed(stream_seed('sigreg', seed, step))  # its own stream
    dt = torch.promote_types(z.dtype, torch.float32)  # fp32, or fp64 for fp64 embeddings
    with torch.autocast(z.device.type, enabled=False), tf32(False):  # true fp32 on CUDA too
        A = F.normalize(torch.randn(z.shape[-1], num_slices, generator=g, device=z.device, dtype=dt), dim=0)  # (D, M)
        y = z.to(dt) @ A  # (N, M) or (V, N, M)
        if y.dim() == 3:  # every view's slices are separate slices of its own: (N, V*M)
            y = y.permute(1, 0, 2).flatten(1)
        return epps_pulley(y, kernels=kernels).mean()

def lejepa_views(x, cfg, g):
    """V_g global views (full resolution) and V_l local views (half resolution) of a uint8 batch."""
    img, S = normalize(x), cfg['img_size']
    views_g = [color_jitter(random_resized_crop(img, S, (0.3, 1.0), g), g) for _ in range(cfg['global_views'])]
    local = max(cfg['patch_size'] * 4, (S // 2) // cfg['patch_size'] * cfg['patch_size'])
    views_l = [color_jitter(random_resized_crop(img, local, (0.05, 0.3), g), g) for _ in range(cfg['local_views'])]
    return views_g, views_l

def embed_views(model, views):
    """Projected, pooled embeddings of a list of same-size views -> (V, B, K)."""
    z = model.projector(model.encoder(torch.cat(views)).mean(1))  # (V*B, K)
    return z.float().view(len(views), views[0].shape[0], -1)

def lejepa_loss(model, batch):
    """LeJEPA: L = (1 - lambda) * mean_{v,n} ||mu_n - z_nv||^2 / K + lambda * mean_v SIGReg(z_v), where mu_n is
    the mean of image n's global-view embeddings. No EMA, no stop-gradient, no predictor."""
    cfg = model.cfg
    views_g, views_l = lejepa_views(batch.x, cfg, batch.g)
    z = torch.cat([embed_views(model, views) for views in (views_g, views_l) if views])  # (V, B, K)
    mu = z[:cfg['global_views']].mean(0)  # (B, K)
    inv = (mu - z).pow(2).mean()  # mean over views, images and the K coordinates
    reg = sigreg(z, batch.step, cfg['num_slices'], cfg['seed'], cfg['triton_kernels'])
    lam = cfg['sigreg_weight']
    return (1 - lam) * inv + lam * reg, {'inv': inv, 'sigreg': reg}

def info_nce(z1, z2, tau):
    """SimCLR's NT-Xent: each embedding's positive is its other view, the 2B-2 other embeddings are negatives.
    z1, z2 (B, K) -> scalar."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)  # (2B, K)
    sim = z @ z.T / tau  # (2B, 2B)
    sim.fill_diagonal_(float('-inf'))  # a sample is not its own negative
    B = z1.shape[0]
    positive = torch.arange(2 * B, device=z.device).roll(B)  # (2B,): i <-> i + B
    return F.cross_entropy(sim, positive)

def infonce_loss(model, batch):
    """InfoNCE on two global views (ablation against SIGReg): invariance and anti-collapse in one contrastive term.
    Under torchrun each process contrasts its own shard: its negatives are local."""
    views, _ = lejepa_views(batch.x, dict(model.cfg, global_views=2, local_views=0), batch.g)  # two global views
    z = embed_views(model, views)  # (2, B, K)
    loss = info_nce(z[0], z[1], model.cfg['tau'])
    return loss, {'infonce': loss}

# SparseJEPA (Hartman & Varshney 2025) group sparsity, oi-VAE style (Ainsworth et al. 2018). The paper gives no
# code and leaves the grouping open; this grouping is our reading of it: W is the predictor's input projection
# (Dp, D), its Dp rows split into G contiguous groups W^(g) (Dp/G, D), and the penalty is
#   Omega(W) = sum_g sum_j ||W^(g)[:, j]||_2          (latent j's weights into group g)
# minimised by a proximal step after each optimizer step, which gives exact zeros (W has no weight decay).

def group_lasso(W, num_groups):
    """Omega(W) for W (Dp, D) with Dp split into num_groups contiguous row groups -> scalar."""
    return W.view(num_groups, -1, W.shape[1]).norm(dim=1).sum()

@torch.no_grad()
def prox_group_lasso_(W, num_groups, threshold):
    """In place: W^(g)[:, j] <- W^(g)[:, j] * max(0, 1 - threshold / ||W^(g)[:, j]||), the prox of threshold*Omega."""
    Wg = W.view(num_groups, -1, W.shape[1])  # (G, Dp/G, D), a view: writes go to W
    norm = Wg.norm(dim=1, keepdim=True)  # (G, 1, D)
    Wg.mul_((1 - threshold / norm.clamp_min(1e-30)).clamp_min(0))
    return W

def group_sparsity(W, num_groups):
    """Mean number of groups each latent feeds (nonzero column blocks), in [0, G]."""
    return (W.view(num_groups, -1, W.shape[1]).norm(dim=1) > 0).float().sum(0).mean()

def sparse_prox(model, lr):
    """SparseJEPA's step after the optimizer's: the group-lasso prox with W's own lr times lambda as threshold."""
    prox_group_lasso_(model.predictor.embed.weight, model.cfg['num_groups'], lr * model.cfg['pred_lr'] * model.cfg['group_lambda'])

def sparse_terms(model):
    W, G = model.predictor.embed.weight, model.cfg['num_groups']
    return {'omega': group_lasso(W, G), 'group_sparsity': group_sparsity(W, G)}

# ----------------------------------------------------------------------------- methods
@dataclasses.dataclass(frozen=True)
class Method:
    """What the model, the optimizer and the training loop need to know about a method; none of them reads its name."""
    loss: object                  # (model, Batch) -> (loss, dict of logged terms)
    teacher: str                  # whose features are the targets: 'ema' (an EMA copy), 'self' (the encoder), 'none'
    heads: tuple                  # 'predictor' (masked prediction: masks, low-res crops early), 'projector'
    defaults: dict = dataclasses.field(default_factory=dict)  # config values of its own, over the config block's
    after_step: object = None     # (model, scheduled lr) after each optimizer step
    log_terms: object = None      # (model) -> dict of extra numbers for each log line
    no_decay: tuple = ()          # parameter names without weight decay (besides biases, norms and tokens)
    sigreg_sums: object = None    # (cfg, per-process batch) -> the (N, M) its SIGReg sums over (the kernels' self-test)

METHODS = {
    'ijepa': Method(ijepa_loss, 'ema', ('predictor',)),
    'ijepa_sigreg': Method(ijepa_sigreg_loss, 'self', ('predictor',), {'pred_lr': 1.0}, sigreg_sums=lambda c, B: [
        (n, c['num_slices']) for n in {B, *(B * (S // c['patch_size']) ** 2 for S in (crop_size(0, c), c['img_size']))}]),
    'sparse': Method(ijepa_loss, 'ema', ('predictor',), {'pred_lr': 1.0}, after_step=sparse_prox,
                     log_terms=sparse_terms, no_decay=('predictor.embed.weight',)),
    'lejepa': Method(lejepa_loss, 'none', ('projector',), {'sigreg_weight': 0.1}, sigreg_sums=lambda c, B: [
        (B, (c['global_views'] + c['local_views']) * c['num_slices'])]),
    'infonce': Method(infonce_loss, 'none', ('projector',)),
}

# ----------------------------------------------------------------------------- EMA and schedules
@torch.no_grad()
def ema_update(target, online, momentum):
    """theta_target <- m * theta_target + (1 - m) * theta_online, all parameters in one call."""
    torch._foreach_lerp_(list(target.parameters()), [p.detach() for p in online.parameters()], 1 - momentum)

def schedules(progress, cfg):
    """Learning rate (linear warm-up to the peak, cosine decay), weight decay (cosine rise) and EMA momentum (linear
    from start to end; derive gives all three's values) at a fraction `progress` in [0, 1] of training."""
    p, d = min(max(progress, 0.0), 1.0), derive(cfg)
    if p < cfg['warmup']:
        lr_now = d['peak_lr'] * p / cfg['warmup']
    else:
        q = (p - cfg['warmup']) / (1 - cfg['warmup'])
        lr_now = cfg['min_lr'] + (d['peak_lr'] - cfg['min_lr']) * 0.5 * (1 + math.cos(math.pi * q))
    wd = cfg['weight_decay_end'] + (cfg['weight_decay'] - cfg['weight_decay_end']) * 0.5 * (1 + math.cos(math.pi * p))
    momentum = d['momentum'] + (d['momentum_end'] - d['momentum']) * p
    return lr_now, wd, momentum

def crop_size(progress, cfg):
    """Progressive resizing: crops of lowres * img_size px (whole patches, at least 4x4) for the first lowres_frac of
    training, then img_size: cheaper early steps (48 px: 36 tokens for 64), any grid for RoPE, the probe's size last."""
    if progress >= cfg['lowres_frac']:
        return cfg['img_size']
    p = cfg['patch_size']
    return max(4, round(cfg['img_size'] * cfg['lowres'] / p)) * p

def make_optimizer(model, cfg):
    """AdamW, fused into one kernel where it can be; no weight decay on biases, norms, tokens (1-D params) nor on
    the parameters the method names. Each group knows whether it holds the predictor, whose lr is pred_lr times."""
    groups = {}  # (decays, predictor) -> params: the same groups whatever pred_lr is, so a resumed run may change it
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = not (p.dim() < 2 or 'token' in name or name in model.method.no_decay)
            groups.setdefault((decays, name.startswith('predictor.')), []).append(p)
    fused = next(model.parameters()).device.type in ('cpu', 'cuda')
    return torch.optim.AdamW([{'params': ps, 'weight_decay': cfg['weight_decay'] if decays else 0.0,
                               'predictor': pred} for (decays, pred), ps in groups.items()],
                             lr=derive(cfg)['peak_lr'], betas=(0.9, 0.95), fused=fused)

def set_schedules(opt, cfg, lr_now, wd):
    for group in opt.param_groups:
        group['lr'] = lr_now * (cfg['pred_lr'] if group['predictor'] else 1)
        if group['weight_decay'] > 0:
            group['weight_decay'] = wd

# ----------------------------------------------------------------------------- augmentation
# Batched on the device: each image gets its own crop box, flip and jitter, through one grid_sample.
MEAN, STD, LUMA = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (0.2989, 0.587, 0.114)  # LUMA: torchvision's

@functools.cache  # made once per device: a host-to-device copy in every step would make the host wait for the GPU
def channels(values, device):  # a tuple of 3 numbers -> (1, 3, 1, 1) tensor on device
    return torch.tensor(values, device=device).view(1, 3, 1, 1)

def normalize(x):  # uint8 (B, 3, S, S) -> float, ImageNet statistics
    return (x.float() / 255 - channels(MEAN, x.device)) / channels(STD, x.device)

def random_resized_crop(x, out_size, scale, g, flip=True):
    """Per-image random-resized-crop (area fraction in `scale`, aspect in [3/4, 4/3]) and horizontal flip,
    as one affine grid_sample over the batch. x float (B, 3, S, S) -> (B, 3, out_size, out_size)."""
    B = x.shape[0]
    rand = torch.rand(B, 5, generator=g, device=x.device)
    area = scale[0] + (scale[1] - scale[0]) * rand[:, 0]
    aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * rand[:, 1])
    w, h = (area * aspect).sqrt().clamp(max=1), (area / aspect).sqrt().clamp(max=1)  # fractions of the side
    cx, cy = (2 * rand[:, 2] - 1) * (1 - w), (2 * rand[:, 3] - 1) * (1 - h)  # box centre in [-1, 1]
    sign = torch.where(rand[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones_like(w)
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * sign, cx, h, cy
    grid = F.affine_grid(theta, (B, 3, out_size, out_size), align_corners=False)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)

def color_jitter(x, g, strength=0.4, p_gray=0.2):
    """torchvision's ColorJitter(strength, strength, strength) in that order, then RandomGrayscale(p_gray), on a
    normalised batch (B, 3, S, S): each step acts on the image the previous one left, clamped to [0, 1]."""
    B = x.shape[0]
    r = torch.rand(B, 4, generator=g, device=x.device)
    mean, std = channels(MEAN, x.device), channels(STD, x.device)
    f = lambda i: (1 + strength * (2 * r[:, i] - 1)).view(B, 1, 1, 1)  # noqa: E731  factor in [1 - s, 1 + s]
    gray = lambda x: (x * channels(LUMA, x.device)).sum(1, keepdim=True)  # noqa: E731  (B, 1, S, S)
    x = x * std + mean  # back to [0, 1]
    x = (x * f(0)).clamp(0, 1)                                                      # brightness
    x = (x * f(1) + (1 - f(1)) * gray(x).mean((2, 3), keepdim=True)).clamp(0, 1)   # contrast
    x = (x * f(2) + (1 - f(2)) * gray(x)).clamp(0, 1)                               # saturation
    x = torch.where((r[:, 3] < p_gray).view(B, 1, 1, 1), gray(x).expand_as(x), x)  # grayscale
    return (x - mean) / std

# ----------------------------------------------------------------------------- training loop
def train(cfg):
    """Pre-train one method -> (model, data, stats). Under torchrun each process trains on its shard of every batch
    (DDP averages the gradients); only the first process (rank 0) prints, logs and writes checkpoints."""
    r = start_run(cfg)  # device, data, model, optimizer, resumed state, log file
    model, opt, scaler, clock, step, last = r.model, r.opt, r.scaler, r.clock, r.step, {}
    while (clock.elapsed() < r.budget) if r.budget else (step < r.total):
        p = clock.elapsed() / r.budget if r.budget else step / r.total  # the schedules and crop size follow it
        lr_now, wd, momentum = schedules(p, cfg)
        set_schedules(opt, cfg, lr_now, wd)
        epoch, i = divmod(step, r.per_epoch)
        order = epoch_order(cfg['seed'], epoch, r.data['train_x'].shape[0], r.dev)  # (n_train,) a permutation
        x = r.data['train_x'][order[(i * r.world + r.rank) * r.shard:(i * r.world + r.rank + 1) * r.shard]]  # this
        batch = Batch(x, step_generator(cfg['seed'], step, r.dev, r.rank), step, p)  # process's (B / processes) images
        with r.autocast, tf32(True):  # TF32 for the step's fp32 matmuls only (SIGReg turns it off for its own)
            loss, terms = r.net(batch)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # under DDP the gradients are averaged over the processes here
        scaler.unscale_(opt)
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), float('inf'))  # measures, does not clip
        scaler.step(opt)
        scaler.update()
        if model.method.after_step:
            model.method.after_step(model, lr_now)
        if model.target is not None:
            ema_update(model.target, model.encoder, momentum)
        step += 1
        if clock.first is None:  # the first step compiles (torch.compile): off the budget clock and the speed
            print(f"warm-up: the first step took {clock.start(step):.1f} s (compiling), off the budget clock")
        done = (clock.elapsed() >= r.budget) if r.budget else step == r.total
        terms = {'loss': loss, **terms, 'grad_norm': grad_norm}
        if step % cfg['log_every'] == 0 or done:
            last = log_step(r, step, terms, (lr_now, wd, momentum))
        if step % r.per_epoch == 0 or done:
            save_run(r, step, terms)
    if r.log_file:
        r.log_file.close()
    return model, r.data, {'train_seconds': clock.elapsed(sync=True), 'params_M': r.params_m, 'steps': step,
                           'img_per_s': clock.speed(step, cfg['batch_size'], since_start=True), 'run_dir': r.run_dir,
                           'final_loss': last.get('loss', float('nan'))}

@functools.lru_cache(maxsize=1)
def epoch_order(seed, epoch, n, dev):
    """A fresh permutation of the n training images per epoch, seeded by it: a resumed run takes the same."""
    g = torch.Generator(device=dev).manual_seed(stream_seed('order', seed, epoch))
    return torch.randperm(n, generator=g, device=dev)

def step_generator(seed, step, dev, rank=0):
    """The step's augmentation and masks, seeded by (seed, step, rank): a resumed run replays its steps exactly."""
    return torch.Generator(device=dev).manual_seed(stream_seed('step', seed, step, rank))

def stream_seed(*key):
    """The seed of one random stream, named by a purpose and numbers: distinct keys give unrelated 63-bit seeds
    (no stream is another one shifted by a step, as seed * c + step would make them)."""
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], 'little') >> 1

def log_step(r, step, terms, schedule):
    """One log line: printed and appended to log.jsonl (rank 0: its own shard's losses) -> the record."""
    lr_now, wd, momentum = schedule
    extra = r.model.method.log_terms(r.model) if r.model.method.log_terms else {}
    rec = {'step': step, 'epoch': round(step / r.per_epoch, 3), **read_finite(terms | extra, step, r), 'lr': lr_now,
           'wd': wd, **({'momentum': momentum} if r.model.target is not None else {}),
           'img_per_s': r.clock.speed(step, r.cfg['batch_size']), 'elapsed_s': r.clock.elapsed()}
    left = r.budget - rec['elapsed_s'] if r.budget else (r.total - step) * (rec['elapsed_s'] - r.clock.before) / max(
        step - (r.clock.first or step), 1)
    print(f"step {step}/{r.total if not r.budget else '?'} | " + ' | '.join(
          f"{k} {v:.4g}" for k, v in rec.items() if k not in ('step', 'elapsed_s')) + f" | eta {left / 60:.1f} min",
          flush=True)
    if r.log_file:
        r.log_file.write(json.dumps(rec) + '\n')
        r.log_file.flush()
    return rec

def save_run(r, step, terms):
    """A checkpoint of everything a resumed run needs (rank 0 writes it); never of non-finite weights."""
    read_finite(terms, step, r)
    if r.rank == 0:
        save_checkpoint(os.path.join(r.run_dir, f"ckpt_{step:07d}.pt"), {
            'model': r.model.state_dict(), 'optimizer': r.opt.state_dict(), 'scaler': r.scaler.state_dict(),
            'config': r.cfg, 'step': step, 'epoch': step / r.per_epoch, 'elapsed': r.clock.elapsed(sync=True),
            'versions': versions(r.dev)})

class Clock:
    """Training seconds (since the end of this process's first step, which compiles, plus a resumed run's before) and
    images per second between readings. sync=True counts the GPU's queued work; without, the host's estimate."""
    def __init__(self, dev, before):
        self.dev, self.before, self.t0, self.first, self.made = dev, before, None, None, time.time()

    def elapsed(self, sync=False):
        if sync and self.dev.startswith('cuda'):
            torch.cuda.synchronize(self.dev)
        return self.before + (time.time() - self.t0 if self.t0 is not None else 0.0)

    def start(self, step):  # after this process's first step, which ended at `step` -> that step's seconds
        self.elapsed(sync=True)
        self.t0, self.first, self.mark = time.time(), step, (step, self.before)
        return self.t0 - self.made

    def speed(self, step, batch_size, since_start=False):  # images per second since the last reading (or the start)
        s0, t0 = (self.first or step, self.before) if since_start or self.first is None else self.mark
        self.mark = (step, self.elapsed(sync=True))
        return (step - s0) * batch_size / max(self.mark[1] - t0, 1e-9)

# ----------------------------------------------------------------------------- main
def main(argv):
    cfg = parse_args(argv)
    try:
        model, data, stats = train(cfg)
        if not rank():  # one process, or rank 0: the end-of-run linear probe and summary (probe.py)
            import probe
            return probe.summarize(model, data, cfg, stats)
    finally:
        rank() is not None and torch.distributed.destroy_process_group()

def rank():
    """This process's rank under torchrun, once it has joined the process group; else None."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None

# =============================================================================
# plumbing: data readers. Every dataset becomes one dict: uint8 images (N, 3, S, S) and int64 labels of a train and a
# test split, and class names; decoded once and moved to the device, so the training loop runs no per-image Python.

CIFAR = {'cifar10': ('cifar-10-python.tar.gz', 'batches.meta'),  # the canonical archive, its meta file
         'cifar100': ('cifar-100-python.tar.gz', 'meta')}
# The embedded dataset's 12 classes: three identical blobs in one of 12 arrangements (offsets on a unit lattice, x
# right, y down). A bag of patch statistics (a random-init encoder, pooled) cannot tell them apart; predicting a
# hidden blob from the visible ones needs the arrangement. Four target blocks hide ~2/3 of the grid: blobs spread
# wide and apart leave parts of all three in the context, so every seed learns it (README: Results).
ARRANGEMENTS = {
    'row': [(-1, 0), (0, 0), (1, 0)], 'column': [(0, -1), (0, 0), (0, 1)], 'diagonal': [(-1, -1), (0, 0), (1, 1)],
    'antidiagonal': [(-1, 1), (0, 0), (1, -1)], 'corner_tl': [(-1, -1), (1, -1), (-1, 1)], 'corner_tr':
    [(-1, -1), (1, -1), (1, 1)], 'corner_bl': [(-1, -1), (-1, 1), (1, 1)], 'corner_br': [(1, -1), (-1, 1), (1, 1)],
    'arrow_up': [(-1, 1), (1, 1), (0, -1)], 'arrow_down': [(-1, -1), (1, -1), (0, 1)],
    'arrow_left': [(1, -1), (1, 1), (-1, 0)], 'arrow_right': [(-1, -1), (-1, 1), (1, 0)]}
SHAPES = tuple(ARRANGEMENTS)

def make_shapes(n, size=32, seed=0):
    """n labelled size x size images of the 12 arrangements. Spacing, blob size, position, rotation, brightness,
    tint, background gradient and noise are random and shared by all classes. -> uint8 (n, 3, S, S), labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    u = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    y = torch.randint(len(SHAPES), (n,), generator=g)
    offsets = torch.tensor([ARRANGEMENTS[k] for k in SHAPES], dtype=torch.float32)[y]  # (n, 3, 2)
    spacing, radius = 0.55 + 0.08 * u(n, 1, 1), 0.2 + 0.04 * u(n, 1, 1)  # spacing > 2 * radius: apart
    ang = (u(n) - 0.5) * 0.4
    rot = torch.stack([torch.stack([ang.cos(), -ang.sin()], -1), torch.stack([ang.sin(), ang.cos()], -1)], -2)  # (n, 2, 2)
    room = 1 - spacing - radius  # keep every blob inside the image
    centres = (offsets * spacing) @ rot.transpose(1, 2) + (2 * u(n, 1, 2) - 1) * room  # (n, 3, 2)
    r = torch.linspace(-1, 1, size)
    Y, X = torch.meshgrid(r, r, indexing='ij')
    grid = torch.stack([X, Y], -1).view(1, 1, size * size, 2)
    dist = (grid - centres[:, :, None]).norm(dim=-1).min(1).values.view(n, size, size)  # nearest blob centre
    fg = (dist < radius.view(n, 1, 1)).float()  # (n, S, S)
    # bright, mildly tinted blobs on a darker background with a random gradient
    tint = 0.75 + 0.25 * u(n, 3, 1, 1)
    c_fg = (0.55 + 0.45 * u(n, 1, 1, 1)) * tint
    c_bg, c_bg2 = 0.3 * u(n, 1, 1, 1) * tint, 0.3 * u(n, 1, 1, 1) * tint
    t = (X * torch.cos(6.3 * u(n))[:, None, None] + Y * torch.sin(6.3 * u(n))[:, None, None] + 1) / 2
    bg = c_bg * (1 - t[:, None]) + c_bg2 * t[:, None]  # (n, 3, S, S)
    img = bg * (1 - fg[:, None]) + c_fg * fg[:, None] + 0.06 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), y

def load_shapes(cfg):
    x, y = make_shapes(12000, cfg['img_size'], seed=cfg['seed'])
    return dict(train_x=x[:10000], train_y=y[:10000], test_x=x[10000:], test_y=y[10000:], classes=list(SHAPES))

def load_cifar(cfg):
    """CIFAR-10/100 in the python format: the archive or a folder it was extracted into, from --data_dir or data/
    (where `make cifar10` or `make cifar100` downloads it)."""
    name = cfg['data']
    archive, meta = CIFAR[name]
    root = cfg['data_dir'] or os.path.join('data', archive)
    if not os.path.exists(root):
        raise UserError(f"{root} does not exist: `make {name}` downloads it into data/, or pass --data_dir=PATH")
    src = FileSource(root)
    member = {os.path.basename(n): n for n in src.names}  # the batches sit in a sub-folder of the archive

    def unpickle(f):
        if f not in member:
            raise UserError(f"{root} has no member {f!r}: is it the CIFAR python-version archive or folder?")
        try:
            return pickle.loads(src.read(member[f]), encoding='bytes')
        except Exception as e:
            raise UserError(f"{f} in {root} does not unpickle ({type(e).__name__}): the archive is corrupt")
    key = b'fine_labels' if name == 'cifar100' else b'labels'
    files = (['train'], ['test']) if name == 'cifar100' else ([f'data_batch_{i}' for i in range(1, 6)], ['test_batch'])
    out = {}
    for split, names in zip(('train', 'test'), files):
        batches = [unpickle(f) for f in names]
        out[split + '_x'] = torch.from_numpy(np.concatenate([b[b'data'] for b in batches]).reshape(-1, 3, 32, 32))
        out[split + '_y'] = torch.tensor(sum((list(b[key]) for b in batches), []))
    out['classes'] = [c.decode() for c in unpickle(meta)[b'fine_label_names' if name == 'cifar100' else b'label_names']]
    return out

IMAGE_EXTS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')

class FileSource:
    """Uniform read access to a folder, a .zip or a tar archive: relative paths, and the bytes of one."""
    ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, zlib.error)

    def __init__(self, path):
        if not os.path.exists(path):
            raise UserError(f"--data_dir={path} does not exist")
        self.path = path
        try:
            if os.path.isdir(path):
                self.names = [os.path.relpath(os.path.join(d, f), path).replace(os.sep, '/')
                              for d, _, fs in os.walk(path) for f in fs]
                self._read = lambda n: pathlib.Path(path, n).read_bytes()
            elif zipfile.is_zipfile(path):
                z = zipfile.ZipFile(path)
                self.names, self._read = [n for n in z.namelist() if not n.endswith('/')], z.read
            elif not path.endswith(('.tar', '.tar.gz', '.tgz')):
                raise UserError(f"{path} is not a readable zip archive: pass the folder, a complete .zip or a .tar.gz")
            else:
                t = tarfile.open(path)
                members = {m.name: m for m in t.getmembers() if m.isfile()}
                self.names, self._read = list(members), lambda n: t.extractfile(members[n]).read()
        except self.ERRORS as e:
            raise UserError(f"{path} is truncated or not a valid archive ({e}); download it again or pass the folder")

    def read(self, name):
        try:
            return self._read(name)
        except self.ERRORS as e:
            raise UserError(f"{self.path}: cannot read {name} ({e}); the archive is truncated or corrupt")

def load_tinyimagenet(cfg):
    """The standard tiny-imagenet-200 layout (wnids.txt, train/<wnid>/images, val/val_annotations.txt),
    from a folder or straight from the .zip; any subset of its classes."""
    if not cfg['data_dir']:
        raise UserError("--data=tinyimagenet needs --data_dir=PATH to tiny-imagenet-200 (folder or .zip)")
    src = FileSource(cfg['data_dir'])
    wnids_path = next((n for n in src.names if n.endswith('wnids.txt')), None)
    if wnids_path is None:
        raise UserError(f"{cfg['data_dir']} has no wnids.txt: is it the tiny-imagenet-200 layout?")
    base = wnids_path[:-len('wnids.txt')]
    wnids = src.read(wnids_path).decode().split()
    label = {w: i for i, w in enumerate(wnids)}
    words = (dict(line.split('\t', 1) for line in src.read(base + 'words.txt').decode().splitlines() if '\t' in line)
             if base + 'words.txt' in src.names else {})  # wnid -> "name, synonyms"
    train = [(n, label[n[len(base):].split('/')[1]]) for n in src.names
             if n.startswith(base + 'train/') and n.lower().endswith(IMAGE_EXTS) and n[len(base):].split('/')[1] in label]
    ann = base + 'val/val_annotations.txt'
    if ann not in src.names:
        raise UserError(f"{cfg['data_dir']} has no {ann}: is it the tiny-imagenet-200 layout?")
    val = [(base + 'val/images/' + f, label[w]) for f, w, *_ in
           (line.split('\t') for line in src.read(ann).decode().splitlines() if line.strip()) if w in label]
    classes = [words.get(w, w).split(',')[0].strip() for w in wnids]
    return decode_splits(src, cfg, {'train': sorted(train), 'test': sorted(val)}, classes)

def load_folder(cfg):
    """An ImageFolder tree, root/<class>/<image>; root/train and root/val are used as splits when present,
    else a fixed 10 % of each class is held out for evaluation."""
    if not cfg['data_dir']:
        raise UserError("--data=folder needs --data_dir=PATH to a folder with one sub-folder per class")
    src = FileSource(cfg['data_dir'])
    imgs = [n for n in src.names if n.lower().endswith(IMAGE_EXTS)]
    if not src.names:
        raise UserError(f"{cfg['data_dir']} is empty: it should hold one sub-folder of images per class")
    if not imgs:
        raise UserError(f"{cfg['data_dir']} has no image files ({', '.join(IMAGE_EXTS)})")
    has_splits = any(n.startswith('train/') for n in imgs) and any(n.startswith('val/') for n in imgs)
    paths = [(n, n.split('/')) for n in sorted(imgs)]
    items = ([(n, p[1], p[0]) for n, p in paths if p[0] in ('train', 'val') and len(p) >= 3] if has_splits else
             [(n, p[-2], None) for n, p in paths if len(p) >= 2])  # (file, class, split or None)
    if not items:
        raise UserError(f"{cfg['data_dir']}: images must sit in class sub-folders (root/<class>/<image>)")
    classes, count, splits = sorted({c for _, c, _ in items}), {}, {'train': [], 'test': []}
    for n, c, split in items:
        count[c] = count.get(c, 0) + 1  # without splits every 10th image of each class goes to the test split
        test = split == 'val' if has_splits else count[c] % 10 == 0
        splits['test' if test else 'train'].append((n, classes.index(c)))
    return decode_splits(src, cfg, splits, classes, hint=' (need >= 10 per class)')

def decode_splits(src, cfg, splits, classes, hint=''):
    """{'train': [(file, label)], 'test': [(file, label)]} -> the dataset dict, images decoded."""
    out = {'classes': classes}
    for split, items in splits.items():
        if not items:
            raise UserError(f"{cfg['data_dir']}: no {'val' if split == 'test' else split} images found{hint}")
        out[split + '_x'] = decode_all(src, [n for n, _ in items], cfg['img_size'])
        out[split + '_y'] = torch.tensor([c for _, c in items])
    return out

def decode_all(src, names, size):
    """Image files of any format and mode (grayscale, CMYK, palette, odd sizes) -> uint8 (N, 3, size, size)."""
    from PIL import Image
    out = torch.empty(len(names), 3, size, size, dtype=torch.uint8)
    t0 = time.time()
    for i, n in enumerate(names):
        try:
            im = Image.open(io.BytesIO(src.read(n))).convert('RGB').resize((size, size), Image.BICUBIC)
        except Exception as e:
            raise UserError(f"cannot decode image {src.path}:{n} ({type(e).__name__}); remove or replace the file")
        out[i] = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1)
        if (i + 1) % 5000 == 0 or i + 1 == len(names):
            print(f"\rdecoding {src.path}: {i + 1}/{len(names)} images ({time.time() - t0:.0f}s)", end='', flush=True)
    print()
    return out

def load_data(cfg, dev):
    """The dataset dict of cfg, on dev. Under torchrun rank 0 reads and decodes it while the others wait, then
    sends it to them (or its error: every process stops with the same message)."""
    box = [None]
    if not rank():  # one process, or rank 0
        try:
            box[0] = {'shapes': load_shapes, 'cifar10': load_cifar, 'cifar100': load_cifar,
                      'tinyimagenet': load_tinyimagenet, 'folder': load_folder}[cfg['data']](cfg)
        except UserError as e:
            box[0] = e
    if rank() is not None:
        torch.distributed.broadcast_object_list(box, src=0)
    if isinstance(d := box[0], UserError):
        raise d
    for k in ('train_x', 'test_x'):
        if d[k].shape[-1] != cfg['img_size']:  # cifar is stored at 32x32
            d[k] = F.interpolate(d[k].float(), size=cfg['img_size'], mode='bicubic', antialias=True).clamp(0, 255).round().byte()
    return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in d.items()}

# =============================================================================
# plumbing: the training loop's set-up helpers
def start_run(cfg):
    """Everything train() needs, set up and printed -> a namespace (r): its net is what the loop calls, the model or
    its DDP wrapper; step and clock are resumed or fresh; log_file is rank 0's."""
    r = types.SimpleNamespace(cfg=cfg, run_dir=cfg['out_dir'] or os.path.join('runs', f"{cfg['data']}_{cfg['method']}"))
    r.rank, r.world, r.dev = setup_distributed(cfg)
    r.shard, policy = cfg['batch_size'] // r.world, device_policy(r.dev, cfg['triton_kernels'])
    failed = self_test_kernels(cfg, r.dev, policy, r.shard) if policy.kernels else ()
    print(device_line(r.dev, policy, failed) + (f", {r.world} processes (torchrun)" if r.world > 1 else ''))
    r.data = load_data(cfg, r.dev)
    if r.rank == 0:
        open_run_dir(r.run_dir)  # only now: bad data leaves no empty run directory behind
    n_train, B = r.data['train_x'].shape[0], cfg['batch_size']
    if n_train < B:
        raise UserError(f"--batch_size={B} is larger than the training set ({n_train} images)")
    r.per_epoch, r.budget = n_train // B, cfg['budget_minutes'] * 60
    r.total = cfg['steps'] or cfg['epochs'] * r.per_epoch
    r.model = build_model(cfg, r.dev)
    r.opt = make_optimizer(r.model, cfg)
    r.scaler = torch.amp.GradScaler(torch.device(r.dev).type, enabled=policy.scaler)  # fp16: loss scaling
    r.autocast = torch.autocast(torch.device(r.dev).type, dtype=policy.dtype) if policy.dtype else nullcontext()
    r.params_m = sum(p.numel() for p in r.model.encoder.parameters()) / 1e6
    print_header(r)
    r.step, elapsed = resume_from_checkpoint(r) if cfg['resume'] else (0, 0.0)
    r.clock = Clock(r.dev, elapsed)
    if r.rank == 0:
        with open(os.path.join(r.run_dir, 'config.json'), 'w') as f:
            json.dump({'config': cfg, 'derived': derive(cfg), 'processes': r.world, 'versions': versions(r.dev)}, f)
    if cfg['compile']:
        compile_networks(r.model)
    r.net = nn.parallel.DistributedDataParallel(r.model, device_ids=[r.dev] if r.dev.startswith('cuda') else None) \
        if r.world > 1 else r.model
    r.log_file = open(os.path.join(r.run_dir, 'log.jsonl'), 'a') if r.rank == 0 else None
    return r

def print_header(r):
    """The run in two lines: the data, method and model; the length of training and what derive made of the config."""
    cfg, d, (n, n_test, C) = r.cfg, derive(r.cfg), (len(r.data[k]) for k in ('train_x', 'test_x', 'classes'))
    print(f"data: {cfg['data']}, {n} train / {n_test} test images, {C} classes, {cfg['img_size']}px | method: "
          f"{cfg['method']} | encoder {r.params_m:.2f}M params")
    print((f"budget {cfg['budget_minutes']} min" if r.budget else f"{r.total} steps ({r.per_epoch}/epoch)")
          + f" of {cfg['batch_size']} images | peak lr {d['peak_lr']:.3g} (lr * 128 / width)"
          + (f" | EMA momentum {d['momentum']:.4g} -> {d['momentum_end']:.4g} (ema ** (batch_size / 16))"
             if r.model.target is not None else '')
          + (f" | crops {crop_size(0, cfg)} px for the first {cfg['lowres_frac']:.0%}, then {cfg['img_size']}"
             if 'predictor' in r.model.method.heads and crop_size(0, cfg) != cfg['img_size'] else ''))

def setup_distributed(cfg):
    """(rank, processes, device). Under torchrun (RANK set) join the process group: NCCL on GPUs (one per process),
    gloo on CPUs; the processes other than rank 0 print nothing."""
    dev = pick_device(cfg['device'])
    if 'RANK' not in os.environ:
        return 0, 1, dev
    if dev == 'cuda':  # one GPU per process, chosen before NCCL starts
        dev = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(dev)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group('nccl' if dev.startswith('cuda') else 'gloo')
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if cfg['batch_size'] % world:
        raise UserError(f"--batch_size={cfg['batch_size']} is not divisible by the {world} processes")
    if rank > 0:
        sys.stdout = open(os.devnull, 'w')
    return rank, world, dev

@functools.cache
def kernels_available(device_type):
    """Can the Triton kernels run here? On CUDA when they import; on CPU in Triton's interpreter (TRITON_INTERPRET=1,
    slow but exact: the tests). No triton: quietly no; a triton too old for them: no, with one warning."""
    if device_type != 'cuda' and not (device_type == 'cpu' and os.environ.get('TRITON_INTERPRET') == '1'):
        return False
    try:
        import kernels.attention, kernels.sigreg  # noqa: F401, E401
    except ImportError as e:
        if e.name != 'triton':
            print(f"warning: the Triton kernels do not import ({e}): they need triton >= 3.8", file=sys.stderr)
        return False
    return True

Policy = collections.namedtuple('Policy', 'dtype scaler kernels why')

def device_policy(dev, kernels=True, capability=None):
    """How a run computes on dev -> Policy(autocast dtype or None, gradient scaler?, Triton kernels?, why). CUDA from
    sm_80: bf16, kernels. Below (T4, V100): fp16 with a gradient scaler (bf16 is emulated there), no kernels (Triton
    makes no tensor-core dots below sm_80). CPU, MPS: fp32. capability (major, minor): read from dev if None."""
    if not str(dev).startswith('cuda'):
        on = kernels and kernels_available(torch.device(dev).type)
        return Policy(None, False, on, 'fp32' + (", Triton's interpreter" if on else ''))
    major, minor = capability or torch.cuda.get_device_capability(dev)
    if (major, minor) >= (8, 0):
        return Policy(torch.bfloat16, False, kernels and kernels_available('cuda'), f'sm_{major}{minor}: bf16 autocast')
    return Policy(torch.float16, True, False, f'sm_{major}{minor}: fp16 autocast with loss scaling (no native bf16), '
                  'Triton kernels off (no tensor-core dots below sm_80)')

def self_test_kernels(cfg, dev, policy, batch):
    """The kernels' start-up self-test (kernels.self_test) on what this run launches: attention as (head dim, heads,
    longest sequence, segments?) for the encoder and the predictor, SIGReg as the (N, M) it sums over for a
    per-process batch of `batch` images -> the families that failed it (they run in PyTorch)."""
    import kernels
    method, L = METHODS[cfg['method']], (cfg['img_size'] // cfg['patch_size']) ** 2  # the longest sequence: a whole
    uses = [(cfg['width'] // cfg['heads'], cfg['heads'], L, False)]  # image (the predictor's context and targets
    if 'predictor' in method.heads:  # never add up to more)
        uses.append((cfg['pred_width'] // cfg['pred_heads'], cfg['pred_heads'], L, True))
    kernels.failed.clear()
    kernels.self_test(torch.device(dev), policy.dtype or torch.float32, uses,
                      method.sigreg_sums(cfg, batch) if method.sigreg_sums else [])
    return kernels.failed

def device_line(dev, policy, failed=()):
    """What trains where: device, precision, and the attention and SIGReg paths (failed: the self-test's failures)."""
    failed = failed if policy.kernels else ('attention', 'sigreg')
    name = f" ({torch.cuda.get_device_name(dev)})" if dev.startswith('cuda') else ''
    return (f"device: {dev}{name}, {policy.why}, {'SDPA' if 'attention' in failed else 'Triton'} attention, "
            f"{'PyTorch' if 'sigreg' in failed else 'Triton'} SIGReg")

@contextmanager
def tf32(enabled):
    """TF32 tensor-core matmuls for fp32 tensors on CUDA inside the block only; the previous setting comes back."""
    before, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before

def resume_from_checkpoint(r):
    """The newest checkpoint of the run into model, optimizer and scaler (every process) -> (step, seconds so far)."""
    ckpts = list_checkpoints(r.run_dir)
    if not ckpts:
        raise UserError(f"--resume=True but {r.run_dir} has no checkpoint: drop --resume or point --out_dir at a run")
    ck = load_checkpoint(ckpts[-1])
    check_compatible(ck['config'], r.cfg, ckpts[-1])
    r.model.load_state_dict(ck['model'])
    r.opt.load_state_dict(ck['optimizer'])
    if ck.get('scaler'):
        r.scaler.load_state_dict(ck['scaler'])
    if r.rank == 0:
        truncate_log(os.path.join(r.run_dir, 'log.jsonl'), ck['step'])
    print(f"resumed from {ckpts[-1]} at step {ck['step']}")
    return ck['step'], ck['elapsed']

def compile_networks(model):
    """torch.compile of the networks only (masks and augmentation stay eager; lengths vary, so dynamic shapes;
    in place, so state_dict keys stay). No channels-last layout: with two view sizes (LeJEPA's global and local
    views) inductor would keep the first size's strides for the patch-embedding convolution."""
    torch._inductor.config.layout_optimization = False
    for net in (model.encoder, model.target, getattr(model, 'predictor', None), getattr(model, 'projector', None)):
        net is not None and net.compile(dynamic=True)

def read_finite(terms, step, r):
    """Scalar tensors -> numbers, in one device-to-host copy. A NaN or inf stops the run before anything is saved
    (checked at log lines and checkpoints: a non-finite step leaves the weights, and every later loss, non-finite);
    under loss scaling the gradient norm may be inf: the scaler skips that step."""
    values = dict(zip(terms, torch.stack([torch.as_tensor(v).detach().float() for v in terms.values()]).tolist()))
    if bad := [k for k, v in values.items() if not math.isfinite(v) and not (k == 'grad_norm' and r.scaler.is_enabled())]:
        raise UserError(f"non-finite {', '.join(bad)} at step {step}: stopped before saving it; the last good "
                        f"checkpoint in {r.run_dir} is kept. Try a lower --lr or --triton_kernels=False")
    return values

# =============================================================================
# plumbing: checkpoints and command line
def open_run_dir(run_dir):
    """Create the run directory; remove the half-written checkpoints of a killed run."""
    os.makedirs(run_dir, exist_ok=True)
    for f in [f for f in os.listdir(run_dir) if f.endswith('.pt.tmp')]:
        os.remove(os.path.join(run_dir, f))

def save_checkpoint(path, state):
    """Atomic: write a temp file, flush it to disk, rename over the target. A crash leaves the old file."""
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

def list_checkpoints(run_dir):
    """Epoch checkpoints of a run directory, oldest first."""
    files = os.listdir(run_dir) if os.path.isdir(run_dir) else []
    return sorted(os.path.join(run_dir, f) for f in files if re.fullmatch(r'ckpt_\d+\.pt', f))

def load_checkpoint(path):
    """A checkpoint as a dict; UserError when the file is missing, truncated or not ours."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist")
    try:
        ck = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}): it may be truncated; "
                        "use an older ckpt_*.pt from the same run")
    if not isinstance(ck, dict) or not {'model', 'config', 'step'} <= set(ck):
        raise UserError(f"{path} is not a nano-jepa checkpoint (no model/config/step entries)")
    return ck

def truncate_log(path, step):
    """Drop log records written after `step` (by a run that died after its last checkpoint)."""
    if os.path.exists(path):
        with open(path) as f:
            keep = [line for line in f if line.strip() and json.loads(line)['step'] <= step]
        with open(path, 'w') as f:
            f.writelines(keep)

def versions(dev):
    triton = getattr(sys.modules.get('triton'), '__version__', None)  # the Triton this run loaded, if any
    return {'python': sys.version.split()[0], 'torch': str(torch.__version__), 'triton': triton, 'device': dev,
            'gpu': torch.cuda.get_device_name() if dev.startswith('cuda') else None}

def check_compatible(saved, cfg, path):
    """Resuming needs the same model and method; anything else (epochs, lr, ...) may change."""
    keys = ('method', 'patch_size', 'width', 'depth', 'heads', 'pred_width', 'pred_depth', 'pred_heads', 'proj_dim',
            'num_groups', 'img_size')
    if diff := [f"{k}={saved.get(k)} (now {cfg[k]})" for k in keys if saved.get(k) != cfg[k]]:
        raise UserError(f"{path} was trained with {', '.join(diff)}: resume with the same settings or use another --out_dir")

def config_help(cfg):
    """-h: each config line of this file, `name = value  # comment`, with the value this run would use (the method's
    record and the arguments given applied), then what derive makes of them."""
    lines = open(__file__).read().splitlines()
    rows = [i for i, line in enumerate(lines) if line.split(' = ')[0] in CONFIG_KEYS and ' = ' in line]
    out = [f"usage: python jepa.py [--key=value ...]    (the values a run of --method={cfg['method']} uses)", '']
    for line in lines[rows[0] - 1:rows[-1] + 1]:
        if m := re.match(r'^(\w+) = .+?\s+# (.*)$', line):
            out.append(f"  {f'--{m[1]}={cfg[m[1]]}':<26} {m[2]}")
        elif line.startswith('# '):
            out.append(line[2:] + ':')
    return '\n'.join(out + ['derived (not keys):'] + [f"  {k} = {v:.6g}" for k, v in derive(cfg).items()])

def parse_args(argv, defaults=None, help_text=None):
    """`--key=value` arguments -> config dict. For jepa.py (defaults None): the config block, then the values of the
    method's record, then the arguments; -h prints the values that run would use and exits. probe.py and
    analyze.py pass their own defaults and -h text. Raises UserError."""
    base, given = {k: globals()[k] for k in CONFIG_KEYS} if defaults is None else dict(defaults), {}
    for arg in (a for a in argv if a not in ('-h', '--help')):
        if not arg.startswith('--') or '=' not in arg:
            raise UserError(f"argument {arg!r} is not of the form --key=value (see -h)")
        key, val = arg[2:].split('=', 1)
        if key not in base:
            close = difflib.get_close_matches(key, base, n=1)
            raise UserError(f"unknown config key {key!r}" + (f"; did you mean --{close[0]}?" if close else " (see -h)"))
        given[key] = _cast(key, val, base[key])
    method = METHODS.get((base | given)['method']) if defaults is None else None
    cfg = base | (method.defaults if method else {}) | given
    if '-h' in argv or '--help' in argv:
        print(help_text or config_help(cfg))
        sys.exit(0)
    if defaults is None:
        check_config(cfg)
    return cfg

def _cast(key, val, default):
    """The string `val` as the type of `default`; ints are accepted where a float is expected."""
    try:
        if isinstance(default, bool):
            return {'true': True, '1': True, 'yes': True, 'false': False, '0': False, 'no': False}[val.lower()]
        return type(default)(val)
    except (ValueError, KeyError):
        raise UserError(f"--{key}={val}: expected {type(default).__name__} like {default!r}") from None

def check_config(c):
    """Reject impossible settings early, with a message that says what to change."""
    rules = [(c['method'] in METHODS, f"--method={c['method']}: choose one of {', '.join(METHODS)}"),
             (c['data'] in DATASETS, f"--data={c['data']}: choose one of {', '.join(DATASETS)}"),
             (c['device'] in ('auto', 'cuda', 'mps', 'cpu'), f"--device={c['device']}: auto | cuda | mps | cpu")]
    rules += [(c[k] > 0, f"--{k}={c[k]}: must be a positive integer") for k in (
        'batch_size', 'patch_size', 'width', 'depth', 'heads', 'pred_width', 'pred_depth', 'pred_heads', 'img_size',
        'num_slices', 'global_views', 'proj_dim', 'num_groups', 'log_every')]
    rules += [(c[k] >= 0, f"--{k}={c[k]}: must be >= 0") for k in (
        'epochs', 'steps', 'local_views', 'lr', 'pred_lr', 'min_lr', 'weight_decay', 'weight_decay_end',
        'budget_minutes', 'group_lambda')]
    rules += [(lo <= c[k] <= hi and c[k] != excluded, f"--{k}={c[k]}: {what}") for k, lo, hi, excluded, what in (
        ('crop_scale', 0, 1, 0, 'an area fraction in (0, 1]'), ('lowres', 0, 1, 0, 'a fraction of --img_size in (0, 1]'),
        ('lowres_frac', 0, 1, None, 'a fraction of training in [0, 1]'),
        ('warmup', 0, 1, 1, 'a fraction of training in [0, 1)'), ('ema', 0, 1, None, 'a momentum in [0, 1]'),
        ('ema_end', 0, 1, None, 'a momentum in [0, 1]'), ('sigreg_weight', 0, 1, None, 'lambda must be in [0, 1]'),
        ('tau', 0, math.inf, 0, 'the InfoNCE temperature must be > 0'))]
    rules += [(c['img_size'] % c['patch_size'] == 0, f"--patch_size={c['patch_size']} does not divide --img_size"),
              (c['img_size'] // c['patch_size'] >= 4, "the patch grid must be at least 4x4: lower --patch_size"),
              (c['pred_width'] % c['num_groups'] == 0, f"--num_groups={c['num_groups']} must divide --pred_width"),
              (c['epochs'] > 0 or c['steps'] > 0 or c['budget_minutes'] > 0,
               "nothing to train: set --epochs, --steps or --budget_minutes above 0"),
              (c['global_views'] + c['local_views'] >= 2, "LeJEPA's invariance needs two views: raise --local_views")]
    for w, h, name in ((c['width'], c['heads'], ''), (c['pred_width'], c['pred_heads'], 'pred_')):
        rules += [(w % h == 0, f"--{name}heads={h} does not divide --{name}width={w}"),
                  (w % h == 0 and (w // h) % 4 == 0, f"head dim {name}width/{name}heads = {w // h} must be divisible "
                   "by 4 for 2-D RoPE")]
    if bad := [msg for ok, msg in rules if not ok]:
        raise UserError(bad[0])

def pick_device(name):
    if name == 'auto':
        return 'cuda' if torch.cuda.is_available() else 'mps' if torch.backends.mps.is_available() else 'cpu'
    if name == 'cuda' and not torch.cuda.is_available():
        raise UserError("--device=cuda but torch sees no CUDA GPU: use --device=auto or cpu")
    if name == 'mps' and not torch.backends.mps.is_available():
        raise UserError("--device=mps but this torch has no MPS backend: use --device=auto or cpu")
    return name

def cli(main_fn, argv):
    """Run a command-line entry point: bad input is one `error:` line on stderr and exit code 2, never a traceback."""
    try:
        try:
            main_fn(argv)
        finally:
            sys.stdout.flush()  # here, so that a reader who left early (`| head`) is caught below
        return 0
    except BrokenPipeError:  # output piped into head or a pager that closed: end quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UserError as e:
        if os.environ.get('RANK', '0') == '0':  # under torchrun every process stops; the first one says why
            print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the newest ckpt_*.pt in the run directory resumes with --resume=True", file=sys.stderr)
        return 130

if __name__ == '__main__':
    sys.modules['jepa'] = sys.modules[__name__]  # kernels/ import their PyTorch definitions from here: this module
    sys.exit(cli(main, sys.argv[1:]))
