# `make demo` and `make test` create .venv (Python >= 3.12) on first use.
.PHONY: demo test lint env bench clean

export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
PY := .venv/bin/python

env:
	@scripts/bootstrap.sh

demo: env
	@scripts/demo.sh

test: env
	@scripts/ensure_postgres.sh
	$(PY) -m pytest -q

lint: env
	.venv/bin/ruff check .

bench: env
	$(PY) benchmarks/db_write.py

clean:
	rm -rf .venv runinfo alflow-demo .pytest_cache
