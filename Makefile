# Two commands do everything on a fresh machine; each sets up .venv first.
#   make demo   train on the shared benchmark, register in MLflow, replay on held-out prompts
#   make test   ruff, mypy (strict everywhere), the layer check (lint-imports) and the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
REQUIREMENTS := router_ml/resources/requirements.txt
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml $(REQUIREMENTS) | cksum | cut -d" " -f1)
# the CPU torch pin, from the one list of runtime dependencies
TORCH := $(shell grep '^torch==' $(REQUIREMENTS))

.PHONY: setup demo benchmark notebooks test lint clean

setup: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel. A looser pin would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	# setuptools tells every editable install, in a banner, that a folder named like the package shadows it; that is
	# the point of an editable install, so the notice is filtered out
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e ".[dev,scale]"
	rm -f $(VENV)/.installed-*
	touch $@

demo: setup
	$(BIN)/router-ml demo $(ARGS)

# The benchmark protocol (v2) on a full-information benchmark: 80/20 split by hash of prompt_id, operating points
# chosen on TRAIN (3 seeds x 3 folds), one replay on TEST, reference routers and the single-model hull, frontier
# plot. Outputs in .router-ml/bench/<benchmark>/. Another benchmark: make benchmark DATA=../shared/data/alpaca_eval.parquet
DATA ?= ../shared/data/mmlu_pro.parquet
BENCH = .router-ml/bench/$(basename $(notdir $(DATA)))
benchmark: setup
	$(BIN)/router-ml split --benchmark $(DATA) --train-out $(BENCH)/train.parquet --test-out $(BENCH)/test.parquet
	$(BIN)/router-ml benchmark --train $(BENCH)/train.parquet --test $(BENCH)/test.parquet \
		--json $(BENCH)/benchmark.json --plot $(BENCH)/frontier.png $(ARGS)

# Execute the notebooks on the shared benchmark and the local MLflow store, and render each with its figures to
# HTML in .router-ml/notebooks/ (about 3 minutes warm). Parameters pass through, e.g.
#   make notebooks NB_ARGS="-p POLICY champion"   or   NB_ARGS="-p LOGS my_logs.parquet"
NB_OUT := .router-ml/notebooks
notebooks: setup
	mkdir -p $(NB_OUT)
	for nb in counterfactual_savings policy_versions day_one; do \
		$(BIN)/papermill notebooks/$$nb.ipynb $(NB_OUT)/$$nb.ipynb $(NB_ARGS) && \
		$(BIN)/jupyter nbconvert --to html $(NB_OUT)/$$nb.ipynb || exit 1; \
	done

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

# two workers, a test file each at a time (a module's servers and fixtures stay on one worker); TEST_WORKERS=0 runs
# the suite in this process
TEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .router-ml .mypy_cache .ruff_cache .pytest_cache
