"""torch.compile with the Triton kernels on (Triton's interpreter on CPU; backends aot_eager and inductor):
the kernels are custom operators, so the encoder and predictor trace without a graph break, and a compiled
training step gives the eager losses."""
import functools

import pytest
import torch

import jepa
from conftest import DEV

pytest.importorskip('triton', reason='triton is not installed (make install adds it where it installs)')

ARGS = ['--img_size=16', '--patch_size=4', '--width=32', '--depth=2', '--heads=2', '--pred_width=16', '--pred_depth=1',
        '--pred_heads=1', '--num_slices=32', '--proj_dim=16', '--local_views=1', '--batch_size=8', '--triton_kernels=True']


@pytest.mark.parametrize('method', ['ijepa', 'lejepa'])
def test_compiled_step_has_no_graph_break_and_the_eager_losses(method):
    cfg = jepa.parse_args(ARGS + [f'--method={method}'])
    model = jepa.build_model(cfg, DEV)
    assert model.cfg['triton_kernels']
    x = jepa.make_shapes(8, 16)[0].to(DEV)
    img = jepa.normalize(x)
    idx = torch.arange(10, device=DEV).repeat(8, 1)  # a gathered context of 10 tokens
    explained = [torch._dynamo.explain(model.encoder)(img), torch._dynamo.explain(model.encoder)(img, idx)]
    if method == 'ijepa':  # the predictor's sequence: context and target blocks in segments
        tgt = torch.arange(10, 16, device=DEV).view(1, 2, 3).repeat(8, 1, 1)  # two target blocks of 3
        explained.append(torch._dynamo.explain(model.predictor)(torch.randn(8, 10, 32, device=DEV), idx, tgt, 4))
    for ex in explained:
        assert ex.graph_break_count == 0, [str(b.reason)[:200] for b in ex.break_reasons]
        assert 'nano_jepa.attention_fwd' in str(ex.graphs[0].code)  # the kernel is in the graph, one opaque call

    eager, _ = model(jepa.Batch(x, torch.Generator(DEV).manual_seed(1), 0, 1.0))
    for net in (model.encoder, model.target, getattr(model, 'predictor', None), getattr(model, 'projector', None)):
        if net is not None:
            net.compile(backend='aot_eager', dynamic=True)
    compiled, _ = model(jepa.Batch(x, torch.Generator(DEV).manual_seed(1), 0, 1.0))
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=0)
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_train_with_compile_and_kernels(tiny_args, monkeypatch):
    """--compile=True --triton_kernels=True through the training loop (backend aot_eager on CPU)."""
    monkeypatch.setattr(torch.nn.Module, 'compile', functools.partialmethod(torch.nn.Module.compile, backend='aot_eager'))
    args = [a for a in tiny_args if not a.startswith('--triton_kernels')]
    cfg = jepa.parse_args(args + ['--steps=3', '--probe=False', '--compile=True', '--triton_kernels=True', '--batch_size=8'])
    model, _, stats = jepa.train(cfg)
    assert stats['steps'] == 3 and stats['final_loss'] == stats['final_loss']  # finite, not NaN


def test_lejepa_compiles_with_inductor_on_two_view_sizes(tiny_args):
    """--compile=True with the default backend (inductor) on LeJEPA's global (32 px) and local (16 px) views: its
    channels-last rewrite of the patch-embedding conv kept the first size's strides as constants and the
    backward of the second size failed (an assert_size_stride error) until the rewrite was switched off."""
    args = [a for a in tiny_args if not a.startswith(('--img_size', '--triton_kernels'))]
    cfg = jepa.parse_args(args + ['--img_size=32', '--method=lejepa', '--local_views=1', '--steps=2', '--probe=False',
                                  '--compile=True', '--triton_kernels=False', '--batch_size=8'])
    _, _, stats = jepa.train(cfg)
    assert stats['steps'] == 2


