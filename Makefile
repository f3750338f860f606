# `make demo` and `make test` start from nothing: they create .venv and install
# everything Cordon needs (re-created whenever pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench serve prepare clean

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bot sandbox

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check bot playbooks handlers tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	@$(BIN)/pytest -n 4; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; fi; \
	exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/time_to_isolate.py
	$(BIN)/python benchmarks/open_window.py

serve: $(STAMP)
	$(BIN)/python -m bot serve

prepare: $(STAMP)
	$(BIN)/python -m bot prepare

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
