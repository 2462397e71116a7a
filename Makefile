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
	# cn-clip (its model code and evaluation scripts are test references) pins
	# lmdb==1.3.0, which has no wheel for this Python; it needs none of it here.
	$(BIN)/pip install -c constraints.txt --no-deps cn-clip==1.6.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/zhclip demo --output runs/demo

test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

# Upgrade to the newest versions setup.py allows and pin them; then `make test`
# and commit constraints.txt if it passes.
constraints: $(BIN)/python
	$(BIN)/pip install -U -e ".[dev]"
	$(BIN)/pip freeze --exclude-editable | grep -iv '^zhclip[= @]' > constraints.txt

clean:
	rm -rf runs build dist *.egg-info
