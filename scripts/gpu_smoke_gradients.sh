#!/usr/bin/env bash
# GPU smoke check of gradient extraction at Qwen2.5-0.5B scale (random-init weights, nothing
# downloaded): samples/s of batched per-sample gradients in bf16 autocast with the dense
# Rademacher projection, and the projection's ms per sample. Goals: >= 25 samples/s on one
# H100-class GPU, projection < 30 ms per sample. Then the memory budget at 4096-token samples
# (MEMORY_GB, default 24): peak allocated GPU memory against the budget. Writes
# benchmarks/results/gpu_gradients.{json,md} and gpu_gradient_memory.{json,md} (or into $OUT
# when set) and exits 1 when a goal is missed. Needs only torch, transformers, numpy and scipy.
#
#   bash scripts/gpu_smoke_gradients.sh [extra args for benchmarks.bench_gpu_gradients]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "[gpu_smoke_gradients] no CUDA device visible to torch: nothing to measure" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
out_args=()
if [ -n "${OUT:-}" ]; then out_args=(--out "$OUT"); fi
"$PY" -m benchmarks.bench_gpu_gradients --device cuda --batch-size "${BATCH_SIZE:-32}" --n "${N:-256}" \
  --tokens 200 --check "${out_args[@]}" "$@"
"$PY" -m benchmarks.bench_gpu_gradients --device cuda --tokens 4096 --n 12 --memory-gb "${MEMORY_GB:-24}" \
  --check "${out_args[@]}"
