# `make demo` sets everything up and runs the main job; `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo inspect-demo test test-full bench lint

$(BIN)/.installed: pyproject.toml requirements-ci.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-ci.txt -e .
	touch $@

demo: $(BIN)/.installed
	$(BIN)/fxsurgeon demo --out out/demo --overwrite

inspect-demo: $(BIN)/.installed
	$(BIN)/fxsurgeon inspect torchvision:resnet50 --json out/resnet50.json --dot out/resnet50_layer1.dot --svg out/resnet50_layer1.svg \
		--only 'layer1*'

test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 -q

test-full: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2 -q --full

bench: $(BIN)/.installed
	$(BIN)/python bench/analysis.py

lint: $(BIN)/.installed
	$(BIN)/ruff check fxsurgeon tests bench examples
