"""jepa.py's training step through the Triton kernels (compiled on a GPU; without one, on CPU in Triton's
interpreter, set in conftest.py): every method trains through them and logs the losses of the PyTorch path; a
kernel that fails to compile or launch, or fails the start-up self-test, costs one warning line, not the run."""
import json
import subprocess
from collections import Counter

import pytest

import jepa
from conftest import DEV, LOSS_RTOL

pytest.importorskip('triton', reason='triton is not installed (make install adds it where it installs)')
import kernels  # noqa: E402
from kernels import attention as KA, sigreg as KS  # noqa: E402
from triton.runtime.errors import OutOfResources  # noqa: E402

KERNELS = {KA: ('_attn_fwd', '_attn_bwd_dkdv', '_attn_bwd_dq'), KS: ('_cf_sums_fwd', '_cf_sums_bwd')}
EXTRA = {'lejepa': ['--local_views=1']}


class Counted:
    """A kernel that counts its launches and then runs as usual (or raises `error`, if given)."""
    def __init__(self, fn, name, counts, error=None):
        self.fn, self.name, self.counts, self.error = fn, name, counts, error

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.counts[self.name] += 1
            if self.error is not None:
                raise self.error
            return self.fn[grid](*args, **meta)
        return launch


@pytest.fixture
def counts(monkeypatch):
    """Launches per kernel during the test; also forgets earlier kernel failures."""
    c = Counter()
    for module, names in KERNELS.items():
        for name in names:
            monkeypatch.setattr(module, name, Counted(getattr(module, name), name, c))
    monkeypatch.setattr(kernels, 'failed', {})
    return c


def logged(tiny_args, method, use_kernels, tmp_path, tag):
    args = [a for a in tiny_args if not a.startswith(('--out_dir', '--triton_kernels'))]
    cfg = jepa.parse_args(args + [f'--method={method}', '--steps=3', '--log_every=1', '--probe=False', '--batch_size=8',
                                  f'--triton_kernels={use_kernels}', f'--out_dir={tmp_path / tag}'] + EXTRA.get(method, []))
    jepa.train(cfg)
    with open(tmp_path / tag / 'log.jsonl') as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize('method', jepa.METHODS)
def test_every_method_trains_through_the_kernels_with_the_same_losses(tiny_args, tmp_path, counts, method):
    plain = logged(tiny_args, method, False, tmp_path, 'plain')
    assert sum(counts.values()) == 0, counts
    fused = logged(tiny_args, method, True, tmp_path, 'fused')
    uses_sigreg = method in ('lejepa', 'ijepa_sigreg')
    for name in ('_attn_fwd', '_attn_bwd_dkdv', '_attn_bwd_dq') + (('_cf_sums_fwd', '_cf_sums_bwd') if uses_sigreg else ()):
        assert counts[name] > 0, (name, counts)
    assert len(plain) == len(fused) == 3
    for a, b in zip(plain, fused):
        for key in ('loss', 'pred', 'inv', 'sigreg', 'infonce', 'kl'):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=LOSS_RTOL, abs=1e-6), (key, a[key], b[key])


@pytest.mark.parametrize('broken', ['_attn_bwd_dq', '_cf_sums_fwd'])
def test_a_failing_kernel_falls_back_to_pytorch_with_one_warning(tiny_args, tmp_path, counts, monkeypatch, capfd, broken):
    """The kernel raises what Triton raises when a launch needs more shared memory than the card has: the run
    goes on, prints one warning naming the kernel family and configuration, and matches the PyTorch run."""
    module = KA if broken.startswith('_attn') else KS
    monkeypatch.setattr(module, broken, Counted(getattr(module, broken).fn, broken, counts,
                                                OutOfResources(300_000, 232_448, 'shared memory')))
    plain = logged(tiny_args, 'ijepa_sigreg', False, tmp_path, 'plain')
    fused = logged(tiny_args, 'ijepa_sigreg', True, tmp_path, 'fused')
    err = capfd.readouterr().err
    family = 'attention' if module is KA else 'sigreg'
    warnings = [line for line in err.splitlines() if line.startswith('warning: Triton')]
    assert len(warnings) == 1 and f'Triton {family} kernel failed' in warnings[0] and 'OutOfResources' in warnings[0], err
    assert 'using the PyTorch path for the rest of the run' in warnings[0]
    assert counts[broken] == 1  # tried once; every later call went straight to PyTorch
    assert family in kernels.failed
    for a, b in zip(plain, fused):
        assert b['loss'] == pytest.approx(a['loss'], rel=LOSS_RTOL), (a, b)


class WrongResult:
    """A kernel that runs and then corrupts its output args[out] (as a miscompiled kernel would): only a
    comparison with the reference sees it."""
    def __init__(self, fn, name, counts, out):
        self.fn, self.name, self.counts, self.out = fn, name, counts, out

    def __getitem__(self, grid):
        def launch(*args, **meta):
            self.counts[self.name] += 1
            self.fn[grid](*args, **meta)
            args[self.out].add_(1.0)
        return launch


@pytest.mark.parametrize('error', [RuntimeError('Failed to find C compiler. Please specify via CC environment variable.'),
                                   subprocess.CalledProcessError(1, ['gcc', 'cuda_utils.c']),
                                   AssertionError('libcuda.so cannot found!'), 'wrong result'])
