"""LoRA on chosen linear layers of chosen blocks, with mlx-lm's LoRA layers and adapter format.

The layers themselves are mlx-lm's (``mlx_lm.tuner.utils.linear_to_lora_layers``:
``LoRALinear`` wraps ``nn.Linear`` and ``nn.QuantizedLinear``, so a quantized
base trains as QLoRA with no extra code). What this module adds:

* explicit block selection: ``all``, ``last:N`` or a list of indices. mlx-lm's
  ``adapter_config.json`` knows only ``num_layers`` (the last N blocks), so for a
  list we apply LoRA from the lowest listed block to the end (that is what
  ``mlx_lm.load(..., adapter_path=RUN_DIR)`` rebuilds) and freeze the LoRA
  layers of the unlisted blocks: their ``lora_b`` stays zero, so they add
  exactly nothing, and they are not saved (mlx-lm leaves them at zero on load);
* checks with useful errors (keys that match no layer list the available ones);
* :func:`adapters_disabled`: the reference model for NPO and KL is the same
  model with every LoRA scale set to 0, never a second copy of the weights;
* :func:`enable_grad_checkpoint` and :func:`set_compute_dtype`, which patch only
  this model's instances (mlx-lm's ``grad_checkpoint`` patches the block class
  for every model in the process). ``set_compute_dtype`` is written here because
  mlx-lm has nothing like it: frozen bfloat16 / quantized linears cast their
  weights in small row chunks inside an ``mx.custom_function`` whose backward
  casts again, so a bfloat16 or 4-bit base trains on the CPU at float32 BLAS
  speed without holding float32 copies of its weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Iterator

from ..errors import SupercalError

_BLOCK = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def block_index(name: str) -> str | None:
    """The transformer block a parameter belongs to: 'model.h.3.attn.q_proj.lora_a' -> '3'."""
    m = _BLOCK.search(name)
    return m.group(1) if m else None


def linear_names(model) -> list[str]:
    """Names (relative to a block) of the layers LoRA can wrap, over all blocks: the layers mlx-lm's
    ``linear_to_lora_layers`` adapts when it is given no keys (linear, switch and embedding layers)."""
    import mlx.nn as nn
    from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

    types = (nn.Linear, nn.QuantizedLinear, SwitchLinear, QuantizedSwitchLinear, nn.Embedding, nn.QuantizedEmbedding)
    names = set()
    for block in model.layers:
        for name, module in block.named_modules():
            if name and (isinstance(module, types) or hasattr(module, "to_lora")):
                names.add(name)
    return sorted(names)


# The fused query-key-value projection of architectures that have no separate q_proj / v_proj:
# GPT-2 (c_attn), Phi-3 (qkv_proj), GPT-NeoX / Pythia / Falcon (query_key_value), MPT / DBRX (Wqkv).
FUSED_QKV = ("c_attn", "qkv_proj", "query_key_value", "Wqkv")


def auto_keys(model) -> list[str]:
    """``--lora-keys auto``: the attention query and value projections under the model's own names.

    Every ``*q_proj`` and ``*v_proj`` layer when the model has both (Llama, Qwen2, Mistral, Phi, GPT-J:
    ``attn.q_proj``, ``attn.v_proj``); else its fused QKV layer (:data:`FUSED_QKV`); else mlx-lm's own
    default, every layer LoRA can wrap (:func:`linear_names`).
    """
    names = linear_names(model)
    last = {n: n.rsplit(".", 1)[-1] for n in names}
    q = [n for n in names if last[n] == "q_proj"]
    v = [n for n in names if last[n] == "v_proj"]
    if q and v:
        return q + v
    fused = [n for n in names if last[n] in FUSED_QKV]
    return fused or names


def resolve_layers(spec, n_layers: int) -> list[int]:
    """Block indices from 'all' | 'last:N' | [i, ...]; SupercalError when out of range."""
    if spec == "all":
        return list(range(n_layers))
    if isinstance(spec, str) and spec.startswith("last:"):
        n = int(spec[5:])
        if n > n_layers:
            raise SupercalError(f"lora_layers last:{n} asks for more blocks than the model has ({n_layers})")
        return list(range(n_layers - n, n_layers))
    bad = [i for i in spec if not 0 <= i < n_layers]
    if bad:
        raise SupercalError(f"lora_layers: block index {bad[0]} is out of range; the model has blocks 0..{n_layers - 1}")
    return sorted(spec)


def apply_lora(model, *, rank: int, alpha: float, dropout: float, keys: list[str], layers) -> dict:
    """Freeze ``model``, wrap ``keys`` in the chosen blocks with LoRA; return the adapter_config dict.

    ``keys == ["auto"]`` means :func:`auto_keys`; the adapter_config holds the keys actually used.
    LoRA parameters are float32 whatever the base dtype (mlx-lm creates them so).
    """
    from mlx_lm.tuner.utils import linear_to_lora_layers

    n_layers = len(model.layers)
    chosen = resolve_layers(layers, n_layers)
    available = linear_names(model)
    if list(keys) == ["auto"]:
        keys = auto_keys(model)
    missing = [k for k in keys if k not in available]
    if missing:
        raise SupercalError(f"lora key(s) {', '.join(missing)} match no layer; available: {', '.join(available)}")
    num_layers = n_layers - chosen[0]
    params = {"rank": rank, "scale": alpha / rank, "dropout": dropout, "keys": list(keys)}
    model.freeze()
    linear_to_lora_layers(model, num_layers, params)
    for i in range(chosen[0], n_layers):
        if i not in chosen:
            model.layers[i].freeze()  # LoRA present for mlx-lm's loader, but zero and never trained
    return {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": params,
        "supercal": {"layers": chosen, "alpha": alpha},
    }


def lora_modules(model) -> list:
    return [m for _, m in model.named_modules() if hasattr(m, "lora_a") and hasattr(m, "scale")]


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """Within the block every LoRA layer's scale is 0: the model computes the base model exactly
    (y + 0 * z == y). Used under ``mx.stop_gradient`` for reference log-probabilities."""
    modules = lora_modules(model)
    scales = [m.scale for m in modules]
    try:
        for m in modules:
            m.scale = 0.0
        yield
    finally:
        for m, s in zip(modules, scales):
            m.scale = s


def adapter_weights(model) -> dict:
    """The trained LoRA parameters by name (what adapters.safetensors holds)."""
    from mlx.utils import tree_flatten

    return dict(tree_flatten(model.trainable_parameters()))


def save_adapters(model, run_dir: str | os.PathLike, adapter_config: dict) -> None:
    """Write adapters.safetensors + adapter_config.json into ``run_dir`` atomically (replacing)."""
    import mlx.core as mx

    from ..io import atomic_file

    run_dir = Path(run_dir)
    with atomic_file(run_dir / "adapters.safetensors", "wb", force=True) as f:
        mx.save_safetensors(f, adapter_weights(model), metadata={"format": "mlx"})
    with atomic_file(run_dir / "adapter_config.json", "w", force=True, encoding="utf-8") as f:
        json.dump(adapter_config, f, indent=2)


def load_adapter_weights(model, path: str | os.PathLike) -> None:
    """Set the LoRA parameters from an adapters.safetensors written by :func:`save_adapters`."""
    import mlx.core as mx

    model.load_weights(list(mx.load(str(path)).items()), strict=False)


def enable_grad_checkpoint(model) -> None:
    """Recompute each block's activations during the backward pass (mx.checkpoint), for this model only.

    Same idea as ``mlx_lm.tuner.trainer.grad_checkpoint``, but each block instance gets a
    private subclass, so other models in the process are not affected.
    """
    import mlx.core as mx

    for block in model.layers:
        base = type(block)
        call = base.__call__

        def checkpointed(self, *args, _call=call, **kwargs):
            if kwargs.get("cache") is not None:  # generation (probes): no backward pass, and caches are not arrays
                return _call(self, *args, **kwargs)

            # dropout in the block (LoRA dropout): mx.checkpoint calls the block again in the backward pass, which
            # would draw new masks (a gradient of another function); both calls start from one seed drawn here
            seed = _block_seed(self)

            def inner(params, *a, **kw):
                self.update(params)
                if seed is not None:
                    mx.random.seed(seed)
                return _call(self, *a, **kw)

            return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

        block.__class__ = type(f"Checkpointed{base.__name__}", (base,), {"__call__": checkpointed})


def _block_seed(block) -> int | None:
    """A seed drawn from mlx's random state when ``block`` trains with a dropout that draws, else None."""
    import mlx.core as mx
    import mlx.nn as nn

    if not block.training or not any(isinstance(m, nn.Dropout) and m._p_1 < 1 for _, m in block.named_modules()):
        return None
    return int(mx.random.randint(0, 2**31 - 1, ()).item())


