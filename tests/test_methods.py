"""Methods as records: the README's "Adding a method" example trains as written, and the training loop, the
optimizer and the logger never read a method's name."""
import inspect
import json
import os
import re

import pytest
import torch

import jepa
from conftest import ROOT


def readme_example():
    """The python block of the README's "Adding a method" section."""
    text = open(os.path.join(ROOT, 'README.md')).read()
    section = text.split('## Adding a method', 1)[1]
    return re.search(r'```python\n(.*?)```', section, re.S)[1]


def test_the_readme_example_adds_a_method_that_trains(tiny_args, capsys):
    try:
        check_readme_example(tiny_args, capsys)
    finally:
        jepa.METHODS.pop('vicreg', None)


def check_readme_example(tiny_args, capsys):
    exec(compile(readme_example(), 'README.md', 'exec'), {'__name__': 'my_method'})  # not __main__: no run yet
    assert 'vicreg' in jepa.METHODS
    argv = tiny_args + ['--method=vicreg', '--steps=4', '--log_every=2', '--probe=False']
    with pytest.raises(SystemExit):
        jepa.parse_args(argv + ['-h'])
    assert '--lr=0.0005' in capsys.readouterr().out  # the record's own value, shown by -h
    model, _, stats = jepa.train(jepa.parse_args(argv))
    assert not hasattr(model, 'predictor') and model.target is None and hasattr(model, 'projector')
    with open(os.path.join(stats['run_dir'], 'log.jsonl')) as f:
        rec = [json.loads(line) for line in f][-1]
    assert {'inv', 'var', 'cov'} <= set(rec) and all(torch.isfinite(torch.tensor(rec[k])) for k in ('inv', 'var', 'cov'))


@pytest.mark.parametrize('fn', [jepa.train, jepa.start_run, jepa.make_optimizer, jepa.set_schedules, jepa.log_step,
                                jepa.save_run, jepa.JEPA.__init__, jepa.self_test_kernels])
def test_the_loop_and_its_helpers_name_no_method(fn):
    source = inspect.getsource(fn)
    assert not [m for m in jepa.METHODS if f"'{m}'" in source], source