def test_every_operators_fallback_matches_its_fake_implementation(monkeypatch):
    """After a Triton error each custom operator computes in PyTorch; inductor checks that output against the
    sizes and strides the fake implementation promised, so the two must agree exactly, output by output."""
    import kernels
    from kernels import attention as KA, sigreg as KS
    from torch._subclasses.fake_tensor import FakeTensorMode
    monkeypatch.setattr(kernels, 'failed', {'attention': RuntimeError('off'), 'sigreg': RuntimeError('off')})
    g = torch.Generator().manual_seed(0)
    B, H, N, d = 2, 3, 7, 16
    q, k, v, do = (torch.randn(B, H, N, d, generator=g, dtype=torch.bfloat16) for _ in range(4))
    pos, seg = torch.randint(0, 4, (B, N, 2), generator=g), torch.tensor([0, 0, 0, 1, 1, 2, 2])
    y = torch.randn(50, 6, generator=g)
    o, lse = KA.attention_fwd(q, k, v, pos, seg)
    calls = {'attention_fwd': (KA.attention_fwd, (q, k, v, pos, seg)),
             'attention_bwd': (KA.attention_bwd, (q, k, v, pos, seg, o, lse, do)),
             'cf_sums_fwd': (KS.cf_sums_fwd, (y, 17, 3 / 16)),
             'cf_sums_bwd': (KS.cf_sums_bwd, (y, torch.randn(6, 17, generator=g), torch.randn(6, 17, generator=g), 3 / 16))}
    for name, (op, args) in calls.items():
        real = op(*args)
        mode = FakeTensorMode()
        with mode:
            fake = op(*[mode.from_tensor(a) if torch.is_tensor(a) else a for a in args])
        real, fake = (r if isinstance(r, tuple) else (r,) for r in (real, fake))
        assert len(real) == len(fake), name
        for r, f in zip(real, fake):
            assert (r.shape, r.dtype, r.stride()) == (f.shape, f.dtype, f.stride()), (name, r.shape, f.shape, r.stride(), f.stride())


def test_a_triton_error_mid_run_under_inductor_falls_back_and_finishes(tiny_args, tmp_path, monkeypatch, capfd):
    """--compile=True with inductor (the default backend) and the kernels on: after the start-up self-test passes,
    the attention kernel raises a Triton error at its first training launch, inside the compiled graph. One
    warning, the run finishes, and its losses are those of an eager run on the PyTorch path."""
    import json
    import kernels
    from kernels import attention as KA
    from triton.runtime.errors import OutOfResources

    class Raising:
        def __getitem__(self, grid):
            def launch(*args, **meta):
                raise OutOfResources(300_000, 232_448, 'shared memory')
            return launch

    real_self_test = kernels.self_test

    def self_test_then_break(*args, **kwargs):
        out = real_self_test(*args, **kwargs)
        monkeypatch.setattr(KA, '_attn_fwd', Raising())  # from the first training step on
        return out
    monkeypatch.setattr(kernels, 'self_test', self_test_then_break)
    monkeypatch.setattr(kernels, 'failed', {})
    args = [a for a in tiny_args if not a.startswith(('--out_dir', '--triton_kernels', '--batch_size'))]
    args += ['--method=ijepa', '--steps=2', '--log_every=1', '--probe=False', '--batch_size=8']

    def losses(tag, *extra):
        jepa.train(jepa.parse_args(args + [f'--out_dir={tmp_path / tag}', *extra]))
        with open(tmp_path / tag / 'log.jsonl') as f:
            return [json.loads(line)['loss'] for line in f]
    compiled = losses('compiled', '--compile=True', '--triton_kernels=True')
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith('warning: Triton')]
    assert len(warnings) == 1 and 'attention kernel failed (forward' in warnings[0], warnings
    eager = losses('eager', '--triton_kernels=False')
    assert len(compiled) == 2 and compiled == pytest.approx(eager, rel=1e-4)
