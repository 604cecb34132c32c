"""Hugging Face GPT-J -> MLX folder: check, rename, drop buffers, cast, quantize, shard, copy the tokenizer.

The writing (:func:`write_weights`, :func:`write_config`, :func:`copy_tokenizer`) serves every
architecture; :mod:`.generic` plans the other architectures' tensors.

The target is mlx-lm's own ``mlx_lm.models.gptj``: the expected tensor names
and shapes come from building that model from the config (parameters are lazy,
so this costs no memory), and names are mapped with its ``sanitize``. What
mlx-lm lacks is converting tensor by tensor in bounded memory; that part is
here: each source tensor is read in row chunks, cast (and quantized with
``mx.quantize``, in the layout ``mlx_lm.load`` expects) and written straight to
its place in the output shard.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import SupercalError
from .readers import TensorInfo
from .writer import OutTensor, ShardWriter

# Buffers, not weights: older transformers versions saved the masks (and some the sin/cos table).
_BUFFER = re.compile(r"transformer\.(h\.\d+\.attn\.(bias|masked_bias|embed_positions)|rotary_emb\.embed_positions)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "added_tokens.json", "generation_config.json", "tokenizer.model", "chat_template.jinja")
DTYPES = ("float16", "bfloat16", "float32")
_FLOATS = ("float16", "bfloat16", "float32", "float64")
CHUNK_BYTES = 32 << 20  # source bytes per read: bounds peak memory whatever the tensor size


@dataclass
class Job:
    """One source tensor and what it becomes (one tensor, or weight/scales/biases when quantized)."""

    source: TensorInfo
    outputs: list[OutTensor]
    quantize: bool
    ops: tuple = ()  # shape operations (transposes, reshapes) mlx-lm's sanitize applies: see .generic


def check_config(config: dict, *, fmt: str, folder: Path) -> None:
    """Refuse configs that mlx-lm's GPT-J would silently compute differently from transformers."""
    n_embd = config.get("n_embd", 4096)
    if config.get("n_inner") not in (None, 4 * n_embd):
        raise SupercalError(f"config n_inner={config['n_inner']} is not 4 * n_embd; mlx-lm's GPT-J cannot run this model")
    if config.get("activation_function", "gelu_new") != "gelu_new":
        raise SupercalError(f"config activation_function={config['activation_function']!r}; mlx-lm's GPT-J supports gelu_new only")


