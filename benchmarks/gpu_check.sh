#!/usr/bin/env bash
# GPU check, under 5 minutes: GPU-marked tests (CPU-vs-GPU logits, bf16/fp16/auto training steps), then the
# core benchmark's shapes on the GPU. Run on a machine with CUDA:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
$PY - <<'PY'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PY
$PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
$PY benchmarks/bench_core.py --device cuda --seconds 8 --rounds 1 --out "${OUT:-/tmp}/core_gpu.json"
