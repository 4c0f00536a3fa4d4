#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): a 124M bf16 compiled fit with MFU, window-256 vs full attention at
# T = 8192, FSDP2 on one device with a resume, bf16 decode — one markdown table, at most 8 minutes, no network;
# then the CUDA-only tests (`pytest -m gpu`, skipped everywhere else), at most 100 s more.
# Needs a CUDA build of torch and the package installed (pip install -e '.[dev]'). Usage: bash benchmarks/gpu_check.sh
# Arguments go to gpu_check.py. Exit status: the check's if it failed, else the tests'.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
check=0
timeout 480 python benchmarks/gpu_check.py "$@" || check=$?
echo
echo "### CUDA-only tests (python -m pytest -q -m gpu tests)"
tests=0
timeout 100 python -m pytest -q -m gpu tests || tests=$?
if [ "$tests" -eq 5 ]; then
    echo "no test is marked gpu: the CUDA-only tests ran nowhere" >&2
fi
[ "$check" -eq 0 ] && exit "$tests" || exit "$check"
