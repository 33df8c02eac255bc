# Quick start: `make demo` (pretrain + linear eval on the offline digits; `make demo
# METHOD=byol` for another method), `make test`.
# Any Python the pinned requirements support (3.11-3.13): the first found, or `make PYTHON=...`.
SUPPORTED_PYTHONS := 3.11 3.12 3.13
PYTHON ?= $(firstword $(foreach v,$(SUPPORTED_PYTHONS),$(shell command -v python$(v))) python3)
VENV ?= .venv
METHOD ?= simclr
# MODEL=vit: the demo on a tiny ViT instead of the ResNet.
MODEL ?=
comma := ,
DEMO_ARG := $(METHOD)$(if $(MODEL),$(comma)$(MODEL))
WORKDIR ?= /tmp/simclr_demo$(if $(filter-out simclr,$(METHOD)),_$(METHOD))$(if $(MODEL),_$(MODEL))
PY := $(VENV)/bin/python

.PHONY: demo test test-e2e test-slow check-demos clean-demo

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; v = "%d.%d" % sys.version_info[:2]; sys.exit(0 if v in "$(SUPPORTED_PYTHONS)".split() else "Error: $(PYTHON) is Python " + v + "; requirements.txt is pinned for Python $(SUPPORTED_PYTHONS): make PYTHON=python3.12 (any of them), or install one.")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) main.py --config=configs/demo.py:$(DEMO_ARG) --workdir=$(WORKDIR) --mode=pretrain
	$(PY) main.py --config=configs/demo.py:$(DEMO_ARG) --workdir=$(WORKDIR) --mode=linear_eval

# Two pytest-xdist workers: one pytest process compiles on about one core.
JOBS ?= 2
XDIST := -n $(JOBS)

# The default suite (<= 6 minutes on 2 cores): every folder of tests/ but e2e/, not `slow`.
# LLVM without optimisation: its programs are tiny and run once or twice, so compiling is what
# costs (443 s serial at XLA's default level, 378 s at 0; the HLO the tests check is the same).
# Not for the slow tier: its hundreds of training steps run far slower unoptimised.
test: $(VENV)/.installed
	XLA_FLAGS="$(XLA_FLAGS) --xla_backend_optimization_level=0" $(PY) -m pytest -q $(XDIST) --dist loadfile

# Subprocesses and several processes (tests/e2e/), not `slow`.
test-e2e: $(VENV)/.installed
	$(PY) -m pytest -q $(XDIST) --dist loadfile -m "e2e and not slow"

# The heavier checks, among them every method's short learning check (tests/e2e/learning_test.py);
# tests that share a module's runs form an xdist group.
test-slow: $(VENV)/.installed
	$(PY) -m pytest -q $(XDIST) --dist loadgroup -m slow

# Every method's full demo against its targets, one table (docs/development.md: when to run it).
# MODEL=vit: the ViT demos' rows (configs/demo.py:METHOD,vit).
check-demos: $(VENV)/.installed
	$(PY) benchmarks/check_demos.py $(if $(SEEDS),--seeds=$(SEEDS)) $(if $(MODEL),--model=$(MODEL))

clean-demo:
	rm -rf $(WORKDIR)
