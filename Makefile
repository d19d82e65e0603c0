# nano-jepa. `make run` trains on the embedded data; `make test` runs the suite; `make bench` times kernels; `make compile-check` shows what the GPU compiler makes of them.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install install-test run test bench compile-check

install:  ## runtime packages; keeps an importable torch as it is; triton only where it installs
	@$(PYTHON) -c "import torch" 2>/dev/null && echo "torch $$($(PYTHON) -c 'import torch; print(torch.__version__)') already installed" || $(PIP) torch
	@$(PIP) numpy pillow
	@$(PYTHON) -c "import triton" 2>/dev/null || $(PIP) triton || echo "triton did not install: the PyTorch reference paths will be used"

install-test: install
	@$(PIP) pytest hypothesis

run: install
	$(PYTHON) jepa.py

test: install-test
	$(PYTHON) -m pytest -q tests

bench: install  ## IJEPA=path/to/facebookresearch/ijepa puts the official code beside ours
	$(PYTHON) tests/bench_masks.py $(if $(IJEPA),--ijepa=$(IJEPA))
	$(PYTHON) tests/bench_ijepa_step.py $(if $(IJEPA),--ijepa=$(IJEPA))
	$(PYTHON) tests/bench_train_step.py
	$(PYTHON) -c "import kernels.sigreg as k; k.bench()"
	$(PYTHON) -c "import kernels.attention as k; k.bench()"

compile-check: install  ## registers, spills and shared memory of every kernel launch for sm_80 and sm_90 (no GPU needed)
	$(PYTHON) -m kernels.compile_check