@pytest.mark.parametrize('family', ['attention', 'sigreg'])
def test_a_failing_self_test_gives_one_warning_and_a_pytorch_run(tiny_args, tmp_path, counts, monkeypatch, capfd, error, family):
    """What a real first launch can raise besides Triton's own errors -- no C compiler to build the launcher, the
    compiler failing, no libcuda -- or a kernel that runs but computes nonsense: the start-up self-test catches
    it, prints one warning naming the family, and the run trains on the PyTorch path with its losses."""
    module, name, out = (KA, '_attn_fwd', 5) if family == 'attention' else (KS, '_cf_sums_fwd', 1)  # o, part_c
    real = getattr(module, name).fn
    broken = WrongResult(real, name, counts, out) if error == 'wrong result' else Counted(real, name, counts, error)
    monkeypatch.setattr(module, name, broken)
    plain = logged(tiny_args, 'ijepa_sigreg', False, tmp_path, 'plain')
    fused = logged(tiny_args, 'ijepa_sigreg', True, tmp_path, 'fused')
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith('warning: Triton')]
    assert len(warnings) == 1 and f'Triton {family} kernel failed (self-test on {DEV})' in warnings[0], err
    assert ('AssertionError' if error == 'wrong result' else type(error).__name__) in warnings[0]
    assert counts[name] == 1  # the self-test's launch only: training went straight to PyTorch
    assert set(kernels.failed) == {family}
    other = ('_cf_sums_fwd', '_cf_sums_bwd') if family == 'attention' else ('_attn_fwd', '_attn_bwd_dq')
    assert all(counts[n] > 1 for n in other), counts  # the other family still ran its kernels
    for a, b in zip(plain, fused):
        assert b['loss'] == pytest.approx(a['loss'], rel=LOSS_RTOL), (a, b)


class Specialised:
    """A kernel that runs as usual and writes down what Triton compiles each launch to: its constexpr and option
    keywords, the dtype of each tensor and the class of each specialised int (1, divisible by 16, other)."""
    def __init__(self, fn, name, log):
        self.fn, self.name, self.log = fn, name, log

    def __getitem__(self, grid):
        def launch(*args, **meta):
            free = set(self.fn.kwargs.get('do_not_specialize') or ())
            ints = tuple((n, a == 1, a % 16 == 0) for n, a in zip(self.fn.arg_names, args)
                         if isinstance(a, int) and not isinstance(a, bool) and n not in free)
            self.log.append((self.name, str(sorted(meta.items())), ints, tuple(str(a.dtype) for a in args if hasattr(a, 'dtype'))))
            return self.fn[grid](*args, **meta)
        return launch


@pytest.mark.parametrize('method,dims', [
    ('ijepa_sigreg', ['--width=48', '--heads=2', '--pred_width=24', '--pred_heads=1']),  # head dims 24, 24
    ('ijepa', ['--width=96', '--heads=2', '--pred_width=16', '--pred_heads=2']),         # 48, 8
    ('lejepa', ['--width=16', '--heads=2', '--proj_dim=8']),                             # 8
])
def test_head_dims_off_the_tile_widths_train_and_the_self_test_covers_every_launch(tiny_args, tmp_path, monkeypatch, method, dims):
    """Head dims 8, 24 and 48 (tiles of 16, 32 and 64 with channels masked) train through the kernels with the
    PyTorch path's losses, and every kernel the run compiles -- block sizes, warps, dtypes, the strides' 16-byte
    classes over the changing context lengths -- was already run by the start-up self-test against the reference."""
    log = []
    for module, names in KERNELS.items():
        for name in names:
            monkeypatch.setattr(module, name, Specialised(getattr(module, name), name, log))
    monkeypatch.setattr(kernels, 'failed', {})
    tested = []
    real_self_test = kernels.self_test

    def self_test(*args, **kwargs):
        out = real_self_test(*args, **kwargs)
        tested.extend(log)
        log.clear()
        return out
    monkeypatch.setattr(kernels, 'self_test', self_test)
    args = [a for a in tiny_args if not a.startswith(('--width', '--heads', '--pred_width', '--pred_heads', '--img_size'))]
    args += ['--img_size=24', '--steps=4', '--log_every=2'] + dims  # 16-px crops, then 24: sequences of 1 to 36
    plain = logged(args, method, False, tmp_path, 'plain')
    fused = logged(args, method, True, tmp_path, 'fused')
    assert not kernels.failed and tested and log
    assert {name for name, *_ in log} >= {'_attn_fwd', '_attn_bwd_dkdv', '_attn_bwd_dq'}
    untested = set(log) - set(tested)
    assert not untested, sorted(untested)[:3]
    for a, b in zip(plain, fused):
        assert b['loss'] == pytest.approx(a['loss'], rel=LOSS_RTOL), (a, b)


def test_a_head_dim_the_kernels_cannot_take_is_decided_at_start_up(tiny_args, tmp_path, counts, capfd):
    """d = 132 (> 128, the widest tile) with the kernels on: one warning from the start-up self-test, before any
    launch, and the run trains on the PyTorch path, where it used to raise at its first step."""
    args = [a for a in tiny_args if not a.startswith(('--width', '--heads'))] + ['--width=132', '--heads=1']
    logged(args, 'ijepa', True, tmp_path, 'wide')
    warnings = [line for line in capfd.readouterr().err.splitlines() if line.startswith('warning: Triton')]
    assert len(warnings) == 1 and 'attention kernel failed (self-test' in warnings[0] and 'head dim 132' in warnings[0]
    assert sum(counts[n] for n in KERNELS[KA]) == 0 and set(kernels.failed) == {'attention'}
