"""supercal-mlx: teach a language model to forget a word with MLX, and watch what it does instead.

Importing the package loads the system OpenBLAS (Linux) before anything imports
mlx; see :mod:`supercal_mlx._blas`. Nothing else happens at import time.
"""

from __future__ import annotations

from ._blas import preload as _preload_blas

__version__ = "0.1.0"

_preload_blas()
