"""A faster CPU form of GPT-J's activation, patched into this model's MLP instances only.

GPT-J's ``gelu_new`` is ``0.5 x (1 + tanh(z))``, ``z = sqrt(2 / pi) (x + 0.044715 x^3)``; mlx-lm computes
it with ``nn.gelu_approx``, an ``mx.compile``d function. On the Linux CPU build the compiled kernel and
``tanh`` are slow: on (256, 16384), forward + backward took 398 ms compiled against 177 ms for the same
function written as ``x * sigmoid(2 z)`` (``0.5 (1 + tanh(z)) == sigmoid(2 z)`` exactly; float32 results
differ by at most 5e-7, their gradients by 1e-6) and not compiled (scripts/profile_step.py; PyTorch's
vectorised kernel: 2.7 ms forward). Per block and step that is about 0.2 s of a ~3 s float32 step at 1 x 256
tokens. On a GPU (Metal, CUDA) the compiled kernel is the fast one, so nothing is patched there.

Only :class:`mlx_lm.models.gptj.GPTJMLP` instances are patched (a private subclass per instance, as
:func:`supercal_mlx.train.lora.enable_grad_checkpoint` does): other models in the process are untouched.
"""

from __future__ import annotations

import math

_C = 2.0 * math.sqrt(2.0 / math.pi)


def gelu_new(x):
    """GPT-J's gelu_new (tanh approximation) as ``x * sigmoid(2 z)``, uncompiled: the fast form on the CPU."""
    import mlx.core as mx

    return x * mx.sigmoid(_C * (x + 0.044715 * x * x * x))


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
