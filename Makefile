# The two commands a new user types: `make train` and `make test`.
# Both create .venv when it is missing and install the project (editable, with test extras).
PYTHON ?= python3
VENV ?= .venv
CONSTRAINTS ?= constraints.txt
PIP_CONSTRAINT_FLAG := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)
BIN := $(VENV)/bin
STAMP := $(VENV)/.lmvision-installed
# W&B never prompts: without credentials lmvision itself switches it to offline mode.
export WANDB_SILENT ?= true

.PHONY: train test test-fast install clean help

help:
	@echo "make train      install into $(VENV) and train the default experiment (shapes, image_classifier, small_cnn)"
	@echo "make test       install into $(VENV) and run the whole test suite (slow tests included)"
	@echo "make test-fast  the test suite without tests marked slow"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml $(CONSTRAINTS)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install $(PIP_CONSTRAINT_FLAG) -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m lmvision.train $(ARGS)

# files run in parallel, one worker per core (a file's tests stay together: they share fixtures)
PYTEST_WORKERS ?= auto
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf outputs multirun .pytest_cache
