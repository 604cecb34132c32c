"""Model folders: loading them with mlx-lm, with errors a user can act on.

The small GPT-J factories the demo and the tests use live in
:mod:`supercal_mlx.demo.factories`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SupercalError


def load(model_dir: str | os.PathLike, adapter_path: str | os.PathLike | None = None):
    """(model, tokenizer) from an MLX model folder, optionally with LoRA adapters applied."""
    path = Path(model_dir)
    if not path.is_dir():
        raise SupercalError(f"model folder {path} does not exist; convert a checkpoint first (supercal convert)")
    if not (path / "config.json").exists():
        raise SupercalError(f"{path} has no config.json; is it an MLX model folder (supercal convert writes one)?")
    if not list(path.glob("*.safetensors")):
        raise SupercalError(f"{path} has no *.safetensors weights; convert the checkpoint with supercal convert")
    if adapter_path is not None and not (Path(adapter_path) / "adapter_config.json").exists():
        raise SupercalError(f"{adapter_path} has no adapter_config.json; give a run folder written by supercal unlearn")
    from mlx_lm import load as mlx_load

    try:
        return mlx_load(str(path), adapter_path=str(adapter_path) if adapter_path else None)
    except (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError) as e:  # RuntimeError: corrupt safetensors
        raise SupercalError(f"cannot load the model in {path}: {str(e).splitlines()[0]}") from None
