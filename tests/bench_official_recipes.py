"""Benchmark (a script, not a test): the official I-JEPA and LeJEPA recipes, trained for a wall-clock budget on our
data and probed exactly as jepa.py probes, so they can run beside `python jepa.py ... --budget_minutes=T`.

    python tests/bench_official_recipes.py --recipe=ijepa --ijepa=PATH/TO/ijepa \\
        --data=tinyimagenet --data_dir=data/tiny-imagenet-40.zip --budget_minutes=10
    python tests/bench_official_recipes.py --recipe=lejepa --ijepa=PATH/TO/ijepa --lejepa=PATH/TO/lejepa \\
        --data=folder --data_dir=data/tin40_pre30 --transfer_dir=data/tin40_held10 --budget_minutes=10

Nothing of the official code is part of this repository: pass checkouts of facebookresearch/ijepa and
rbalestr-lab/lejepa (e.g. fetched) and the script imports from them.
- ijepa: the official VisionTransformer (sin-cos positions, its init, qkv bias, LayerNorm eps 1e-6) and
  VisionTransformerPredictor, its MaskCollator (min_keep=4: the default 10 never terminates on an 8x8 grid),
  apply_masks and repeat_interleave_batch, and the recipe of its configs: batch 128, random-resized-crop 0.3-1
  and no other augmentation, AdamW without decay on biases and 1-D parameters, lr warm-up 2e-4 -> 1e-3 over
  40/300 of training then cosine to 1e-6, weight decay 0.04 -> 0.4 (cosine), EMA 0.996 -> 1 (linear),
  smooth-L1 between the predictions and the layer-normed target features.
- lejepa: SIGReg from the lejepa package (EppsPulley(t_max=3, n_points=17) sliced by SlicingUnivariateTest,
  256 slices) and the recipe of its MINIMAL.md: V=4 views of one augmentation, lambda 0.02, an encoder with a
  512-d head, a BatchNorm MLP projector (MINIMAL's 512-2048-2048-K scaled down to 512-512-512-64), loss
  (1 - lambda) * mean((mean_v z - z_v)^2) + lambda * SIGReg, AdamW lr 2e-3 and weight decay 5e-2 on every
  parameter, batch 256, lr warm-up from 1 % over one epoch then cosine to 1e-3. The backbone is the official
  I-JEPA ViT (MINIMAL uses a timm ViT; timm is not a dependency here) with a mean-pooled 512-d linear head.
  Augmentation with jepa.py's batched ops (random-resized-crop 0.08-1 and flip, colour jitter 0.8, grayscale 0.2;
  MINIMAL's torchvision pipeline also has hue jitter, blur and solarize, and drop-path 0.1).
Both run the official-size ViT (width 192, depth 6, 3 heads, patch 8; I-JEPA predictor 96 x 4 x 3) in fp32 on
the CPU. The schedules follow the elapsed fraction of the budget, as jepa.py's do with --budget_minutes.
Printed at the end: steps, training seconds, and the linear probe (probe.py's protocol: pooled frozen encoder,
features standardised, logistic regression) of the trained encoder (the EMA target for I-JEPA) and of a
random-init encoder of the same shape, on the data's val split and on --transfer_dir's.
"""
import argparse
import copy
import math
import os
import sys
import time
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import jepa  # noqa: E402
import probe  # noqa: E402

WIDTH, DEPTH, HEADS, PATCH = 192, 6, 3, 8


def official_vit(img_size, seed):
    from src.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    return VisionTransformer(img_size=[img_size], patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS,
                             mlp_ratio=4, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))


