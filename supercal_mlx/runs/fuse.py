"""Fold LoRA adapters into the base weights and save a standalone model folder.

The folding itself is mlx-lm's (``LoRALinear.fuse``, ``dequantize_model``,
``make_shards``, ``save_config``), as in ``mlx_lm.fuse``. What mlx-lm lacks,
and is written here: an atomic output folder, clean errors, and
``hf_names=True``, which writes the weights under the names Hugging Face
transformers' ``GPTJForCausalLM`` expects (``transformer.h.N...``,
``transformer.wte.weight``, ``lm_head.*``). mlx-lm's GPT-J keeps them as
``model.h.N...``; transformers silently skips names it does not know and
leaves those weights random, so the folder must be renamed to be read back.
mlx-lm still loads the renamed folder (its GPT-J ``sanitize`` maps
``transformer.`` back to ``model.``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..errors import SupercalError
from ..io import read_json
from ..outputs import check_output_dir, new_output_dir


def fuse(model_dir: str | os.PathLike, adapter_path: str | os.PathLike, out: str | os.PathLike, *,
         dequantize: bool = False, hf_names: bool = False, force: bool = False) -> Path:
    """Write ``out``: the model in ``model_dir`` with the adapters in ``adapter_path`` folded in.

    A quantized base stays quantized (the fused weights are re-quantized, which
    rounds) unless ``dequantize``; ``hf_names`` needs an unquantized result.
    """
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm.utils import dequantize_model, save_config

    from ..model import load

    out = check_output_dir(out, kind="fuse", force=force)
    model_dir = Path(model_dir)
    config = _read_config(model_dir)
    quantized = "quantization" in config
    if hf_names and config.get("model_type") != "gptj":
        raise SupercalError(f"--hf-names knows GPT-J names only; {model_dir} is a {config.get('model_type')!r} model")
    if hf_names and quantized and not dequantize:
        raise SupercalError("transformers cannot read MLX-quantized weights; add --dequantize to --hf-names")

    model, tokenizer = load(model_dir, adapter_path)
    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if not fused:
        raise SupercalError(f"{adapter_path} put no LoRA layers into the model; give a run folder from supercal unlearn")
    model.update_modules(tree_unflatten(fused))
    if dequantize and quantized:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)

    weights = dict(tree_flatten(model.parameters()))
    if hf_names:
        weights = to_hf_names(weights, config)
        config["architectures"] = ["GPTJForCausalLM"]

    with new_output_dir(out, kind="fuse", force=force) as tmp:
        _save_weights(tmp, weights, fmt="pt" if hf_names else "mlx")
        save_config(config, config_path=tmp / "config.json")
        tokenizer.save_pretrained(str(tmp))
        if (model_dir / "generation_config.json").exists():
            shutil.copy(model_dir / "generation_config.json", tmp)
    return out


def hf_gptj_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Every parameter of transformers' ``GPTJForCausalLM`` for ``config``, with its shape (buffers excluded)."""
    d, v = config["n_embd"], config["vocab_size"]
    inner = config.get("n_inner") or 4 * d
    shapes: dict[str, tuple[int, ...]] = {"transformer.wte.weight": (v, d)}
    for i in range(config["n_layer"]):
        p = f"transformer.h.{i}."
        shapes.update({
            p + "ln_1.weight": (d,), p + "ln_1.bias": (d,),
            **{p + f"attn.{k}_proj.weight": (d, d) for k in ("q", "k", "v", "out")},
            p + "mlp.fc_in.weight": (inner, d), p + "mlp.fc_in.bias": (inner,),
            p + "mlp.fc_out.weight": (d, inner), p + "mlp.fc_out.bias": (d,),
        })
    shapes.update({"transformer.ln_f.weight": (d,), "transformer.ln_f.bias": (d,),
                   "lm_head.weight": (v, d), "lm_head.bias": (v,)})
    return shapes


def to_hf_names(weights: dict, config: dict) -> dict:
    """mlx-lm GPT-J names (``model.h.0...``) -> transformers names (``transformer.h.0...``), shapes checked."""
    renamed = {("transformer." + k[len("model."):] if k.startswith("model.") else k): w for k, w in weights.items()}
    expected = hf_gptj_shapes(config)
    missing = sorted(set(expected) - set(renamed))
    extra = sorted(set(renamed) - set(expected))
    if missing or extra:
        raise SupercalError(f"the fused weights do not match GPT-J's layout (missing {missing[:3]}, unexpected "
                            f"{extra[:3]}); fuse without --hf-names")
    for k, shape in expected.items():
        if tuple(renamed[k].shape) != shape:
            raise SupercalError(f"{k} has shape {tuple(renamed[k].shape)}, GPT-J expects {shape}; fuse without --hf-names")
    return renamed


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise SupercalError(f"{model_dir} has no config.json; give an MLX model folder (supercal convert writes one)")
    return read_json(path, what="model config (config.json of an MLX model folder)")


def _save_weights(folder: Path, weights: dict, *, fmt: str) -> None:
    """Shard ``weights`` into safetensors files plus the index, named as mlx-lm and transformers both expect."""
    import mlx.core as mx
    from mlx_lm.utils import make_shards

    shards = make_shards(weights)
    pattern = "model-{:05d}-of-{:05d}.safetensors" if len(shards) > 1 else "model.safetensors"
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = pattern.format(i, len(shards))
        # transformers accepts safetensors whose format is "pt"; mlx-lm accepts either.
        mx.save_safetensors(str(folder / name), shard, metadata={"format": fmt})
        weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(w.nbytes for w in weights.values())},
             "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=4))
