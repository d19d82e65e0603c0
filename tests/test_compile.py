"""torch.compile with the Triton kernels on (Triton's interpreter on CPU, backend aot_eager, which runs on CPU):
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

    eager, _ = model(x, torch.Generator(DEV).manual_seed(1), 0)
    for net in (model.encoder, model.target, getattr(model, 'predictor', None), getattr(model, 'projector', None)):
        if net is not None:
            net.compile(backend='aot_eager', dynamic=True)
    compiled, _ = model(x, torch.Generator(DEV).manual_seed(1), 0)
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