def ijepa_recipe(data, img_size, seed):
    """Returns (step(images uint8, progress, g) -> loss, encoder to probe, batch size)."""
    from src.masks.multiblock import MaskCollator
    from src.masks.utils import apply_masks
    from src.models.vision_transformer import VisionTransformerPredictor
    from src.utils.tensors import repeat_interleave_batch
    encoder = official_vit(img_size, seed)
    predictor = VisionTransformerPredictor(num_patches=encoder.patch_embed.num_patches, embed_dim=WIDTH,
                                           predictor_embed_dim=96, depth=4, num_heads=3, mlp_ratio=4, qkv_bias=True,
                                           norm_layer=partial(nn.LayerNorm, eps=1e-6))
    target = copy.deepcopy(encoder).requires_grad_(False)
    collator = MaskCollator(input_size=(img_size, img_size), patch_size=PATCH, enc_mask_scale=(0.85, 1.0),
                            pred_mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=4,
                            allow_overlap=False)
    params = [(n, p) for net in (encoder, predictor) for n, p in net.named_parameters()]
    opt = torch.optim.AdamW([
        {'params': [p for n, p in params if 'bias' not in n and p.dim() != 1]},
        {'params': [p for n, p in params if 'bias' in n or p.dim() == 1], 'WD_exclude': True, 'weight_decay': 0}])
    batch = 128

    def step(x, progress, g):
        warm, start_lr, ref_lr, final_lr = 40 / 300, 2e-4, 1e-3, 1e-6  # in1k configs: 40 of 300 epochs
        if progress < warm:
            lr = start_lr + progress / warm * (ref_lr - start_lr)
        else:
            q = (progress - warm) / (1 - warm)
            lr = max(final_lr, final_lr + (ref_lr - final_lr) * 0.5 * (1 + math.cos(math.pi * q)))
        wd = 0.4 + (0.04 - 0.4) * 0.5 * (1 + math.cos(math.pi * progress))
        for group in opt.param_groups:
            group['lr'] = lr
            if not group.get('WD_exclude'):
                group['weight_decay'] = wd
        imgs = jepa.random_resized_crop(jepa.normalize(x), img_size, (0.3, 1.0), g, flip=False)
        _, masks_enc, masks_pred = collator([torch.zeros(1)] * x.shape[0])
        with torch.no_grad():
            h = F.layer_norm(target(imgs), (WIDTH,))
            h = repeat_interleave_batch(apply_masks(h, masks_pred), x.shape[0], repeat=len(masks_enc))
        z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
        loss = F.smooth_l1_loss(z, h)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m = 0.996 + (1.0 - 0.996) * progress
        with torch.no_grad():
            for pt, po in zip(target.parameters(), encoder.parameters()):
                pt.mul_(m).add_((1 - m) * po.detach())
        return loss.item()
    return step, target, batch


class PooledHead(nn.Module):
    """MINIMAL's backbone has a 512-d classification head; the official I-JEPA ViT has none: mean-pool, Linear."""
    def __init__(self, vit):
        super().__init__()
        self.vit, self.head = vit, nn.Linear(WIDTH, 512)

    def forward(self, x):
        return self.head(self.vit(x).mean(1))


