"""Which device MLX computes on, and which compute path a base model gets there (``--compute-dtype auto``).

MLX runs on its default device: the GPU on a Mac (Metal) or with ``mlx[cuda]``,
the CPU with the Linux ``mlx-cpu`` wheel. On the CPU, half-precision and
quantized matmuls are far slower than float32 ones through BLAS (measured on a
2-core Linux box, (256 x 1024) @ (1024 x 1024): float32 5 ms, bfloat16 127 ms,
float16 155 ms; a 4-bit quantized matmul is 50-75x slower, scripts/bench_step.py).
So ``auto`` computes a bfloat16, float16 or quantized base in float32 on the CPU
(:func:`supercal_mlx.train.lora.set_compute_dtype`: weights stay stored as they
are and are cast in small chunks right before each matmul) and leaves it native
on a GPU, where those kernels are the fast ones.
"""

from __future__ import annotations

COMPUTE_DTYPES = ("auto", "float32", "native")
_HALF = ("bfloat16", "float16")


def device_type() -> str:
    """'cpu' or 'gpu': where MLX computes by default in this process."""
    import mlx.core as mx

    return "gpu" if mx.default_device().type == mx.DeviceType.gpu else "cpu"


def slow_on_cpu(model) -> str | None:
    """Why ``model`` would compute slowly on the CPU in its own dtype ('bfloat16 weights', 'quantized
    weights'), or None for a float32 model."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    if any(isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding)) for _, m in model.named_modules()):
        return "quantized weights"
    dtypes = {str(p.dtype).rsplit(".", 1)[-1] for _, p in tree_flatten(model.parameters())}
    half = sorted(d for d in dtypes if d in _HALF)
    return f"{'/'.join(half)} weights" if half else None


def resolve_compute_dtype(setting: str | None, model) -> str | None:
    """The dtype to compute ``model`` in (None: its own). ``auto``: float32 for a bfloat16, float16 or
    quantized model on the CPU, its own dtype otherwise; ``native`` (or None): its own; ``float32``: float32."""
    if setting in (None, "native"):
        return None
    if setting == "auto":
        return "float32" if device_type() == "cpu" and slow_on_cpu(model) else None
    return setting


def describe() -> str:
    """One line for ``supercal info``: the device and the compute path ``--compute-dtype auto`` takes on it."""
    import mlx.core as mx

    dev = device_type()
    if dev == "cpu":
        path = ("bfloat16, float16 and quantized bases are computed in float32 (weights cast in chunks before each "
                "matmul); float32 bases as they are")
    else:
        path = "every base is computed in its own dtype (native bfloat16, float16 and quantized kernels)"
    return f"{dev} ({mx.default_device()}); --compute-dtype auto: {path}"
