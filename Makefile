# nano-jepa. `make run` trains on the embedded data; `make test` runs the suite; `make bench` times kernels; `make compile-check` shows what the GPU compiler makes of them; `make cifar10|cifar100` downloads CIFAR into data/.
PYTHON ?= python3
# where `make cifar10|cifar100` downloads from, and the md5s torchvision checks
CIFAR_URL ?= https://www.cs.toronto.edu/~kriz
CIFAR_MD5_10 ?= c58f30108f718f92721af3b95e74349a
CIFAR_MD5_100 ?= eb9058c3a382ffc7106e4002c42a8d85
PIP = $(PYTHON) -m pip install -q --disable-pip-version-check

.PHONY: install install-test run test bench compile-check cifar10 cifar100

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

compile-check: install  ## registers, spills and shared memory of every kernel launch for sm_80, sm_86, sm_89, sm_90 (no GPU needed)
	$(PYTHON) -m kernels.compile_check

cifar10: data/cifar-10-python.tar.gz  ## download CIFAR-10 into data/, where --data=cifar10 looks for it
cifar100: data/cifar-100-python.tar.gz  ## the same for CIFAR-100

data/cifar-%-python.tar.gz:  ## md5 checked; nothing unverified is kept
	@mkdir -p data
	curl -fL -o $@.part $(CIFAR_URL)/$(notdir $@) || (rm -f $@.part; exit 1)
	@$(PYTHON) -c "import hashlib, sys; md5 = hashlib.md5(open('$@.part', 'rb').read()).hexdigest(); \
		sys.exit(md5 != '$(CIFAR_MD5_$*)' and 'error: $(notdir $@) came with md5 ' + md5 + ', not $(CIFAR_MD5_$*): try again')" \
		|| (rm -f $@.part; exit 1)
	@mv $@.part $@
