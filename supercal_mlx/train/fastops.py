"""A faster CPU form of GPT-J's activation, patched into this model's MLP instances only.

GPT-J's ``gelu_new`` is ``0.5 x (1 + tanh(z))``, ``z = sqrt(2 / pi) (x + 0.044715 x^3)``; mlx-lm computes
it with ``nn.gelu_approx``, an ``mx.compile``d function. On the Linux CPU build the compiled kernel and
``tanh`` are slow: on (256, 16384), forward + backward took 398 ms compiled against 177 ms for the same
function written as ``x * sigmoid(2 z)`` (``0.5 (1 + tanh(z)) == sigmoid(2 z)`` exactly; float32 results
differ by at most 5e-7, their gradients by 1e-6) and not compiled (scripts/profile_step.py; PyTorch's
vectorised kernel: 2.7 ms forward). Per block and step that is about 0.2 s of a ~3 s float32 step at 1 x 256
tokens. On a GPU (Metal, CUDA) the compiled kernel is the fast one, so nothing is patched there.

Its backward pass is written out too (``mx.custom_function``, in row chunks): autograd through the elementwise
operations held about ten (tokens, 16384) float32 arrays at once, and in a long grad-checkpointed step that
was the largest single term of the peak (see :func:`_gelu_new`).

Only :class:`mlx_lm.models.gptj.GPTJMLP` instances are patched (a private subclass per instance, as
:func:`supercal_mlx.train.lora.enable_grad_checkpoint` does): other models in the process are untouched.
"""

from __future__ import annotations

import functools
import math

_C = 2.0 * math.sqrt(2.0 / math.pi)
_K = 0.044715
# the backward pass's elementwise work is done this many bytes of rows at a time (see _gelu_new)
BACKWARD_CHUNK_BYTES = 16 << 20


def gelu_new(x):
    """GPT-J's gelu_new (tanh approximation) as ``x * sigmoid(2 z)``, uncompiled: the fast form on the CPU."""
    return _gelu_new()(x)


@functools.cache
def _gelu_new():
    """:func:`gelu_new` as an ``mx.custom_function`` whose backward pass is computed from ``x`` alone, in row
    chunks of at most :data:`BACKWARD_CHUNK_BYTES`, one after another. Autograd through the seven elementwise
    operations kept their intermediates and ran the backward's temporaries side by side: on (1800, 16384) float32
    (2 x 900 tokens at GPT-J width) the vjp peaked at 1.30 GB above its inputs, and it set the trainer step's peak
    (the last block's recomputed MLP); chunked 0.52 GB, of which 0.24 GB are the output and the gradient
    (``scripts/bench_memory.py --phases`` shows the step)."""
    import mlx.core as mx

    @mx.custom_function
    def gelu(x):
        return x * mx.sigmoid(_C * (x + _K * x * x * x))

    @gelu.vjp
    def gelu_vjp(x, cotangent, output):
        # d/dx x sigmoid(z) = s + x s (1 - s) z',  s = sigmoid(z),  z = C (x + K x^3),  z' = C (1 + 3 K x^2)
        width = x.shape[-1] if x.ndim > 1 else x.size
        flat, cot = x.reshape(-1, width), cotangent.reshape(-1, width)
        rows = max(1, BACKWARD_CHUNK_BYTES // max(1, flat.shape[1] * flat.dtype.size))
        parts = []
        for i in range(0, flat.shape[0], rows):
            xi = flat[i:i + rows]
            if parts:  # one chunk after another: MLX would otherwise schedule them side by side
                xi = mx.depends([xi], [parts[-1]])[0]
            x2 = xi * xi
            s = mx.sigmoid(_C * xi * (1 + _K * x2))
            parts.append(cot[i:i + rows] * s * (1 + xi * (1 - s) * (_C * (1 + 3 * _K * x2))))
        return (parts[0] if len(parts) == 1 else mx.concatenate(parts)).reshape(x.shape)

    return gelu


def _mlp_call(self, inputs):
    return self.fc_out(gelu_new(self.fc_in(inputs)))


def use_fast_cpu_activations(model) -> int:
    """Patch GPT-J MLPs of ``model`` to :func:`gelu_new` when MLX computes on the CPU; return how many."""
    import mlx.core as mx
    from mlx_lm.models import gptj

    if mx.default_device() != mx.cpu:
        return 0
    n = 0
    for _, module in model.named_modules():
        if type(module) is gptj.GPTJMLP:
            module.__class__ = type(f"Fast{gptj.GPTJMLP.__name__}", (gptj.GPTJMLP,), {"__call__": _mlp_call})
            n += 1
    return n
