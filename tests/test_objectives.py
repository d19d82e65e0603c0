"""The I-JEPA objective, EMA and schedules."""
import copy

import pytest
import torch
from hypothesis import given, strategies as st

import jepa


@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 8)), seed=st.integers(0, 1000))
def test_prediction_loss_is_zero_iff_prediction_equals_target(shape, seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(*shape, generator=g)
    assert jepa.prediction_loss(target.clone(), target) == 0
    other = target.clone()
    other.view(-1)[seed % other.numel()] += 0.01 + torch.rand(1, generator=g).item()
    assert jepa.prediction_loss(other, target) > 0


def test_prediction_loss_is_smooth_l1():
    p, t = torch.tensor([0.0, 0.5, 3.0]), torch.zeros(3)
    assert jepa.prediction_loss(p, t).item() == (0 + 0.5 * 0.25 + 2.5) / 3


def _two_encoders():
    torch.manual_seed(0)
    a = jepa.ViT(4, 16, 1, 1)
    b = copy.deepcopy(a)
    for p in b.parameters():
        p.data.normal_()
    return a, b


def test_ema_at_momentum_one_keeps_the_target():
    target, online = _two_encoders()
    before = [p.clone() for p in target.parameters()]
    jepa.ema_update(target, online, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, target.parameters()))


def test_ema_at_momentum_zero_copies_the_online_encoder():
    target, online = _two_encoders()
    jepa.ema_update(target, online, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), online.parameters()))


def test_ema_is_the_convex_combination():
    target, online = _two_encoders()
    t0 = [p.clone() for p in target.parameters()]
    jepa.ema_update(target, online, 0.9)
    for a, t, o in zip(target.parameters(), t0, online.parameters()):
        torch.testing.assert_close(a, 0.9 * t + 0.1 * o)


def test_schedule_endpoints():
    cfg = jepa.parse_args([])
    lr0, wd0, m0 = jepa.schedules(0.0, cfg)
    lr_peak, _, _ = jepa.schedules(cfg['warmup'], cfg)
    lr1, wd1, m1 = jepa.schedules(1.0, cfg)
    assert lr0 == 0 and abs(lr_peak - cfg['lr']) < 1e-12 and abs(lr1 - cfg['min_lr']) < 1e-12
    assert abs(wd0 - cfg['weight_decay']) < 1e-12 and abs(wd1 - cfg['weight_decay_end']) < 1e-12
    assert abs(m0 - cfg['ema']) < 1e-12 and abs(m1 - cfg['ema_end']) < 1e-12
    flat = dict(cfg, ema=0.99, ema_end=0.99)  # --ema_end=--ema: a constant momentum
    assert all(abs(jepa.schedules(p / 10, flat)[2] - 0.99) < 1e-12 for p in range(11))
    assert abs(jepa.schedules(0.5, dict(cfg, ema=0.99, ema_end=1.0))[2] - 0.995) < 1e-12  # linear in between
    assert jepa.schedules(0.0, dict(cfg, ema=0.996))[2] == 0.996  # the official I-JEPA start
    lrs = [jepa.schedules(p / 100, cfg)[0] for p in range(101)]
    peak = lrs.index(max(lrs))
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))   # warm-up rises
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))     # cosine falls


def test_crop_size_is_lower_in_whole_patches_then_the_image_size():
    cfg = jepa.parse_args(['--img_size=64', '--patch_size=8'])  # defaults: lowres 0.75 for the first half
    assert [jepa.crop_size(p, cfg) for p in (0.0, 0.49, 0.5, 1.0)] == [48, 48, 64, 64]
    assert jepa.crop_size(0.0, dict(cfg, lowres=0.3)) == 32  # never below a 4x4 grid
    assert jepa.crop_size(0.0, dict(cfg, lowres=0.6)) == 40  # 4.8 patches -> 5
    assert all(jepa.crop_size(p / 10, dict(cfg, lowres_frac=0.0)) == 64 for p in range(11))  # off
    assert all(jepa.crop_size(p / 10, dict(cfg, lowres=1.0)) == 64 for p in range(11))


@pytest.mark.parametrize('method, first_half, second_half', [('ijepa', 36, 64), ('lejepa', 64, 64)])
def test_the_masked_methods_train_on_the_lower_grid_first(method, first_half, second_half):
    """The image that makes the targets (ijepa: the teacher's input) is a 6x6 grid of patches until lowres_frac
    and 8x8 after; lejepa's global views keep the full grid throughout."""
    cfg = jepa.parse_args(['--img_size=64', '--patch_size=8', '--width=32', '--depth=1', '--heads=2',
                           '--pred_width=16', '--pred_depth=1', '--pred_heads=1', '--proj_dim=8',
                           '--triton_kernels=False', f'--method={method}'])
    model = jepa.build_model(cfg, 'cpu')
    full_views = model.target if method == 'ijepa' else model.encoder  # what sees whole crops
    tokens = []
    full_views.register_forward_hook(lambda m, args, out: tokens.append(out.shape[1]))
    x = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    seen = []
    for progress in (0.0, 0.6):
        tokens.clear()
        loss, _ = model(jepa.Batch(x, torch.Generator().manual_seed(0), 0, progress))
        assert torch.isfinite(loss)
        seen.append(max(tokens))
    assert seen == [first_half, second_half]


