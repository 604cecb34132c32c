"""The anchored losses without full logits (train/anchored.py through train/chunked.py): the tokenstein loss
(with and without the word's own positions, as one batch and as a weighted piece) and value_swap give the
full-logits path's losses and LoRA gradients, over several chunks and in one."""

from __future__ import annotations

import numpy as np
import pytest

import supercal_mlx  # noqa: F401

import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_map  # noqa: E402

from supercal_mlx.train import anchored as A  # noqa: E402
from supercal_mlx.train import chunked as C  # noqa: E402
from test_anchored import _anchored  # noqa: E402


def _adapted(model_dir, dropout=0.0):
    from supercal_mlx.model import load
    from supercal_mlx.train.lora import apply_lora

    model, tok = load(model_dir)
    mx.random.seed(0)
    apply_lora(model, rank=4, alpha=8, dropout=dropout, keys=["attn.q_proj", "attn.v_proj"], layers="all")
    model.update(tree_map(lambda p: p + 0.05 * mx.random.normal(p.shape), model.trainable_parameters()))
    return model, tok


def _both(model, monkeypatch, loss_fn):
    """(value, flat gradients) of ``loss_fn`` on the chunked path, then on the full-logits path."""
    out = []
    for full in (False, True):
        monkeypatch.setenv(C.FULL_LOGITS_ENV, "1" if full else "0")
        assert (C.split_head(model) is None) == full
        mx.random.seed(5)  # the same dropout masks on both paths
        value, grads = nn.value_and_grad(model, loss_fn)()
        out.append((value.item(), dict(tree_flatten(grads))))
    return out


def _assert_same(chunked, full):
    (a, ga), (b, gb) = chunked, full
    assert a == pytest.approx(b, rel=1e-5, abs=1e-7) and abs(b) > 1e-4
    for name, x in gb.items():
        x, y = np.array(x), np.array(ga[name])
        assert np.abs(x).max() > 0, name
        np.testing.assert_allclose(y, x, rtol=0, atol=2e-5 * np.abs(x).max(), err_msg=name)


@pytest.mark.parametrize("chunk,suppress,weights,dropout", [
    (8, True, None, 0.0),  # 8 // (2 twins + 2) = 2 positions a chunk: many checkpointed chunks, the word's own
    (8, False, None, 0.0),  # positions (banned) or not; one chunk (512); a piece with its two means weighted
    (512, True, (0.7, 1.9), 0.0),
    (8, True, None, 0.2),  # LoRA dropout: the body passes draw their masks in the full path's order
])
def test_tokenstein_loss_chunked_equals_full_logits(tiny_model_dir, monkeypatch, chunk, suppress, weights, dropout):
    model, tok = _adapted(tiny_model_dir, dropout)
    model.train()
    monkeypatch.setattr(C, "CHUNK", chunk)
    batch = _anchored((model, tok), ["sqproctarine", "blorvex"], "tokenstein", suppress=suppress)
    assert (batch.banned is not None and int((np.array(batch.banned) >= 0).sum()) > 0) == suppress
    assert int(np.array(batch.weight).sum()) > 8  # more positions than a chunk holds

    def loss():
        kl, n, nll = A.tokenstein_loss(model, batch, weights)
        return kl + 0.3 * nll

    _assert_same(*_both(model, monkeypatch, loss))


def test_value_swap_loss_chunked_equals_full_logits(tiny_model_dir, monkeypatch):
    from supercal_mlx.train.values import ValueTap

    model, tok = _adapted(tiny_model_dir)
    monkeypatch.setattr(C, "CHUNK", 5)
    batch = _anchored((model, tok), ["sqproctarine", "blorvex"], "value_swap")
    tap = ValueTap(model, "all")
    try:
        def loss():
            mse, n, nll = A.value_swap_loss(model, tap, batch)
            return mse + 0.3 * nll

        _assert_same(*_both(model, monkeypatch, loss))
    finally:
        tap.close()
