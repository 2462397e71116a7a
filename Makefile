# Both targets set up .venv themselves, so they work on a machine with only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel

$(STAMP): $(BIN)/python setup.py constraints.txt
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/zhclip demo --output runs/demo

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Pin what the tests ran on: upgrade the env, run `make test`, then `make constraints`.
constraints: $(STAMP)
	$(BIN)/pip freeze --exclude-editable | grep -iv '^zhclip[= @]' > constraints.txt

clean:
	rm -rf runs build dist *.egg-info
