"""GPT-J's gelu in its fast CPU form (train/fastops.py): the same logits and LoRA gradients as mlx-lm's
nn.gelu_approx to float32 rounding, patched into one model's MLPs only."""

from __future__ import annotations

import numpy as np

import supercal_mlx  # noqa: F401

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from supercal_mlx.train.fastops import gelu_new, use_fast_cpu_activations  # noqa: E402


def test_gelu_new_is_gelu_approx():
    x = mx.linspace(-12, 12, 100_001)
    np.testing.assert_allclose(np.array(gelu_new(x)), np.array(nn.gelu_approx(x)), rtol=0, atol=2e-6)
    g1, g2 = (mx.grad(lambda v, f=f: f(v).sum())(x) for f in (gelu_new, nn.gelu_approx))
    np.testing.assert_allclose(np.array(g1), np.array(g2), rtol=0, atol=4e-6)


def test_patched_model_keeps_its_logits_and_gradients(tiny_model_dir):
    from supercal_mlx.model import load
    from supercal_mlx.train.lora import apply_lora

    plain, _ = load(tiny_model_dir)
    fast, _ = load(tiny_model_dir)
    if mx.default_device() != mx.cpu:  # nothing is patched on a GPU
        assert use_fast_cpu_activations(fast) == 0
        return
    assert use_fast_cpu_activations(fast) == len(fast.layers) == 2
    assert type(plain.layers[0].mlp).__name__ == "GPTJMLP" and type(fast.layers[0].mlp).__name__ == "FastGPTJMLP"
    x = mx.array([[3, 17, 42, 99, 7, 250]])
    np.testing.assert_allclose(np.array(fast(x)), np.array(plain(x)), rtol=0, atol=1e-5)
    grads = []
    for model in (plain, fast):
        mx.random.seed(0)
        apply_lora(model, rank=4, alpha=8, dropout=0.0, keys=["attn.q_proj", "attn.v_proj"], layers="all")
        for layer in model.layers:  # non-zero B, so every LoRA parameter has a gradient
            layer.attn.q_proj.lora_b = mx.ones_like(layer.attn.q_proj.lora_b) * 0.1
        grads.append(dict(tree_flatten(nn.value_and_grad(model, lambda v: model(v).sum())(x)[1])))
    for name, g in grads[0].items():
        np.testing.assert_allclose(np.array(grads[1][name]), np.array(g), rtol=1e-4, atol=1e-4 * float(mx.abs(g).max()))


def test_gelu_new_backward_in_row_chunks_is_exact_and_smaller(monkeypatch):
    """The custom backward pass gives autograd's gradient over several row chunks (the last one short), and its
    peak memory stays far below autograd's through the seven elementwise operations."""
    from supercal_mlx.train import fastops

    mx.random.seed(0)
    x, cot = mx.random.normal((1000, 1024)) * 3, mx.random.normal((1000, 1024))
    mx.eval(x, cot)
    monkeypatch.setattr(fastops, "BACKWARD_CHUNK_BYTES", 150 * 1024 * 4)  # 150 rows: 7 chunks, the last of 100
    autograd = lambda v: v * mx.sigmoid(fastops._C * (v + fastops._K * v * v * v))  # noqa: E731
    peaks, grads = [], []
    for f in (autograd, gelu_new):
        mx.eval([])
        before = mx.get_active_memory()
        mx.reset_peak_memory()
        out, (g,) = mx.vjp(f, [x], [cot])
        mx.eval(out, g)
        peaks.append(mx.get_peak_memory() - before)
        grads.append(np.array(g))
        del out, g
    np.testing.assert_allclose(grads[1], grads[0], rtol=0, atol=2e-6 * np.abs(grads[0]).max())
    size = x.nbytes
    assert peaks[0] > 8 * size and peaks[1] < 5 * size, (peaks, size)