def check_tokenizer(folder: Path) -> list[Path]:
    """The tokenizer files to copy; refuse a folder that has no usable tokenizer."""
    files = [folder / f for f in TOKENIZER_FILES if (folder / f).is_file()]
    names = {f.name for f in files}
    if "tokenizer.json" not in names and "tokenizer.model" not in names and not {"vocab.json", "merges.txt"} <= names:
        raise SupercalError(f"{folder} has no tokenizer (tokenizer.json, tokenizer.model, or vocab.json + merges.txt); "
                            "copy the model's tokenizer files into it")
    for f in files:
        if f.suffix == ".json":
            try:
                json.loads(f.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise SupercalError(f"{f} is not valid JSON (truncated?); download it again") from None
    return files


def plan(config: dict, tensors: dict[str, TensorInfo], *, dtype: str, quantize: bool, q_bits: int,
         q_group_size: int) -> list[Job]:
    """Map checkpoint tensors onto mlx-lm's GPT-J, refusing missing, extra or misshapen ones by name."""
    from mlx.utils import tree_flatten
    from mlx_lm.models import gptj

    try:
        model = gptj.Model(gptj.ModelArgs.from_dict(config))
    except (TypeError, ValueError) as e:
        raise SupercalError(f"config.json does not describe a valid GPT-J: {e}") from None
    expected = {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}

    kept = {k: v for k, v in tensors.items() if not _BUFFER.fullmatch(k)}
    if "lm_head.weight" not in kept and config.get("tie_word_embeddings") and "transformer.wte.weight" in kept:
        kept["lm_head.weight"] = kept["transformer.wte.weight"]
    hf_name = model.sanitize({k: k for k in kept})  # mlx-lm's own renaming (transformer.* -> model.*), on names
    renamed = {k: kept[hf] for k, hf in hf_name.items()}

    missing = sorted(set(expected) - set(renamed))
    if missing:
        hf = [m.replace("model.", "transformer.", 1) for m in missing[:3]]
        raise SupercalError(f"the checkpoint lacks {len(missing)} tensor(s) GPT-J needs, e.g. {', '.join(hf)}; "
                            "it is incomplete or not a GPT-J with this config")
    extra = sorted(set(renamed) - set(expected))
    if extra:
        hf = [hf_name[e] for e in extra[:3]]
        raise SupercalError(f"the checkpoint has {len(extra)} tensor(s) GPT-J does not, e.g. {', '.join(hf)}; "
                            "check that config.json belongs to these weights")
    jobs = []
    for name, shape in expected.items():
        src = renamed[name]
        q = quantize and len(shape) == 2 and name.endswith(".weight") and shape[-1] % q_group_size == 0
        jobs.append(make_job(name, shape, src, src.shape, hf_name[name], dtype=dtype, quantize=q, q_bits=q_bits,
                             q_group_size=q_group_size))
    return check_quantized(jobs, quantize, q_group_size)


def make_job(name: str, shape: tuple, src: TensorInfo, src_shape: tuple, shown: str, *, dtype: str, quantize: bool,
             q_bits: int, q_group_size: int, ops: tuple = ()) -> Job:
    """The job that writes source tensor ``src`` (called ``shown`` in errors; ``src_shape`` after ``ops``) as
    parameter ``name`` of ``shape``: one tensor, or weight/scales/biases in mlx's quantized layout."""
    if tuple(src_shape) != tuple(shape):
        raise SupercalError(f"tensor {shown} has shape {list(src_shape)}, but config.json implies "
                            f"{list(shape)}; check that config.json belongs to these weights")
    if src.dtype not in _FLOATS:
        raise SupercalError(f"tensor {shown} is {src.dtype}, expected a floating-point weight")
    if quantize:
        rows, cols = shape
        outs = [OutTensor(name, "uint32", (rows, cols * q_bits // 32)),
                OutTensor(name[: -len("weight")] + "scales", dtype, (rows, cols // q_group_size)),
                OutTensor(name[: -len("weight")] + "biases", dtype, (rows, cols // q_group_size))]
    else:
        outs = [OutTensor(name, dtype, shape)]
    return Job(src, outs, quantize, ops)


def check_quantized(jobs: list[Job], quantize: bool, q_group_size: int) -> list[Job]:
    if quantize and not any(j.quantize for j in jobs):
        raise SupercalError(f"no weight's width is a multiple of --q-group-size {q_group_size}; choose a smaller group size")
    return jobs


def write_weights(folder: Path, jobs: list[Job], *, dtype: str, q_bits: int, q_group_size: int,
                  max_shard_bytes: int, progress: Callable[[int, int], None] | None = None) -> int:
    """Convert every job's tensor chunk by chunk into shards under ``folder``; return bytes written."""
    import mlx.core as mx
    import numpy as np

    out_dtype = getattr(mx, dtype)
    writer = ShardWriter(folder, [j.outputs for j in jobs], max_shard_bytes=max_shard_bytes)
    done = 0
    with writer:
        for job in jobs:
            src = job.source
            rows = src.shape[0] if src.shape else 1
            # row chunks; a tensor that is transposed or reshaped is read whole (one tensor: still bounded)
            step = rows if job.ops else max(1, CHUNK_BYTES // max(1, src.row_bytes()))
            out_rows = job.outputs[0].shape[0] if job.outputs[0].shape else 1
            for start in range(0, rows, step):
                stop = min(rows, start + step)
                data = src.read_rows(start, stop)  # (r, ...) in the source dtype
                if src.dtype == "float64":  # the GPU has no float64: narrow on the host
                    data = data.astype(np.float32)
                x = mx.array(data)
                if src.dtype == "bfloat16":  # numpy held the raw bits
                    x = x.view(mx.bfloat16)
                if job.ops:
                    from .generic import apply_ops

                    x = apply_ops(x, job.ops)
                x = x.astype(out_dtype)
                parts = mx.quantize(x, group_size=q_group_size, bits=q_bits) if job.quantize else (x,)
                for out, part in zip(job.outputs, parts):
                    if part.dtype == mx.bfloat16:  # numpy cannot hold bfloat16: write its bits
                        part = part.view(mx.uint16)
                    data = np.ascontiguousarray(part)  # a transposed tensor is a strided view
                    writer.write(out.name, start * (out.nbytes // out_rows), data)
                    done += data.nbytes
                if progress is not None:
                    progress(done, writer.total_bytes)
    return done


def write_config(folder: Path, config: dict, *, quantize: bool, q_bits: int, q_group_size: int) -> None:
    cfg = dict(config)
    if quantize:  # the keys mlx_lm.load looks for to rebuild quantized layers
        cfg["quantization"] = {"group_size": q_group_size, "bits": q_bits, "mode": "affine"}
        cfg["quantization_config"] = dict(cfg["quantization"])
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))


def copy_tokenizer(files: list[Path], folder: Path) -> None:
    for f in files:
        shutil.copyfile(f, folder / f.name)
