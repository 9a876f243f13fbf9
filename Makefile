# The two commands of the README. Both set up the virtual environment first (idempotent).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The faiss build, an exclusive choice (pyproject extras `cpu` or `gpu`): `make setup FAISS=gpu` on a CUDA host
# (setup uninstalls the other build first: the two wheels write the same `faiss` module).
FAISS ?= cpu
# pyproject.toml gives version ranges; constraints.txt pins the tested versions exactly.
STAMP := $(VENV)/.installed-$(FAISS)-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip uninstall --disable-pip-version-check -q -y $(if $(filter gpu,$(FAISS)),faiss-cpu,faiss-gpu) 2>/dev/null || true
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[$(FAISS),dev]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/l2g-stream demo

test: setup
	$(BIN)/ruff check l2g_core plugins stream tests bench
	$(BIN)/mypy
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
