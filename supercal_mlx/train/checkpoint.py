"""A run folder's layout and checkpoints (the folder is made by supercal_mlx.outputs, the logs by supercal_mlx.io).

Layout (``RUN_DIR``)::

    adapter_config.json, adapters.safetensors   mlx-lm's adapter format (latest checkpoint / final)
    config.yaml                                 the resolved settings
    metrics.jsonl, probes.jsonl                 one line per step / per probe response
    checkpoints/step-000010/                    adapters.safetensors + adapter_config.json (loadable
                                                by mlx_lm with adapter_path), optimizer.safetensors,
                                                basis.safetensors (with projection), state.json

A checkpoint folder is written under a temporary name and renamed when complete
(:func:`supercal_mlx.io.atomic_dir`); the logs are appended a line at a time and,
on resume, cut back to the checkpoint's step (:func:`supercal_mlx.io.append_jsonl`,
:func:`supercal_mlx.io.truncate_log`), so a resumed run's logs read as if it had
never stopped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import SupercalError

CHECKPOINTS = "checkpoints"


def checkpoint_dir(run_dir: str | os.PathLike, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    root = Path(run_dir) / CHECKPOINTS
    found = sorted(p for p in root.glob("step-*") if (p / "state.json").exists()) if root.is_dir() else []
    return found[-1] if found else None


def save_checkpoint(run_dir, step: int, *, model, adapter_config: dict, optimizer, state: dict,
                    basis: dict | None = None, extra: dict[str, dict] | None = None) -> Path:
    """Write checkpoints/step-NNNNNN atomically and refresh the run folder's own adapters.

    ``extra``: more named sets of arrays, each written as NAME.safetensors (read back with :func:`load_extra`)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from ..io import atomic_dir
    from .lora import save_adapters

    path = checkpoint_dir(run_dir, step)
    path.parent.mkdir(exist_ok=True)
    with atomic_dir(path, force=True) as tmp:
        save_adapters(model, tmp, adapter_config)
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state)))
        if basis:
            mx.save_safetensors(str(tmp / "basis.safetensors"), basis)
        for name, arrays in (extra or {}).items():
            mx.save_safetensors(str(tmp / f"{name}.safetensors"), arrays)
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))
    save_adapters(model, run_dir, adapter_config)
    return path


def load_extra(path: Path, name: str) -> dict | None:
    """The arrays saved as ``extra[name]`` in the checkpoint at ``path``, or None when it has none."""
    import mlx.core as mx

    file = Path(path) / f"{name}.safetensors"
    return mx.load(str(file)) if file.exists() else None


def load_checkpoint(path: Path, *, model, optimizer) -> tuple[dict, dict | None]:
    """Restore adapters and optimizer state from ``path``; return (state.json dict, basis arrays or None).

    The optimizer must already be initialised on the model's trainable parameters (same tree).
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_map_with_path

    from .lora import load_adapter_weights

    load_adapter_weights(model, path / "adapters.safetensors")
    saved = mx.load(str(path / "optimizer.safetensors"))
    have = {k for k, _ in tree_flatten(optimizer.state)}
    if have != set(saved):
        raise SupercalError(f"{path}: optimizer state does not match this model's LoRA parameters; "
                            f"was the run's config.yaml changed?")
    optimizer.state = tree_map_with_path(lambda name, _: saved[name], optimizer.state)
    basis_file = path / "basis.safetensors"
    basis = mx.load(str(basis_file)) if basis_file.exists() else None
    return json.loads((path / "state.json").read_text()), basis

