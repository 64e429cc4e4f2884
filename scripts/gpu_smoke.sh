#!/usr/bin/env bash
# GPU smoke test (one CUDA GPU, under 8 minutes): two vLLM engines opened and closed in turn on
# the same GPU, 10 bf16 SFT steps with gradient checkpointing through the launcher, and bf16
# gradients with the dense projection, on random-init models with the paper's shapes.
# Prints one line per check with its figure. Needs `bash scripts/setup.sh` on the GPU machine
# first (it installs the `gpu` extra: vllm, deepspeed, NVML bindings).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 "$PY" scripts/gpu_smoke.py "$@"