def test_ijepa_sigreg_regularises_the_pooled_features_and_every_patch_token(monkeypatch):
    """ijepa_sigreg's SIGReg term is the mean of SIGReg on the images' pooled full-image tokens (B, D) and on all
    B*L tokens (B*L, D), the targets themselves; the loss is (1 - lambda) * pred + lambda * that mean."""
    cfg = jepa.parse_args(['--img_size=32', '--patch_size=8', '--width=32', '--depth=1', '--heads=2',
                           '--pred_width=16', '--pred_depth=1', '--pred_heads=1', '--lowres_frac=0',
                           '--triton_kernels=False', '--method=ijepa_sigreg', '--num_slices=8'])
    model = jepa.build_model(cfg, 'cpu')
    full = []
    model.encoder.register_forward_hook(lambda m, args, out: full.append(out) if args[1:] in ((), (None,)) else None)
    seen, real = [], jepa.sigreg
    monkeypatch.setattr(jepa, 'sigreg', lambda z, *a, **k: (seen.append(z), real(z, *a, **k))[1])
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    loss, logs = model(jepa.Batch(x, torch.Generator().manual_seed(0), 5, 1.0))
    h = full[0]  # (4, 16, 32): the encoder's own full-image tokens, with gradient (no EMA, no stop-gradient)
    assert h.requires_grad and [tuple(z.shape) for z in seen] == [(4, 32), (64, 32)]
    torch.testing.assert_close(seen[0], h.mean(1))
    torch.testing.assert_close(seen[1], h.flatten(0, 1))
    expected = (real(h.mean(1), 5, 8, cfg['seed']) + real(h.flatten(0, 1), 5, 8, cfg['seed'])) / 2
    torch.testing.assert_close(logs['sigreg'], expected)
    lam = cfg['sigreg_weight']
    torch.testing.assert_close(loss, (1 - lam) * logs['pred'] + lam * expected)


def test_no_weight_decay_on_biases_norms_and_tokens():
    cfg = jepa.parse_args([])
    model = jepa.build_model(cfg, 'cpu')
    opt = jepa.make_optimizer(model, cfg)
    decay, no_decay = ({id(p) for g in opt.param_groups if (g['weight_decay'] > 0) == d for p in g['params']}
                       for d in (True, False))
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for i, p in ((i, dict(model.named_parameters())[names[i]]) for i in decay))
    assert 'predictor.mask_token' in {names[i] for i in no_decay}
    assert not any(n.startswith('target.') for n in map(names.get, decay | no_decay))


@pytest.mark.parametrize('kernels', [False, True])
def test_predicting_blocks_together_equals_predicting_each_alone(kernels):
    """One sequence [context, block 1..nb] with segment visibility predicts each block exactly as a pass over
    [context, that block] alone, so no block sees another. kernels=True runs the fused attention (Triton's
    interpreter on CPU)."""
    torch.manual_seed(0)
    pred = jepa.Predictor(32, 32, 2, 2, kernels=kernels)  # head dim 16: kernels take 16..128
    B, Nc, nb, Nt, gw = 3, 6, 4, 3, 6
    z = torch.randn(B, Nc, 32)
    ctx_idx = torch.stack([torch.randperm(gw * gw)[:Nc] for _ in range(B)])
    tgt_idx = torch.randint(0, gw * gw, (B, nb, Nt))
    together = pred(z, ctx_idx, tgt_idx, gw)  # (B, nb, Nt, 32)
    for i in range(nb):
        alone = pred(z, ctx_idx, tgt_idx[:, i:i + 1], gw)[:, 0]
        torch.testing.assert_close(together[:, i], alone, rtol=1e-4, atol=1e-5)
    moved = tgt_idx.clone()
    moved[:, 1:] = torch.randint(0, gw * gw, (B, nb - 1, Nt))  # other blocks elsewhere: block 0 unchanged
    torch.testing.assert_close(pred(z, ctx_idx, moved, gw)[:, 0], together[:, 0], rtol=1e-4, atol=1e-5)