def lejepa_recipe(data, img_size, seed):
    from lejepa.multivariate import SlicingUnivariateTest
    from lejepa.univariate import EppsPulley
    net = PooledHead(official_vit(img_size, seed))
    torch.manual_seed(seed)
    proj = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 512),
                         nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, 64))
    sigreg = SlicingUnivariateTest(EppsPulley(t_max=3, n_points=17), num_slices=256)
    views, lam, lr, batch = 4, 0.02, 2e-3, 256
    opt = torch.optim.AdamW(list(net.parameters()) + list(proj.parameters()), lr=lr, weight_decay=5e-2)
    warm_steps, state = len(data['train_x']) // batch, {'step': 0, 'warm_end': None}

    def step(x, progress, g):
        s = state['step']
        if s < warm_steps:  # LinearLR(start_factor=0.01) over one epoch
            lr_now = lr * (0.01 + 0.99 * s / warm_steps)
        else:  # CosineAnnealingLR(eta_min=1e-3) over the rest of the budget
            state['warm_end'] = state['warm_end'] if state['warm_end'] is not None else progress
            q = (progress - state['warm_end']) / max(1e-9, 1 - state['warm_end'])
            lr_now = 1e-3 + (lr - 1e-3) * 0.5 * (1 + math.cos(math.pi * min(q, 1.0)))
        for group in opt.param_groups:
            group['lr'] = lr_now
        xn = jepa.normalize(x)
        vs = torch.cat([jepa.color_jitter(jepa.random_resized_crop(xn, img_size, (0.08, 1.0), g), g, strength=0.8)
                        for _ in range(views)])  # (V*B, 3, S, S)
        z = proj(net(vs)).view(views, x.shape[0], -1)  # (V, B, K)
        inv = (z.mean(0) - z).square().mean()
        loss = (1 - lam) * inv + lam * sigreg(z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state['step'] += 1
        return loss.item()
    return step, net.vit, batch


def probe_line(name, encoder, data):
    encoder.eval()
    return f"{name}: {probe.evaluate(encoder, data, linear_only=True)['linear']:.4f}"


def main():
    ap = argparse.ArgumentParser(description='the official I-JEPA / LeJEPA recipes for a budget, probed like jepa.py')
    ap.add_argument('--recipe', choices=('ijepa', 'lejepa'), required=True)
    ap.add_argument('--ijepa', required=True, help='path to a facebookresearch/ijepa checkout (its ViT is used by both)')
    ap.add_argument('--lejepa', default='', help='path to a rbalestr-lab/lejepa checkout (for --recipe=lejepa)')
    ap.add_argument('--data', default='tinyimagenet', help="jepa.py's --data (tinyimagenet, folder, ...)")
    ap.add_argument('--data_dir', required=True, help="jepa.py's --data_dir")
    ap.add_argument('--transfer_dir', default='', help='a folder dataset to probe on as well (classes never seen)')
    ap.add_argument('--img_size', type=int, default=64)
    ap.add_argument('--budget_minutes', type=float, default=10.0)
    ap.add_argument('--seed', type=int, default=0)
    a = ap.parse_args()
    if a.recipe == 'lejepa' and not a.lejepa:
        ap.error('--recipe=lejepa needs --lejepa=PATH (a rbalestr-lab/lejepa checkout)')
    for path in (a.ijepa, a.lejepa):
        if path:
            if not os.path.isdir(path):
                ap.error(f'{path}: not a directory (pass a checkout of the official code)')
            sys.path.insert(0, path)
    cfg = jepa.parse_args([f'--data={a.data}', f'--data_dir={a.data_dir}', f'--img_size={a.img_size}'])
    data = jepa.load_data(cfg, 'cpu')
    step, encoder, batch = (ijepa_recipe if a.recipe == 'ijepa' else lejepa_recipe)(data, a.img_size, a.seed)
    print(f"official {a.recipe} recipe, ViT {WIDTH}x{DEPTH}x{HEADS} patch {PATCH}, batch {batch}, "
          f"{len(data['train_x'])} train images, budget {a.budget_minutes} min, {torch.get_num_threads()} threads",
          flush=True)
    n, budget, steps, t0 = len(data['train_x']), a.budget_minutes * 60, 0, time.perf_counter()
    order, pos, gen = None, n, torch.Generator().manual_seed(a.seed)
    while (elapsed := time.perf_counter() - t0) < budget:
        if pos + batch > n:  # a new epoch in a new random order
            order, pos = torch.randperm(n, generator=gen), 0
        x = data['train_x'][order[pos:pos + batch]]  # (batch, 3, S, S) uint8
        pos += batch
        loss = step(x, elapsed / budget, jepa.step_generator(a.seed, steps, 'cpu'))
        steps += 1
        if steps % 10 == 0:
            print(f"step {steps} | loss {loss:.4f} | {elapsed / 60:.1f} of {a.budget_minutes} min", flush=True)
    train_s = time.perf_counter() - t0
    print(f"steps: {steps}\ntrain_seconds: {train_s:.0f}", flush=True)
    random_init = official_vit(a.img_size, a.seed + 1)
    print(probe_line('probe_acc', encoder, data))
    print(probe_line('probe_acc_random_init', random_init, data))
    if a.transfer_dir:
        held = jepa.load_data(jepa.parse_args(['--data=folder', f'--data_dir={a.transfer_dir}',
                                               f'--img_size={a.img_size}']), 'cpu')
        print(probe_line('transfer_probe_acc', encoder, held))
        print(probe_line('transfer_probe_acc_random_init', random_init, held))


if __name__ == '__main__':
    main()
