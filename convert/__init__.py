"""Checkpoint conversion (importable as ``supercal_mlx.convert``): Hugging Face causal LM -> MLX model folder.

``convert`` reads safetensors or PyTorch ``.bin`` checkpoints (never with torch,
never running pickle code; see :mod:`.readers`), checks every tensor against
mlx-lm's model for the config (GPT-J with its own checks, :mod:`.gptj`; every
other architecture mlx-lm knows through its model class and ``sanitize``,
:mod:`.generic`) and streams the result into an mlx-lm folder (:mod:`.writer`)
under a temporary name that becomes ``out`` only when complete.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable

from ..errors import SupercalError
from ..outputs import check_output_dir, new_output_dir
from . import generic, gptj
from .hub import resolve_source
from .readers import find_weights, read_tensors

MAX_SHARD_BYTES = 5 << 30  # mlx-lm's shard size

__all__ = ["convert"]


def convert(source: str, out: str | os.PathLike, *, revision: str | None = None, dtype: str = "float16",
            quantize: bool = False, q_bits: int = 4, q_group_size: int = 64, force: bool = False,
            progress: Callable[[int, int], None] | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Convert a checkpoint (folder or hub id) of any architecture mlx-lm knows into an mlx-lm model folder
    ``out``; return its path.

    ``progress(bytes_written, total_bytes)`` is called after each chunk.
    """
    if dtype not in gptj.DTYPES:
        raise SupercalError(f"unknown dtype {dtype!r}; choose one of {', '.join(gptj.DTYPES)}")
    if quantize and (q_bits not in (2, 3, 4, 5, 6, 8) or q_group_size not in (32, 64, 128)):
        raise SupercalError("--q-bits must be 2, 3, 4, 5, 6 or 8 and --q-group-size 32, 64 or 128")
    out = check_output_dir(out, kind="convert", force=force)
    folder = resolve_source(str(source), revision=revision)

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise SupercalError(f"{folder} has no config.json; give the folder of a Hugging Face checkpoint")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise SupercalError(f"{config_path} is not valid JSON; download it again") from None
    if not isinstance(config, dict):
        raise SupercalError(f"{config_path} is not a JSON object; download it again")
    fmt, files = find_weights(folder)
    arch = gptj if config.get("model_type") == "gptj" else generic
    if arch is generic:
        config = generic.mlx_config(config)
    if arch is gptj:
        gptj.check_config(config, fmt=fmt, folder=folder)
    else:
        generic.build_model(config)  # an unknown architecture is refused before the tensors are read
    tokenizer_files = gptj.check_tokenizer(folder)
    jobs = arch.plan(config, read_tensors(fmt, files), dtype=dtype, quantize=quantize, q_bits=q_bits,
                     q_group_size=q_group_size)

    need = sum(o.nbytes for j in jobs for o in j.outputs)
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise SupercalError(f"{out.parent} has {free / 1e9:.1f} GB free but the model needs {need / 1e9:.1f} GB; "
                            "free some space or choose another --out")
    try:
        with new_output_dir(out, kind="convert", force=force) as tmp:
            gptj.write_weights(tmp, jobs, dtype=dtype, q_bits=q_bits, q_group_size=q_group_size,
                               max_shard_bytes=max_shard_bytes, progress=progress)
            gptj.write_config(tmp, config, quantize=quantize, q_bits=q_bits, q_group_size=q_group_size)
            gptj.copy_tokenizer(tokenizer_files, tmp)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EIO):
            raise SupercalError(f"cannot write {out}: {e.strerror}; free some space or choose another --out") from None
        raise
    return out

