# selfsup — every target creates the virtual environment if it is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: demo test test-slow lint bench bench-methods venv clean

demo: $(STAMP)
	$(BIN)/selfsup demo

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/pytest -q -m "not slow" tests

# the learning tests marked slow (training runs of 30-100 s each, about 4 minutes in all)
test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow tests

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]' || echo "lightly not installable: benchmarks run selfsup only"
	$(BIN)/python benchmarks/run.py --out docs/benchmarks.md

# every registered method (selfsup vs lightly where lightly has it); METHODS="byol dino" picks some,
# SELFSUP_LIGHTLY_PYTHON=/path/to/python runs the lightly rows in another environment
bench-methods: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]' || echo "lightly not installable: lightly rows need SELFSUP_LIGHTLY_PYTHON"
	$(BIN)/python benchmarks/methods.py --out docs/benchmarks.md $(if $(METHODS),--methods $(METHODS))

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