def test_the_context_does_not_see_the_mask_tokens(monkeypatch):
    """Moving a block's target positions leaves the context tokens' states as they were (the official per-block
    predictor lets its context attend to the mask tokens; full attention here shows the test would see it), and
    one block's predictions are the same wherever another block is."""
    torch.manual_seed(0)
    seg = jepa.Predictor(32, 32, 2, 2)
    for m in seg.modules():  # weights large enough that attention is far from uniform
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.3)
    torch.nn.init.normal_(seg.mask_token)
    z, ctx_idx = torch.randn(2, 5, 32), torch.tensor([[0, 1, 2, 6, 7], [3, 4, 5, 9, 10]])
    tgt, moved = torch.tensor([[[20, 21, 26]]] * 2), torch.tensor([[[28, 29, 35]]] * 2)  # one block, elsewhere

    def context_states(tgt_idx):  # the last block's output at the context tokens
        out = []
        handle = seg.blocks[-1].register_forward_hook(lambda m, a, o: out.append(o[:, :5]))
        seg(z, ctx_idx, tgt_idx, 6)
        handle.remove()
        return out[0]
    torch.testing.assert_close(context_states(moved), context_states(tgt))
    two, two_moved = torch.cat([tgt, tgt + 2], 1), torch.cat([tgt, moved], 1)  # block 2 moves, block 1 stays
    torch.testing.assert_close(seg(z, ctx_idx, two_moved, 6)[:, 0], seg(z, ctx_idx, two, 6)[:, 0])
    monkeypatch.setattr(jepa, 'visible', lambda s: torch.ones(len(s), len(s), dtype=torch.bool))  # full attention
    assert (context_states(moved) - context_states(tgt)).abs().max() > 0.1


@given(crop_scale=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
def test_random_resized_crop_keeps_a_box_of_at_least_crop_scale(crop_scale, seed):
    """Each image is resampled from one axis-aligned box inside it, of area at least min(crop_scale, 3/4) of the
    image (a box wider or taller than the image is cut to it, and the aspect jitter stays within 3/4..4/3), maybe
    mirrored. Read off a ramp image: channel 0 holds each pixel's x, channel 1 its y, in grid_sample's [-1, 1]."""
    S, B = 32, 8
    c = (torch.arange(S) + 0.5) / S * 2 - 1  # pixel centres
    ramp = torch.stack([c.expand(S, S), c[:, None].expand(S, S), torch.zeros(S, S)]).expand(B, -1, -1, -1)
    out = jepa.random_resized_crop(ramp, S, (crop_scale, 1.0), torch.Generator().manual_seed(seed))
    mid = S // 2  # two neighbouring output pixels near the box centre: inside the image, where bilinear is exact
    dx = out[:, 0, mid, mid] - out[:, 0, mid, mid - 1]  # (B,) = +-(box width in [-1, 1] units) / S
    dy = out[:, 1, mid, mid] - out[:, 1, mid - 1, mid]
    w, h = dx.abs() * S / 2, dy.abs() * S / 2  # box sides as fractions of the image's
    assert (dy > 0).all()  # never flipped vertically
    assert ((w * h) >= min(crop_scale, 0.75) - 1e-4).all() and (w <= 1 + 1e-4).all() and (h <= 1 + 1e-4).all()
    cx, cy = out[:, 0, mid, mid - 1:mid + 1].mean(1), out[:, 1, mid - 1:mid + 1, mid].mean(1)  # box centre
    assert ((cx.abs() + w <= 1 + 1e-4) & (cy.abs() + h <= 1 + 1e-4)).all()  # the box lies inside the image
    aspect = w / h
    assert ((aspect >= 0.75 - 1e-3) | (w > 1 - 1e-4) | (h > 1 - 1e-4)).all()  # jitter within 3/4..4/3 unless cut
    assert ((aspect <= 4 / 3 + 1e-3) | (w > 1 - 1e-4) | (h > 1 - 1e-4)).all()


# torchvision's functional colour operations, written out (torchvision is not a dependency): each blends the
# image with black, its gray mean or its grayscale, and clamps to [0, 1].
def tv_grayscale(img):  # (3, H, W) -> (1, H, W), torchvision's rgb_to_grayscale weights
    return (0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)


def tv_blend(img1, img2, ratio):
    return (ratio * img1 + (1.0 - ratio) * img2).clamp(0, 1)


def tv_jitter(img, b, c, s, gray):
    img = tv_blend(img, torch.zeros_like(img), b)                                 # adjust_brightness
    img = tv_blend(img, tv_grayscale(img).mean((-3, -2, -1), keepdim=True), c)    # adjust_contrast
    img = tv_blend(img, tv_grayscale(img), s)                                     # adjust_saturation
    return tv_grayscale(img).expand(3, -1, -1) if gray else img                   # RandomGrayscale


@given(seed=st.integers(0, 10_000), strength=st.sampled_from([0.4, 0.8]))
def test_color_jitter_follows_torchvision(seed, strength):
    """Each operation acts on the image the one before left (a brightened image's contrast and saturation are
    taken around its own gray, and a grayscale view keeps the jitter), as torchvision's ColorJitter in the
    order brightness, contrast, saturation, then RandomGrayscale; per image, on random images."""
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(16, 3, 8, 8, generator=g, dtype=torch.float64)
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (jepa.MEAN, jepa.STD))
    out = jepa.color_jitter(((img - mean) / std).float(), torch.Generator().manual_seed(seed + 1), strength)
    r = torch.rand(16, 4, generator=torch.Generator().manual_seed(seed + 1))  # the draws color_jitter makes
    f = (1 + strength * (2 * r[:, :3] - 1)).double()
    expected = torch.stack([tv_jitter(img[i], *f[i], r[i, 3] < 0.2) for i in range(16)])
    torch.testing.assert_close((out.double() * std + mean), expected, rtol=0, atol=2e-6)


