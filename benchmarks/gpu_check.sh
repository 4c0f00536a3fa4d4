#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): a 124M bf16 compiled fit with MFU, window-256 vs full attention at
# T = 8192, FSDP2 on one device with a resume, bf16 decode — one markdown table, at most 8 minutes, no network.
# Needs a CUDA build of torch and the package installed (pip install -e .). Usage: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
exec timeout 480 python benchmarks/gpu_check.py "$@"
