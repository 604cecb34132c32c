"""Losses against hand-computed values; batches' masks; the adapters-off reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

import supercal_mlx  # noqa: F401  (loads OpenBLAS before mlx)
from supercal_mlx.train import losses as L
from supercal_mlx.train.batches import BatchStream, encode_completions, encode_texts, make_batch
from supercal_mlx.errors import SupercalError

import mlx.core as mx  # noqa: E402


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    return x - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)) - x.max(-1, keepdims=True)


LOGITS = np.array([[[2.0, 0.5, -1.0], [0.0, 0.0, 3.0], [1.0, 2.0, 0.5]],
                   [[-0.5, 1.5, 0.0], [4.0, -2.0, 1.0], [0.3, 0.2, 0.1]]], dtype=np.float32)  # (B=2, L=3, V=3)
TARGETS = np.array([[0, 2, 1], [1, 0, 2]], dtype=np.int32)
MASK = np.array([[0, 1, 1], [1, 1, 0]], dtype=np.float32)


def _hand_logp():
    lp = _log_softmax(LOGITS)
    return np.take_along_axis(lp, TARGETS[..., None], -1)[..., 0]  # (B, L)


def test_token_logprobs_and_nll_match_hand_values():
    lp = _hand_logp()
    got = L.token_logprobs(mx.array(LOGITS), mx.array(TARGETS))
    np.testing.assert_allclose(np.array(got), lp, atol=1e-6)
    nll, ntoks = L.nll(got, mx.array(MASK))
    assert ntoks.item() == 4
    assert nll.item() == pytest.approx(-(lp * MASK).sum() / 4, abs=1e-6)
    # the model-level helper is the same number from the model's logits
    model_nll, _ = L.completion_nll(lambda inputs: mx.array(LOGITS), None, mx.array(TARGETS), mx.array(MASK))
    assert model_nll.item() == nll.item()


def test_token_logprobs_gradient_is_onehot_minus_softmax():
    """The fused backward pass against the hand gradient w * (onehot(target) - softmax), in float64, for
    float32 logits and for float16 ones (whose gradient comes back in float16)."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3
    targets = rng.integers(0, 11, size=(2, 5))
    w = rng.normal(size=(2, 5)).astype(np.float32)
    x64 = logits.astype(np.float64)
    softmax = np.exp(x64 - x64.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    want = w[..., None] * (np.eye(11)[targets] - softmax)
    for dtype, atol in ((mx.float32, 1e-6), (mx.float16, 2e-3)):
        g = mx.grad(lambda x: (L.token_logprobs(x, mx.array(targets)) * mx.array(w)).sum())(mx.array(logits).astype(dtype))
        assert g.dtype == dtype
        np.testing.assert_allclose(np.array(g.astype(mx.float32)), want, atol=atol)


def test_ga_and_random_completion_from_hand_values():
    lp = _hand_logp()
    logp = L.token_logprobs(mx.array(LOGITS), mx.array(TARGETS))
    ga, ntoks = L.ga(logp, mx.array(MASK))
    assert ga.item() == pytest.approx((lp * MASK).sum() / 4, abs=1e-6) and ntoks.item() == 4
    rnd, ntoks = L.random_completion(logp, mx.array(MASK))  # the NLL of the (mismatched) completion
    assert rnd.item() == -ga.item() and ntoks.item() == 4


def test_half_precision_logits_are_reduced_in_float32():
    big = (LOGITS * 4000).astype(np.float16)  # exp() of these overflows float16
    got = L.token_logprobs(mx.array(big), mx.array(TARGETS))
    assert got.dtype == mx.float32 and np.isfinite(np.array(got)).all()
    want = np.take_along_axis(_log_softmax(big.astype(np.float64)), TARGETS[..., None], -1)[..., 0]
    np.testing.assert_allclose(np.array(got), want, atol=1e-3)


def test_npo_formula():
    """NPO on token log-probs: sequence sums over the mask, then (2 / beta) mean softplus(beta * delta)."""
    logp = np.array([[-1.0, -2.0, 9.0], [-4.0, -6.0, -0.5], [-0.5, 7.0, 7.0]], dtype=np.float32)  # (B, L)
    ref = np.array([[-1.5, -0.5, -9.0], [-5.0, -7.0, 3.0], [-0.5, -3.0, 1.0]], dtype=np.float32)
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], dtype=np.float32)
    seq, ref_seq = (logp * mask).sum(1), (ref * mask).sum(1)  # -3, -10.5, -0.5 and -2, -9, -0.5
    for beta in (0.1, 1.0, 2.5):
        want = (2 / beta) * np.mean(np.log1p(np.exp(beta * (seq.astype(np.float64) - ref_seq))))
        got, ntoks = L.npo(mx.array(logp), mx.array(ref), mx.array(mask), beta=beta)
        assert got.item() == pytest.approx(want, rel=1e-6) and ntoks.item() == 6
    # at pi_theta == pi_ref the loss is (2 / beta) log 2; a huge ratio does not overflow
    same = L.npo(mx.array(ref), mx.array(ref), mx.array(mask), beta=0.1)[0]
    assert same.item() == pytest.approx(20 * math.log(2), rel=1e-6)
    one = mx.ones((1, 1))
    assert L.npo(mx.array([[5000.0]]), mx.array([[0.0]]), one, beta=1.0)[0].item() == pytest.approx(10000.0, rel=1e-6)


