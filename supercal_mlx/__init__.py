"""supercal-mlx: teach a language model to forget a word with MLX, and watch what it does instead.

Importing the package loads the system OpenBLAS (Linux) before anything imports
mlx; see :mod:`supercal_mlx._blas`, and silences transformers' advice that
PyTorch is missing (only its tokenizers are used). Nothing else happens at import time.
"""

from __future__ import annotations

import os as _os

from ._blas import preload as _preload_blas

__version__ = "0.1.0"

_preload_blas()
# mlx-lm loads tokenizers through transformers, which warns on import that PyTorch is missing; we never need it.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
