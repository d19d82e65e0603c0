"""Benchmark (a script, not a test): jepa.multiblock_masks vs the official I-JEPA collator's Python loop, for a
batch of 256 on an 8x8 patch grid (32x32 images, patch 4), I-JEPA's mask settings.

    python tests/bench_masks.py                          # ours only
    python tests/bench_masks.py --ijepa=PATH/TO/ijepa    # side by side with facebookresearch/ijepa's MaskCollator

The official collator is imported from a checkout you provide; nothing of it is part of this repository. Its
default min_keep=10 never terminates on an 8x8 grid (the context rarely keeps 10 patches), so it runs with 4.
"""
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import jepa  # noqa: E402


def timeit(fn, reps):
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def main():
    B, H, W = 256, 8, 8
    g = torch.Generator().manual_seed(0)
    ours = timeit(lambda: jepa.multiblock_masks(B, H, W, rng=random.Random(0), generator=g), 200)
    print(f"multiblock_masks (vectorised, CPU): {ours * 1e3:8.3f} ms per batch of {B} on {H}x{W}")
    if torch.cuda.is_available():
        gc = torch.Generator(device='cuda').manual_seed(0)
        def on_gpu():
            jepa.multiblock_masks(B, H, W, rng=random.Random(0), generator=gc, device='cuda')
            torch.cuda.synchronize()
        print(f"multiblock_masks (vectorised, CUDA): {timeit(on_gpu, 200) * 1e3:8.3f} ms")
    path = next((a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--ijepa=')), None)
    if path:
        sys.path.insert(0, path)
        from src.masks.multiblock import MaskCollator
        collator = MaskCollator(input_size=(32, 32), patch_size=4, enc_mask_scale=(0.85, 1.0),
                                pred_mask_scale=(0.15, 0.2), aspect_ratio=(0.75, 1.5), nenc=1, npred=4,
                                min_keep=4, allow_overlap=False)
        batch = [torch.zeros(1) for _ in range(B)]
        official = timeit(lambda: collator(batch), 5)
        print(f"official MaskCollator (Python loop):  {official * 1e3:8.3f} ms per batch")
        print(f"speed-up: {official / ours:.0f}x")


if __name__ == '__main__':
    main()