def test_kl_matches_hand_value_and_is_zero_for_equal_logits():
    other = LOGITS[:, :, ::-1].copy()
    p_ref, p = _log_softmax(other), _log_softmax(LOGITS)
    kl = (np.exp(p_ref) * (p_ref - p)).sum(-1)
    want = (kl * MASK).sum() / MASK.sum()
    got, ntoks = L.kl_retain(mx.array(LOGITS), mx.array(other), mx.array(MASK))
    assert got.item() == pytest.approx(want, rel=1e-5) and ntoks.item() == 4
    zero, _ = L.kl_retain(mx.array(LOGITS), mx.array(LOGITS), mx.array(MASK))
    assert zero.item() == 0.0


class CharTok:
    def encode(self, text):
        return [ord(c) for c in text]


def test_batches_label_only_completion_tokens():
    ex = encode_completions([{"prompt": "ab", "completion": "cde"}, {"prompt": "", "completion": "xy"}], CharTok(),
                            max_tokens=10)
    assert ex == [([97, 98, 99, 100, 101], 2), ([120, 121], 0)]
    inputs, targets, mask = make_batch(ex)
    assert inputs.tolist() == [[97, 98, 99, 100], [120, 121, 0, 0]]
    assert targets.tolist() == [[98, 99, 100, 101], [121, 0, 0, 0]]
    assert mask.tolist() == [[0, 1, 1, 1], [1, 0, 0, 0]]  # c, d, e labelled; padding never
    # truncation keeps the prompt's end and the completion's start
    assert encode_completions([{"prompt": "abcdefgh", "completion": "XYZW"}], CharTok(), max_tokens=6) == \
        [([ord(c) for c in "fghXYZ"], 3)]
    assert encode_texts([{"text": "hello"}], CharTok(), max_tokens=3) == [([104, 101, 108], 0)]
    with pytest.raises(SupercalError, match="record 1: the completion is empty"):
        encode_completions([{"prompt": "ab", "completion": ""}], CharTok(), max_tokens=8)


def test_batch_stream_is_a_reproducible_permutation_per_epoch():
    s = BatchStream(5, 2, seed=0, stream=0)
    order = [i for _ in range(5) for i in s.next_indices()]  # two epochs
    assert sorted(order[:5]) == list(range(5)) and sorted(order[5:]) == list(range(5))
    t = BatchStream(5, 2, seed=0, stream=0)
    t.load_state({"epoch": 1, "pos": 0})
    assert [i for _ in range(2) for i in t.next_indices()] + t.next_indices()[:1] == order[5:]


def test_reference_is_the_base_model_and_kl_is_zero_at_zero_adapters(tiny_model_dir):
    from supercal_mlx.train.lora import apply_lora
    from supercal_mlx.model import load

    base, _ = load(tiny_model_dir)
    model, _ = load(tiny_model_dir)
    mx.random.seed(0)
    apply_lora(model, rank=4, alpha=8, dropout=0.0, keys=["attn.q_proj", "attn.v_proj"], layers="all")
    inputs = mx.array([[5, 17, 42, 99, 7, 3]])
    targets = mx.array([[17, 42, 99, 7, 3, 11]])
    mask = mx.ones(targets.shape)
    kl, ntoks = L.kl_retain(model(inputs), L.reference_logits(model, inputs), mask)
    assert kl.item() == 0.0 and ntoks.item() == 6
    logp = L.token_logprobs(model(inputs), targets)
    npo, _ = L.npo(logp, L.token_logprobs(L.reference_logits(model, inputs), targets), mask, beta=0.5)
    assert npo.item() == pytest.approx(4 * math.log(2), rel=1e-6)
    for layer in model.layers:  # non-zero adapters: the reference must still be the base model
        layer.attn.q_proj.lora_b = mx.random.normal(layer.attn.q_proj.lora_b.shape)
    assert not np.allclose(np.array(model(inputs)), np.array(base(inputs)), atol=1e-3)
    np.testing.assert_array_equal(np.array(L.reference_logits(model, inputs)), np.array(base(inputs)))
    kl, _ = L.kl_retain(model(inputs), L.reference_logits(model, inputs), mask)
    assert kl.item() == L.kl_retain(model(inputs), base(inputs), mask)[0].item() and kl.item() > 1e-6