# Row chunks of a frozen weight are cast (dequantized) at most this many bytes at a time under
# compute_dtype. MLX schedules ops ahead of their execution, a bounded number in flight, and each holds
# its output from then on, so the chunk size bounds the float32 copies alive at once. Measured on the
# 50400 x 4096 bfloat16 LM head, 255 tokens: forward peak above the inputs 0.93 GB with 64 MB chunks,
# 0.29 GB with 8 MB ones, which were also the fastest (1.2 s against 1.7 s; 2 MB: 1.3 s).
CAST_CHUNK_BYTES = 8 << 20


def _frozen_linear_call(self, x):
    """``self(x)`` for a frozen Linear / QuantizedLinear stored in another dtype (or quantized): the
    weight is cast (dequantized) to ``x.dtype`` in row chunks right before each matmul, and cast again
    in the backward pass instead of being kept from the forward pass, so no full-size compute-dtype
    copy of any weight lives longer than one chunk's matmul. Gradients flow to ``x`` only (the weight
    is a constant: it is frozen)."""
    import mlx.core as mx

    dtype = x.dtype
    quantized = "scales" in self
    n_out = self["weight"].shape[0]
    n_in = x.shape[-1]
    rows = max(1, min(n_out, CAST_CHUNK_BYTES // (n_in * dtype.size)))
    starts = range(0, n_out, rows)

    def weight_rows(i, after):
        # mx.depends: the cast is not scheduled before ``after`` (the matmul's other operand) exists
        names = ("weight", "scales", "biases") if quantized else ("weight",)
        parts = mx.depends([self[n][i:i + rows] for n in names if self.get(n) is not None], [after])
        if quantized:
            return mx.dequantize(*parts, group_size=self.group_size, bits=self.bits, mode=self.mode, dtype=dtype)
        return parts[0].astype(dtype)

    @mx.custom_function
    def matmul(x):
        parts = [x @ weight_rows(i, x).T for i in starts]
        return parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)

    @matmul.vjp
    def matmul_vjp(primals, cotangent, output):
        dx = None
        for i in starts:
            part = cotangent[..., i:i + rows] @ weight_rows(i, cotangent)
            dx = part if dx is None else dx + part
        return (dx,)

    y = matmul(x)
    return y + self["bias"].astype(dtype) if "bias" in self else y


def set_compute_dtype(model, dtype: str) -> None:
    """Run the model in ``dtype`` whatever the stored weights; the weights stay stored as they are.

    * token embeddings: rows are looked up in the stored dtype, then cast (the table never is); a tied
      LM head (``Embedding.as_linear``, as in Qwen2, Llama or GPT-2) is a frozen linear layer as below;
    * frozen Linear / QuantizedLinear layers in another dtype or quantized (all of them before LoRA is
      applied; LoRALinear then wraps them): :func:`_frozen_linear_call`, which casts or dequantizes
      the weight in chunks of at most ``CAST_CHUNK_BYTES`` right before use, in the forward and again
      in the backward pass (MLX's own promotion would keep a full float32 copy of every weight from the
      forward pass to the backward pass);
    * everything else (layer norms, attention, the loss) follows by promotion.

    On the CPU this makes a bfloat16 or 4-bit base trainable at float32 BLAS speed (MLX's CPU bfloat16
    matmul is ~30x and its quantized matmul 50-75x slower than float32 with OpenBLAS). The price is the
    casts, about one matmul's time per weight per pass at 256 tokens (measured in scripts/bench_step.py).
    On a GPU leave it unset (``--compute-dtype auto`` does, :mod:`supercal_mlx.device`): quantized and
    bfloat16 kernels are fast there.
    """
    import mlx.core as mx
    import mlx.nn as nn

    target = getattr(mx, dtype)
    found = False

    def patch(module, name, methods):
        base = type(module)
        module.__class__ = type(f"{name}{base.__name__}", (base,), methods)

    for _, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.QuantizedEmbedding)):
            def cast_call(self, x, _call=type(module).__call__):
                return _call(self, x).astype(target)

            methods = {"__call__": cast_call}
            if isinstance(module, nn.QuantizedEmbedding) or module.weight.dtype != target:
                methods["as_linear"] = _frozen_linear_call  # the tied head: (..., D) @ (V, D).T, no bias
            patch(module, dtype.capitalize(), methods)
            found = True
        elif isinstance(module, nn.QuantizedLinear) or (isinstance(module, nn.Linear)
                                                         and module.weight.dtype != target):
            patch(module, "Cast", {"__call__": _frozen_linear_call})
    if not found:
        raise SupercalError("compute_dtype needs a model with a token embedding layer; leave compute_dtype unset")
