"""Load the system OpenBLAS before mlx, on Linux.

The Linux ``mlx-cpu`` wheel links the reference (netlib) BLAS: a float32
2048x2048 matmul runs at ~3-5 GFLOPS. Loading Debian's ``libopenblas0-pthread``
with ``RTLD_GLOBAL`` *before* mlx is imported makes mlx resolve ``sgemm`` and
friends to OpenBLAS instead (~125-300 GFLOPS on the same machine). This module
does that once, at package import, and reports what is in use.

Set ``SUPERCAL_NO_OPENBLAS=1`` to turn it off; ``SUPERCAL_OPENBLAS=/path/lib.so``
picks another library. On macOS nothing is loaded: MLX uses Metal and Accelerate.
"""

from __future__ import annotations

import ctypes
import os
import sys

DISABLE_ENV = "SUPERCAL_NO_OPENBLAS"
PATH_ENV = "SUPERCAL_OPENBLAS"

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

_state: dict[str, str | None] = {"path": None, "note": None}


def preload() -> str | None:
    """Load OpenBLAS globally if possible; return its path (or None). Idempotent."""
    if _state["path"] is not None or _state["note"] is not None:
        return _state["path"]
    if not sys.platform.startswith("linux"):
        _state["note"] = "not Linux: MLX uses Accelerate/Metal"
        return None
    if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
        _state["note"] = f"disabled by {DISABLE_ENV}"
        return None
    if "mlx.core" in sys.modules:
        _state["note"] = "mlx was imported before supercal_mlx; OpenBLAS not loaded"
        return None
    wanted = os.environ.get(PATH_ENV)
    for path in ((wanted,) if wanted else _CANDIDATES):
        if os.path.exists(path):
            try:
                ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            except OSError as e:  # a broken library must not break the package
                _state["note"] = f"could not load {path}: {e}"
                return None
            _state["path"] = path
            return path
    _state["note"] = "no system OpenBLAS found (Debian: apt-get install libopenblas0-pthread)"
    return None


def describe() -> str:
    """One line: which BLAS mlx uses in this process."""
    if _state["path"]:
        return f"OpenBLAS ({_state['path']})"
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    return f"MLX bundled reference BLAS ({_state['note']})"
