# `make demo` and `make test` start from nothing: they create .venv and install
# everything Cordon needs (re-created whenever pyproject.toml changes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint typecheck unit bench serve prepare preflight template policy clean lock

$(STAMP): pyproject.toml requirements.lock requirements-checkov.lock
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e '.[dev]'
	$(BIN)/python -m pip check
	# checkov lints the generated templates in the tests; its pins need a venv of its own.
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet -r requirements-checkov.lock
	$(VENV)/checkov/bin/python -m pip check
	touch $(STAMP)

# Re-resolve pyproject.toml's dependencies and write the exact versions to the lock.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --quiet --upgrade pip
	.venv-lock/bin/python -m pip install --quiet '.[dev]'
	{ sed -n '1,3p' requirements.lock; .venv-lock/bin/python -m pip freeze --exclude-editable \
	  | grep -v '^cordon'; } > requirements.lock.new && mv requirements.lock.new requirements.lock
	rm -rf .venv-lock

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m bot sandbox

# The type check runs beside the tests (each prints its output when it has finished).
test: lint
	@$(MAKE) --no-print-directory -j2 --output-sync=target typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check bot playbooks handlers sandbox tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	@$(BIN)/pytest -n 4; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure here"; fi; \
	exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/time_to_isolate.py
	$(BIN)/python benchmarks/open_window.py
	$(BIN)/python benchmarks/status_scan.py
	$(BIN)/python benchmarks/fleet.py

serve: $(STAMP)
	$(BIN)/python -m bot serve

prepare: $(STAMP)
	$(BIN)/python -m bot prepare

preflight: $(STAMP)
	@$(BIN)/python -m bot preflight

# The central stack's template on stdout (`make -s template > cordon.json`).
template: $(STAMP)
	@$(BIN)/python -m bot template

policy: $(STAMP)
	@$(BIN)/python -m bot policy

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
