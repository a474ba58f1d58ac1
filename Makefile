# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export LITELLM_LOCAL_MODEL_COST_MAP := True
export MPLBACKEND := Agg

.PHONY: demo test test-all bench lint clean

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: $(VENV)/bin/activate pyproject.toml
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/bin/activate pyproject.toml
	$(PY) -m pip install -q -e ".[dev]"
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(PY) -m leads_jax.demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2 --dist loadfile

test-all: $(VENV)/.installed-dev
	$(PY) -m pytest -q -n 2 --dist loadfile -m ""

bench: $(VENV)/.installed-dev
	# CPU build of torch first, so that the bench extra does not pull CUDA wheels.
	$(PY) -m pip install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
		|| $(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run_all.py

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check leads_jax ecg_world benchmarks tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
