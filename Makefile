# `make train`: set up .venv and train Dreamer on walker walk with the paper defaults.
# `make test`: set up .venv with the optional Atari extra and run the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ATARI_STAMP := $(VENV)/.installed-atari
TASK ?= dmc_walker_walk
LOGDIR ?= logdir/$(TASK)/dreamer/0

.PHONY: setup train test benchmark

setup: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	touch $(STAMP)

$(ATARI_STAMP): $(STAMP) requirements-atari.txt
	$(PY) -m pip install --quiet -r requirements-atari.txt
	touch $(ATARI_STAMP)

train: $(STAMP)
	$(PY) dreamer.py --logdir $(LOGDIR) --task $(TASK)

test: $(STAMP) $(ATARI_STAMP)
	$(PY) -m pytest

benchmark: $(STAMP)
	$(PY) scripts/benchmark.py --quick
