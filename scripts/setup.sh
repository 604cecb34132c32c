#!/usr/bin/env bash
# Sets up supercal-mlx in ./.venv on a fresh machine (macOS or Debian/Ubuntu Linux).
#   scripts/setup.sh          the toolkit (+ plots)
#   scripts/setup.sh --dev    also the test tools
# On Linux, MLX's CPU wheel bundles a slow reference BLAS; the system OpenBLAS
# (libopenblas0-pthread) is ~25-60x faster for float32 matmuls, and supercal_mlx
# loads it automatically when present. We install it when we can (root + apt).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="plot"
[ "${1:-}" = "--dev" ] && extras="plot,dev"
if [ "$(uname -s)" = "Linux" ] && command -v apt-get >/dev/null 2>&1; then
  if ! ldconfig -p 2>/dev/null | grep -q "libopenblas.so.0"; then
    if [ "$(id -u)" = "0" ]; then
      (apt-get update -qq && apt-get install -y -qq libopenblas0-pthread >/dev/null) \
        || echo "setup: could not install libopenblas0-pthread; MLX will use its slow bundled BLAS" >&2
    else
      echo "setup: for fast CPU matmuls run: sudo apt-get install libopenblas0-pthread" >&2
    fi
  fi
fi
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e ".[$extras]"
