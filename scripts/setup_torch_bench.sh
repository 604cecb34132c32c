#!/usr/bin/env bash
# Makes ./.venv-torch: PyTorch + transformers + peft from PyPI, for the PyTorch side of scripts/bench_step.py
# (never a dependency of supercal-mlx itself).
#   scripts/setup_torch_bench.sh                      the current torch from PyPI (on Linux x86 its wheel pulls in
#                                                     the CUDA runtime packages, ~3 GB; the benchmark uses the CPU)
#   TORCH_SPEC="torch==2.13.0+cpu" scripts/setup_torch_bench.sh   any pip requirement instead, e.g. a CPU-only wheel
# Then: .venv/bin/python scripts/bench_step.py --torch-python .venv-torch/bin/python
#   (or export SUPERCAL_TORCH_PYTHON=$PWD/.venv-torch/bin/python once).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-torch/bin/python ] || "$PY" -m venv .venv-torch
.venv-torch/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv-torch/bin/python -m pip install -q "${TORCH_SPEC:-torch}" transformers peft safetensors
.venv-torch/bin/python -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
