"""The loss without full logits (train/chunked.py): the same log-probs, KL terms and LoRA gradients as the
full-logits path, over several chunks, and the full path where a model is not head(body(x))."""

from __future__ import annotations

import numpy as np
import pytest

import supercal_mlx  # noqa: F401

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_map  # noqa: E402

from supercal_mlx.train import chunked as C  # noqa: E402
from supercal_mlx.train import losses as L  # noqa: E402


def _adapted(model_dir):
    from supercal_mlx.model import load
    from supercal_mlx.train.lora import apply_lora

    model, _ = load(model_dir)
    mx.random.seed(0)
    apply_lora(model, rank=4, alpha=8, dropout=0.0, keys=["attn.q_proj", "attn.v_proj"], layers="all")
    model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.trainable_parameters()))
    return model


def _batch():
    mx.random.seed(1)
    inputs, targets = mx.random.randint(0, 400, (2, 17)), mx.random.randint(0, 400, (2, 17))
    mask = mx.zeros((2, 17))
    mask[0, 3:15] = 1  # 12 + 9 labelled positions: chunks of 5 leave a short last one
    mask[1, 8:17] = 1
    return inputs, targets, mask


def _full(model, inputs, targets, mask):
    logits = model(inputs)  # (B, L, V)
    logp = L.token_logprobs(logits, targets)
    ref = L.token_logprobs(L.reference_logits(model, inputs), targets)
    kl = L.kl_retain(logits, L.reference_logits(model, inputs), mask)[0]
    return L.npo(logp, ref, mask, beta=0.1)[0] + L.nll(logp, mask)[0] + kl


def _chunked(model, inputs, targets, mask):
    logp, kl = C.labelled_logprobs_and_kl(model, inputs, targets, mask)
    ref = C.labelled_logprobs(model, inputs, targets, mask, reference=True)
    return L.npo(logp, ref, mask, beta=0.1)[0] + L.nll(logp, mask)[0] + L.masked_mean(kl, mask)[0]


def _compare(model, monkeypatch, chunk=5):
    monkeypatch.setattr(C, "CHUNK", chunk)
    inputs, targets, mask = _batch()
    want = L.token_logprobs(model(inputs), targets) * mask
    got = C.labelled_logprobs(model, inputs, targets, mask)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-5, atol=1e-5)
    assert float(mx.abs(got * (1 - mask)).max()) == 0.0  # unlabelled positions are exactly 0
    a, ga = nn.value_and_grad(model, lambda *b: _full(model, *b))(inputs, targets, mask)
    b, gb = nn.value_and_grad(model, lambda *b: _chunked(model, *b))(inputs, targets, mask)
    assert b.item() == pytest.approx(a.item(), rel=1e-6) and a.item() > 1.0
    for (name, x), (_, y) in zip(tree_flatten(ga), tree_flatten(gb)):
        x, y = np.array(x), np.array(y)
        assert np.abs(x).max() > 0, name
        np.testing.assert_allclose(y, x, rtol=0, atol=5e-6 * np.abs(x).max(), err_msg=name)


@pytest.mark.parametrize("chunk", [5, 256])  # 5 checkpointed chunks of 21 labelled positions; one plain chunk
def test_chunks_give_the_full_logits_losses_and_gradients(tiny_model_dir, monkeypatch, chunk):
    model = _adapted(tiny_model_dir)
    assert C.split_head(model)[1] is model.lm_head  # a float32 head: chunks of C.CHUNK rows
    _compare(model, monkeypatch, chunk)
    monkeypatch.setenv(C.FULL_LOGITS_ENV, "1")  # the benchmarks' switch to the full path
    assert C.split_head(model) is None


def test_a_model_that_is_not_head_of_body_keeps_full_logits(tiny_model_dir, monkeypatch):
    model = _adapted(tiny_model_dir)
    plain = type(model)

    class SoftCapped(plain):  # Gemma-2-style final soft-capping: logits != lm_head(body(x))
        def __call__(self, inputs, cache=None):
            return 5.0 * mx.tanh(plain.__call__(self, inputs, cache) / 5.0)

    model.__class__ = SoftCapped
    assert C.split_head(model) is None
    _compare(model, monkeypatch)
    model.__class__ = plain
    object.__delattr__(model, C._ATTR)
    model.lm_head.unfreeze()  # a trained head needs its gradient: full logits too
    assert C.split_head(model) is None


def test_a_bfloat16_head_is_chunked_with_equal_numbers(tiny_model_dir, monkeypatch):
    """A bfloat16 head under compute_dtype float32 (cast in row chunks): chunked, with the full path's losses and
    gradients."""
    from supercal_mlx.train.lora import set_compute_dtype

    model = _adapted(tiny_model_dir)
    model.lm_head.set_dtype(mx.bfloat16)
    set_compute_dtype(model, "float32")
    assert C.split_head(model)[1] is model.lm_head
    assert C._chunks(1800) == [(0, 512), (512, 1024), (1024, 1536), (1536, 1800)]
    _compare(model, monkeypatch)