def test_saturation_acts_on_the_brightened_image(monkeypatch):
    """The case that was wrong: x1.4 brightness, then saturation 0.7 around the grayscale of the brightened image,
    not of the input (which gave a darker result)."""
    img = torch.tensor([0.3, 0.5, 0.5], dtype=torch.float64).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    mean, std = (torch.tensor(v, dtype=torch.float64).view(1, 3, 1, 1) for v in (jepa.MEAN, jepa.STD))
    monkeypatch.setattr(torch, 'rand', lambda *a, **k: torch.tensor([[1.0, 0.5, 0.125, 0.9]]))  # 1.4, 1, 0.7; no gray
    out = jepa.color_jitter(((img - mean) / std).float(), None).double() * std + mean
    x = tv_blend(img[0], torch.zeros_like(img[0]), 1.4)
    torch.testing.assert_close(out[0], tv_blend(x, tv_grayscale(x), 0.7), rtol=0, atol=2e-6)


def test_lejepa_loss_is_the_written_out_formula(monkeypatch):
    """L = (1 - lambda) inv + lambda SIGReg with inv = 1/(V B K) sum_v sum_n ||mu_n - z_vn||^2 and mu_n the mean
    of image n's global views (not of all views), against loops in float64."""
    V_g, V_l, B, K, lam = 2, 3, 5, 4, 0.1
    z = torch.randn(V_g + V_l, B, K, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    views = ([torch.zeros(1)] * V_g, [torch.zeros(1)] * V_l)
    monkeypatch.setattr(jepa, 'lejepa_views', lambda x, cfg, g: views)
    monkeypatch.setattr(jepa, 'embed_views', lambda model, vs: z[:V_g] if vs is views[0] else z[V_g:])
    monkeypatch.setattr(jepa, 'sigreg', lambda z, *a, **k: torch.tensor(7.0, dtype=torch.float64))
    cfg = {'global_views': V_g, 'num_slices': 8, 'seed': 0, 'sigreg_weight': lam, 'triton_kernels': False}
    model = type('M', (), {'cfg': cfg})()
    loss, logs = jepa.lejepa_loss(model, jepa.Batch(None, None, 0, 1.0))
    inv = 0.0
    for n in range(B):
        mu = sum(z[v, n] for v in range(V_g)) / V_g
        inv += sum(((mu - z[v, n]) ** 2).sum() for v in range(V_g + V_l))
    inv /= (V_g + V_l) * B * K
    assert logs['inv'].item() == pytest.approx(inv.item(), rel=1e-12)
    assert loss.item() == pytest.approx((1 - lam) * inv.item() + lam * 7.0, rel=1e-12)


@given(seed=st.integers(0, 10_000), B=st.integers(2, 12), K=st.integers(2, 16), tau=st.sampled_from([0.07, 0.2, 1.0]))
def test_info_nce_is_nt_xent(seed, B, K, tau):
    """SimCLR's NT-Xent, written out: for each of the 2B embeddings, -log of its positive's share of the
    exponentiated cosine similarities to all 2B - 1 others, averaged."""
    g = torch.Generator().manual_seed(seed)
    z1, z2 = (torch.randn(B, K, generator=g, dtype=torch.float64) for _ in range(2))
    z = torch.cat([z1, z2])
    z = z / z.norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(2 * B):
        pos = (i + B) % (2 * B)
        denom = sum(torch.exp(z[i] @ z[j] / tau) for j in range(2 * B) if j != i)
        total += -torch.log(torch.exp(z[i] @ z[pos] / tau) / denom)
    assert jepa.info_nce(z1, z2, tau).item() == pytest.approx(total.item() / (2 * B), rel=1e-5, abs=1e-6)
