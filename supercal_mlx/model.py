"""Model folders: loading them with mlx-lm, with errors a user can act on.

The small GPT-J factories the demo and the tests use live in
:mod:`supercal_mlx.demo.factories`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SupercalError


def load(model_dir: str | os.PathLike, adapter_path: str | os.PathLike | None = None, *,
         compute_dtype: str | None = None):
    """(model, tokenizer) from an MLX model folder, optionally with LoRA adapters applied.

    ``compute_dtype`` ("auto", "float32", "native"; None: native): as unlearn's setting
    (:func:`supercal_mlx.device.resolve_compute_dtype`); eval and probe use "auto", so a bfloat16 base on
    the CPU is scored in float32 at float32 speed, as it was trained."""
    path = Path(model_dir)
    if not path.is_dir():
        raise SupercalError(f"model folder {path} does not exist; convert a checkpoint first (supercal convert)")
    if not (path / "config.json").exists():
        raise SupercalError(f"{path} has no config.json; is it an MLX model folder (supercal convert writes one)?")
    if not list(path.glob("*.safetensors")):
        raise SupercalError(f"{path} has no *.safetensors weights; convert the checkpoint with supercal convert")
    if adapter_path is not None:
        check_adapters(adapter_path)
    from mlx_lm import load as mlx_load

    try:
        model, tokenizer = mlx_load(str(path))
    except (ValueError, FileNotFoundError, KeyError, OSError, RuntimeError) as e:  # RuntimeError: corrupt safetensors
        raise SupercalError(f"cannot load the model in {path}: {str(e).splitlines()[0]}") from None
    except (TypeError, AttributeError) as e:  # config.json names an architecture its fields do not describe
        raise SupercalError(f"cannot load the model in {path}: its config.json does not fit the architecture it names "
                            f"({str(e).splitlines()[0]}); convert the checkpoint again") from None
    if compute_dtype is not None:
        from .device import resolve_compute_dtype
        from .train.lora import set_compute_dtype

        resolved = resolve_compute_dtype(compute_dtype, model)
        if resolved:
            set_compute_dtype(model, resolved)
    if adapter_path is not None:
        load_adapters(model, adapter_path, model_dir=path)
        model.eval()  # as mlx_lm.load does after its own load_adapters
    return model, tokenizer


ADAPTER_FILES = ("adapter_config.json", "adapters.safetensors")


def check_adapters(adapter_path: str | os.PathLike) -> dict:
    """adapter_config.json of an adapter folder, checked: valid JSON with lora_parameters, weights beside it."""
    from .io import read_json

    folder = Path(adapter_path)
    if not folder.is_dir():
        raise SupercalError(f"adapter folder {folder} does not exist; give a run folder written by supercal unlearn")
    missing = [f for f in ADAPTER_FILES if not (folder / f).is_file()]
    if missing:
        raise SupercalError(f"{folder} has no {' or '.join(missing)}; give a run folder written by supercal unlearn")
    config = read_json(folder / "adapter_config.json", what="adapter config (adapter_config.json from supercal unlearn)")
    lora = config.get("lora_parameters")
    if not isinstance(lora, dict) or not {"rank", "scale"} <= set(lora):
        raise SupercalError(f"{folder / 'adapter_config.json'} has no lora_parameters (rank, scale, keys); "
                            "it is not an adapter config from supercal unlearn or mlx-lm")
    return config


def load_adapters(model, adapter_path: str | os.PathLike, *, model_dir: str | os.PathLike | None = None) -> None:
    """mlx-lm's ``load_adapters`` (LoRA layers + weights), refusing adapters trained on another model.

    mlx-lm loads adapter weights with ``strict=False``, which checks neither names nor shapes: adapters
    of another model load silently and fail (or mislead) later. Here every adapter tensor must match a
    parameter of the model in name and shape, and when supercal recorded the base model's fingerprint
    in adapter_config.json, ``model_dir`` must have the same one.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import load_adapters as mlx_load_adapters

    folder = Path(adapter_path)
    config = check_adapters(folder)
    base = (config.get("supercal") or {}).get("base_model") or {}
    if model_dir is not None and base.get("fingerprint") and base["fingerprint"] != model_fingerprint(model_dir):
        raise SupercalError(f"{folder} was trained on {base.get('path', 'another model')}, not on {model_dir} "
                            "(their weights differ); give the model the adapters were trained on")
    try:
        weights = mx.load(str(folder / "adapters.safetensors"))
    except (RuntimeError, ValueError, OSError) as e:
        raise SupercalError(f"{folder / 'adapters.safetensors'} cannot be read ({str(e).splitlines()[0]}); "
                            "the adapter folder is broken") from None
    try:
        mlx_load_adapters(model, str(folder))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SupercalError(f"the adapters in {folder} do not fit this model ({str(e).splitlines()[0]}); "
                            "were they trained on another model?") from None
    params = dict(tree_flatten(model.parameters()))
    for name, w in weights.items():
        if name not in params or params[name].shape != w.shape:
            have = f"shape {tuple(params[name].shape)}" if name in params else "no such parameter"
            raise SupercalError(f"the adapters in {folder} do not fit this model: {name} has shape {tuple(w.shape)}, "
                                f"the model {have}; were they trained on another model?")


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """What identifies a model folder's contents, cheaply: sha256 over config.json, the tokenizer files and,
    per weight file, its name, size and first and last MiB (headers and data differ between checkpoints)."""
    import hashlib

    folder = Path(model_dir)
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                 "tokenizer.model"):
        if (folder / name).is_file():
            h.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    for p in sorted(folder.glob("*.safetensors")):
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(1 << 20)
            f.seek(max(size - (1 << 20), 0))
            tail = f.read()
        h.update(f"{p.name}:{size}\0".encode() + head + tail)
    return "sha256:" + h.hexdigest()
