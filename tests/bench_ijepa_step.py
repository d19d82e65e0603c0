"""Benchmark (a script, not a test): one I-JEPA training step of jepa.py beside the official facebookresearch/ijepa
step, same model, batch and optimiser, interleaved in one process so both see the same machine.

    python tests/bench_ijepa_step.py                          # ours only
    python tests/bench_ijepa_step.py --ijepa=PATH/TO/ijepa    # side by side with the official code (a checkout)
    python tests/bench_ijepa_step.py --ijepa=PATH --threads=1 --batch=128 --rounds=5
    python tests/bench_ijepa_step.py --ijepa=PATH --masks=official   # ours on the official collator's masks
    python tests/bench_ijepa_step.py --bf16 --compile                 # ours as is, beside ours under CPU bf16
                                                                      # autocast and beside ours torch.compiled

Model (the issue's "official size"): 64x64 images, patch 8, ViT width 192, depth 6, 3 heads; predictor width 96,
depth 4, 3 heads; 4 target blocks; AdamW; EMA update. Ours: `jepa.py`'s whole step (batched augmentation and
masking on the device, forward, backward, optimizer, EMA). Official: its train.py step (forward_target,
forward_context, smooth-L1, backward, AdamW, EMA); its masks and augmentation come from data-loader workers in
training, so they are made before the clock starts. Printed per implementation: img/s, the mean number of
context tokens the encoder sees, and encoder tokens/s (context + full-image target tokens per second).
The two mask samplers keep different context sizes (ours 18-30 of 64 patches, the official collator 8-12: its
context block never exceeds 7x7), so with --masks=official our step runs on the official collator's masks:
then both see the same tokens and img/s compares the implementations alone.
Nothing of the official code is part of this repository; pass a checkout of your own.
"""
import argparse
import copy
import os
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import jepa  # noqa: E402

SAMPLER = jepa.multiblock_masks  # ours; each step below swaps in its own counting wrapper around it
SIZE = dict(img_size=64, patch_size=8, width=192, depth=6, heads=3, pred_width=96, pred_depth=4, pred_heads=3)


