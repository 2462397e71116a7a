# Both targets set up .venv themselves, so they work on a machine with only Python.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint bench clean constraints pool-start pool-stop

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

# Beam's SDK worker pool (the harness Dataflow runs), for rehearsing a cluster run on this
# machine: `make pool-start`, then any stage with
#   --environment_type EXTERNAL --environment_config 127.0.0.1:$(POOL_PORT) --direct_num_workers 4
# (several workers per stage), or --runner PortableRunner --job_endpoint embed plus the same
# two environment flags (one worker per job). The project's bin/ goes first on PATH: the pool
# starts each worker with the `python` it finds there.
POOL_PORT ?= 50000
POOL_DIR ?= runs/pool
pool-start: $(STAMP)
	mkdir -p $(POOL_DIR)
	PATH="$(abspath $(BIN)):$$PATH" nohup $(abspath $(BIN))/python -m apache_beam.runners.worker.worker_pool_main \
		--service_port=$(POOL_PORT) > $(POOL_DIR)/pool.log 2>&1 & echo $$! > $(POOL_DIR)/pool.pid
	@echo "worker pool on 127.0.0.1:$(POOL_PORT) (pid $$(cat $(POOL_DIR)/pool.pid), log $(POOL_DIR)/pool.log)"

pool-stop:
	@if [ -f $(POOL_DIR)/pool.pid ]; then kill $$(cat $(POOL_DIR)/pool.pid) && rm $(POOL_DIR)/pool.pid \
		&& echo "worker pool stopped"; else echo "no pool running (no $(POOL_DIR)/pool.pid)"; fi

clean:
	rm -rf runs build dist *.egg-info
