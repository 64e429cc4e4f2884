#!/usr/bin/env bash
# GPU smoke test (one CUDA GPU, under 10 minutes): two vLLM engines opened and closed in turn on
# the same GPU, 10 bf16 SFT steps with gradient checkpointing through the launcher, bf16
# gradients with the dense projection, and the gradient memory budget at 4096 tokens (peak GPU
# memory against the budget), on random-init models with the paper's shapes. Prints one line
# per check with its figure. Needs torch, transformers and numpy/scipy; SFT also trl, datasets
# and accelerate; the engine checks print "skipped: vllm not installed" without vLLM (the
# project's `gpu` extra installs it). PYTHON picks the interpreter (default .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 600 "$PY" scripts/gpu_smoke.py "$@"