def ours(batch, masks=None, bf16=False, compile=False):
    """Our whole step; masks: a list of official (masks_enc, masks_pred) to use instead of our sampler;
    bf16: the forward under torch.autocast('cpu', bfloat16); compile: the networks torch.compiled, as --compile does."""
    cfg = jepa.parse_args([f'--{k}={v}' for k, v in SIZE.items()] + [f'--batch_size={batch}', '--triton_kernels=False',
                                                                     f'--compile={compile}'])
    model = jepa.build_model(cfg, 'cpu')
    opt = jepa.make_optimizer(model, cfg)
    if compile:
        jepa.compile_networks(model)
    autocast = torch.autocast('cpu', dtype=torch.bfloat16) if bf16 else jepa.nullcontext()
    x = (torch.rand(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255).byte()
    ctx, now = [], [0]

    def counted_masks(*args, **kwargs):  # the step's own masks (or the official ones), counted, not redrawn
        if masks is None:
            context_idx, target_idx = SAMPLER(*args, **kwargs)
        else:
            masks_enc, masks_pred = masks[now[0] % len(masks)]
            context_idx, target_idx = masks_enc[0], torch.stack(masks_pred, 1)  # (B, Nc), (B, 4, Nt)
        ctx.append(context_idx.shape[1])
        return context_idx, target_idx

    def step(i):  # several of these may be interleaved: each installs its own wrapper (not one nested in another)
        jepa.multiblock_masks, now[0] = counted_masks, i
        g = jepa.step_generator(0, i, 'cpu')
        with autocast:
            loss, _ = model(jepa.Batch(x, g, i, 1.0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        jepa.ema_update(model.target, model.encoder, 0.996)
    return step, ctx


def official_masks(path, batch, n=8):
    """n batches of the official collator's masks, (masks_enc, masks_pred) each, as its loader workers make them."""
    sys.path.insert(0, path)
    from src.masks.multiblock import MaskCollator
    collator = MaskCollator(input_size=(64, 64), patch_size=8, enc_mask_scale=(0.85, 1.0), pred_mask_scale=(0.15, 0.2),
                            aspect_ratio=(0.75, 1.5), nenc=1, npred=4, min_keep=4, allow_overlap=False)
    torch.manual_seed(0)
    return [collator([torch.zeros(1)] * batch)[1:] for _ in range(n)]


def official(path, batch, masks):
    sys.path.insert(0, path)
    from src.masks.utils import apply_masks
    from src.models.vision_transformer import VisionTransformer, VisionTransformerPredictor
    from src.utils.tensors import repeat_interleave_batch
    torch.manual_seed(0)
    encoder = VisionTransformer(img_size=[64], patch_size=8, embed_dim=192, depth=6, num_heads=3)
    predictor = VisionTransformerPredictor(num_patches=encoder.patch_embed.num_patches, embed_dim=192,
                                           predictor_embed_dim=96, depth=4, num_heads=3)
    target = copy.deepcopy(encoder).requires_grad_(False)
    opt = torch.optim.AdamW(list(encoder.parameters()) + list(predictor.parameters()), lr=1e-4, weight_decay=0.04)
    imgs = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ctx = []

    def step(i):
        masks_enc, masks_pred = masks[i % len(masks)]
        ctx.append(masks_enc[0].shape[1])
        with torch.no_grad():
            h = F.layer_norm(target(imgs), (192,))
            h = repeat_interleave_batch(apply_masks(h, masks_pred), batch, repeat=len(masks_enc))
        z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
        loss = F.smooth_l1_loss(z, h)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for pt, po in zip(target.parameters(), encoder.parameters()):
                pt.mul_(0.996).add_((1 - 0.996) * po.detach())
    return step, ctx


def main():
    ap = argparse.ArgumentParser(description='I-JEPA step: jepa.py vs the official code, interleaved')
    ap.add_argument('--ijepa', default='', help='path to a facebookresearch/ijepa checkout (omit: ours only)')
    ap.add_argument('--batch', type=int, default=128, help='images per step (default 128)')
    ap.add_argument('--threads', type=int, default=torch.get_num_threads(), help='torch threads (default: all)')
    ap.add_argument('--steps', type=int, default=5, help='timed steps per round (default 5)')
    ap.add_argument('--rounds', type=int, default=3, help='rounds, each timing every implementation once (default 3)')
    ap.add_argument('--masks', choices=('ours', 'official'), default='ours',
                    help="masks of our step: our sampler, or the official collator's (needs --ijepa)")
    ap.add_argument('--bf16', action='store_true', help='also time our step under CPU bf16 autocast')
    ap.add_argument('--compile', action='store_true', help='also time our step torch.compiled (slow first steps)')
    a = ap.parse_args()
    if a.masks == 'official' and not a.ijepa:
        ap.error('--masks=official needs --ijepa=PATH (the collator comes from the official code)')
    torch.set_num_threads(a.threads)
    masks = official_masks(a.ijepa, a.batch) if a.ijepa else None
    our_masks = masks if a.masks == 'official' else None
    impls = {'jepa.py': ours(a.batch, our_masks)}
    if a.bf16:
        impls['bf16'] = ours(a.batch, our_masks, bf16=True)
    if a.compile:
        impls['compiled'] = ours(a.batch, our_masks, compile=True)
    if a.ijepa:
        impls['official'] = official(a.ijepa, a.batch, masks)
    L = (SIZE['img_size'] // SIZE['patch_size']) ** 2
    print(f"I-JEPA step, batch {a.batch}, ViT 192x6x3 + predictor 96x4x3, 64px / patch 8 ({L} tokens), "
          f"{a.threads} threads, torch {torch.__version__}, our masks: {a.masks}")
    for name, (step, _) in impls.items():
        t0 = time.perf_counter()
        for i in range(3 if name == 'compiled' else 1):  # warm-up (compiling: the first steps recompile)
            step(1000 + i)
        print(f"{name:>9}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
    times = {name: [] for name in impls}
    for r in range(a.rounds):
        for name, (step, ctx) in impls.items():
            ctx.clear()
            t0 = time.perf_counter()
            for i in range(a.steps):
                step(1 + r * a.steps + i)
            times[name].append((time.perf_counter() - t0) / a.steps)
    for name, (step, ctx) in impls.items():
        t = sorted(times[name])[len(times[name]) // 2]  # median round
        nc = sum(ctx) / len(ctx)
        print(f"{name:>9}: {a.batch / t:7.1f} img/s | {t * 1e3:7.1f} ms/step | context tokens {nc:5.1f} of {L} | "
              f"encoder tokens/s {a.batch * (nc + L) / t:9.0f}")


if __name__ == '__main__':
    main()
