# Quick start: `make demo` (pretrain + linear eval on the offline digits; `make demo
# METHOD=byol` for another method), `make test`.
PYTHON ?= python3
VENV ?= .venv
METHOD ?= simclr
WORKDIR ?= /tmp/simclr_demo$(if $(filter-out simclr,$(METHOD)),_$(METHOD))
PY := $(VENV)/bin/python

.PHONY: demo test test-slow bench clean-demo

$(VENV)/.installed: requirements.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 needed: make PYTHON=python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) main.py --config=configs/demo.py:$(METHOD) --workdir=$(WORKDIR) --mode=pretrain
	$(PY) main.py --config=configs/demo.py:$(METHOD) --workdir=$(WORKDIR) --mode=linear_eval

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

clean-demo:
	rm -rf $(WORKDIR)
