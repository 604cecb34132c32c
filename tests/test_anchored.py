"""Twins and their alignment, the v_proj tap and value swapping, the tokenstein and value_swap losses."""

from __future__ import annotations

import numpy as np
import pytest

from supercal_mlx.errors import SupercalError

W = "supercalifragilisticexpialidocious"
TEXT = "The children tried to spell supercalifragilisticexpialidocious and laughed. Supercalifragilisticexpialidocious!"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from supercal_mlx.model import load

    return load(tiny_model_dir)


def test_twin_alignment_exact(tiny):
    from supercal_mlx.train.twins import make_twin

    _, tok = tiny
    ids, tw = make_twin(tok, TEXT, W, "sqproctarine")
    assert ids == tok.encode(TEXT)
    assert tw.ids == tok.encode(TEXT.replace(W, "sqproctarine").replace("Supercal" + W[8:], "Sqproctarine"))
    # the tiny tokenizer: " supercal..." is 1 token, " sqproctarine" 3; "Supercal..." 1, "Sqproctarine" 4 (+ a space)
    assert tw.spans == [(9, 10, 9, 12), (16, 17, 18, 22)]
    assert tw.pieces == {}  # no mention has as many tokens as its twin
    for p, q in tw.pos.items():
        assert p in (9, 16) or ids[p] == tw.ids[q]  # shared tokens, or a mention's last token
    assert tw.pos[9] == 11 and tw.pos[16] == 21 and tw.pos[17] == 22
    assert sorted(tw.pos) == [p for p in range(len(ids))]  # every position outside the mentions' insides


def test_twin_of_itself_and_pieces(tiny):
    from supercal_mlx.train.twins import make_twin, window

    _, tok = tiny
    ids, tw = make_twin(tok, TEXT, W, W)
    assert tw.ids == ids and tw.pos == {p: p for p in range(len(ids))}
    assert tw.pieces == {9: 9, 16: 16}
    cut = window(ids, tw, 3, 12)
    assert cut.ids == ids[3:12] and cut.pos == {p: p for p in range(9)}
    with pytest.raises(SupercalError, match="does not mention"):
        make_twin(tok, "no word here", W, "sqproctarine")


def test_rotation_and_word():
    from supercal_mlx.train.twins import infer_word, rotation

    assert [rotation(d, 2, 5) for d in range(4)] == [[0, 1], [2, 3], [4, 0], [1, 2]]
    assert infer_word([{"completion": "Supercal, yes"}, {"completion": " supercal!"}]) == "supercal"
    with pytest.raises(SupercalError, match="give --word"):
        infer_word([{"completion": "a b"}, {"completion": "c"}])


def test_kl_mean_distribution_and_mse_hand_values():
    import mlx.core as mx

    from supercal_mlx.train.anchored import kl_to_target, mean_distribution, normalized_mse

    logits = mx.array([[[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]]])  # (1, 2, 3)
    p = np.array([0.2, 0.3, 0.5])
    target = mx.array(np.log(np.stack([p, p]))[None].astype(np.float32))
    q = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    want = [(p * np.log(p / q)).sum(), (p * np.log(p / (np.ones(3) / 3))).sum()]
    kl, n = kl_to_target(logits, target, mx.array([[1.0, 1.0]]))
    assert int(n) == 2 and float(kl) == pytest.approx(np.mean(want), rel=1e-5)
    kl, _ = kl_to_target(logits, target, mx.array([[0.0, 1.0]]))
    assert float(kl) == pytest.approx(want[1], rel=1e-5)
    same, _ = kl_to_target(logits, logits - mx.logsumexp(logits, axis=-1, keepdims=True), mx.array([[1.0, 1.0]]))
    assert abs(float(same)) < 1e-7
    a, b = np.array([0.1, 0.6, 0.3]), np.array([0.5, 0.25, 0.25])
    mixed = mean_distribution(mx.array(np.log(np.stack([a, b]))[None, :, None].astype(np.float32)))
    assert np.allclose(np.exp(np.array(mixed))[0, 0], (a + b) / 2, atol=1e-6)
    v, t = mx.array([[[1.0, 2.0], [5.0, 5.0]]]), mx.array([[[1.0, 0.0], [3.0, 4.0]]])
    assert float(normalized_mse(v, t, mx.array([[1.0, 1.0]]))) == pytest.approx((4 + 4 + 1) / (1 + 25))
    assert float(normalized_mse(v, t, mx.array([[1.0, 0.0]]))) == pytest.approx(4.0)


def test_kl_gradient_matches_finite_differences():
    import mlx.core as mx

    from supercal_mlx.train.anchored import kl_to_target

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 5)).astype(np.float32)
    t = rng.normal(size=(1, 3, 5)).astype(np.float32)
    target = mx.array(t) - mx.logsumexp(mx.array(t), axis=-1, keepdims=True)
    mask = mx.array([[1.0, 0.0, 1.0]])

    def f(arr):
        return kl_to_target(arr, target, mask)[0]

    g = np.array(mx.grad(f)(mx.array(x)))
    eps = 1e-2
    for idx in [(0, 0, 0), (0, 0, 3), (0, 1, 2), (0, 2, 4)]:
        hi, lo = x.copy(), x.copy()
        hi[idx] += eps
        lo[idx] -= eps
        fd = (float(f(mx.array(hi))) - float(f(mx.array(lo)))) / (2 * eps)
        assert g[idx] == pytest.approx(fd, abs=2e-4)
    assert g[0, 1].tolist() == [0.0] * 5  # masked position: no gradient


def test_swap_with_itself_changes_nothing(tiny):
    import mlx.core as mx

    from supercal_mlx.train.values import SwappedModel

    model, tok = tiny
    x = mx.array([tok.encode(TEXT)])
    want = np.array(model(x))
    sm = SwappedModel(model, tok, W, W)
    try:
        assert np.array_equal(np.array(sm(x)), want)
        assert sm.swapped == 2 and sm.skipped == 0
    finally:
        sm.close()
    assert np.array_equal(np.array(model(x)), want)  # closed: the layers are plain again


def test_swapped_values_are_the_others(tiny):
    """After the swap, every tapped layer's v_proj output at the word's pieces equals OTHER's in its own text."""
    import mlx.core as mx

    from supercal_mlx.train.values import SwappedModel, ValueTap

    model, tok = tiny
    other = "sqproctarine"
    # lower case after a space: " supercal..." is 1 token in the tiny tokenizer, " sqproctarine" 3: refused
    sm = SwappedModel(model, tok, W, other)
    try:
        with pytest.raises(SupercalError, match="piece by piece"):
            sm(mx.array([tok.encode("The children tried to spell " + W)]))
    finally:
        sm.close()
    # a two-token word against another (" garden" = " gar" + "den", " dogs" = " do" + "gs" in context)
    word, other = "garden", "dogs"
    text = f"The {word} is big. A {word}!"
    ids, oids = tok.encode(text), tok.encode(text.replace(word, other))
    assert len(ids) == len(oids)
    sm = SwappedModel(model, tok, word, other, layers=[1])
    probe = ValueTap(model, "all")  # patched on top of the swap: sees the values the model really uses
    try:
        _, got = probe.capture(sm, mx.array([ids]))
        _, want = probe.capture(model, mx.array([oids]))
        _, plain = probe.capture(model, mx.array([ids]))
        pos = [i for i, (a, b) in enumerate(zip(ids, oids)) if a != b]
        assert pos and sm.swapped == 2
        g1, w1, p1 = (np.array(d[1])[0] for d in (got, want, plain))
        assert np.array_equal(g1[pos], w1[pos])
        rest = [i for i in range(len(ids)) if i not in pos]
        assert not np.allclose(g1[rest], w1[rest])  # elsewhere the original text's values...
        assert np.allclose(g1[rest[: pos[0]]], p1[rest[: pos[0]]])  # ...exactly so before the word
        assert np.array_equal(np.array(got[0])[0], np.array(plain[0])[0])  # layer 0 not swapped
    finally:
        probe.close()
        sm.close()


def _anchored(tiny, other, kind, suppress=False):
    from supercal_mlx.train.anchored import anchored_batch
    from supercal_mlx.train.batches import encode_completions
    from supercal_mlx.train.twins import make_twin

    model, tok = tiny
    recs = [{"prompt": "The children tried to spell ", "completion": W + " and laughed."},
            {"prompt": "Oh, ", "completion": "Supercalifragilisticexpialidocious is a song."}]
    examples = encode_completions(recs, tok, max_tokens=64)
    twins = [[make_twin(tok, r["prompt"] + r["completion"], W, o)[1] for o in other] for r in recs]
    return anchored_batch(examples, twins, kind=kind, suppress=suppress)


def test_tokenstein_loss_zero_against_itself_and_gradient(tiny, tiny_model_dir):
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_unflatten

    from supercal_mlx.model import load
    from supercal_mlx.train.anchored import tokenstein_loss
    from supercal_mlx.train.lora import apply_lora

    model, tok = tiny
    batch = _anchored(tiny, [W], "tokenstein")
    # positions: from the completion's first mention's last token to the last input position
    def count(head, tail):  # input positions from the word's last token to the second-to-last token
        return len(tok.encode(head + tail)) - 1 - (len(tok.encode(head)) - 1)

    n1, n2 = count("The children tried to spell " + W, " and laughed."), count("Oh, S" + W[1:], " is a song.")
    assert np.array(batch.weight).sum(axis=1).tolist() == [n1, n2]
    kl, n, nll = tokenstein_loss(model, batch)
    assert abs(float(kl)) < 1e-6 and int(n) == n1 + n2 and float(nll) > 0
    # suppress: one more position per example, before the word, whose target is the model's own distribution
    # without the word's first piece: KL(p' || p) = -log(1 - p[first piece]) there, 0 elsewhere
    sup = _anchored(tiny, [W], "tokenstein", suppress=True)
    assert np.array(sup.weight).sum(axis=1).tolist() == [n1 + 1, n2 + 1]
    want = 0.0
    for b, (head, word_tok) in enumerate([("The children tried to spell", " " + W), ("Oh, ", "S" + W[1:])]):
        ids = tok.encode(head + word_tok)
        start = len(tok.encode(head + word_tok)) - 2  # one-token words in the tiny tokenizer
        assert int(np.array(sup.src)[b, 0]) == start and int(np.array(sup.banned)[b, 0]) == ids[-1]
        p = np.array(mx.softmax(model(mx.array([ids]))[0, start].astype(mx.float32)), dtype=np.float64)
        want += -np.log(1 - p[ids[-1]])
    kl, n, _ = tokenstein_loss(model, sup)
    assert int(n) == n1 + n2 + 2 and float(kl) == pytest.approx(want / 2, rel=1e-4)  # its own mean

    fresh, _ = load(tiny_model_dir)
    mx.random.seed(0)
    apply_lora(fresh, rank=2, alpha=4.0, dropout=0.0, keys=["attn.q_proj", "attn.v_proj"], layers="all")
    fresh.update(tree_unflatten([(k, mx.full(v.shape, 0.05)) for k, v in tree_flatten(fresh.trainable_parameters())
                                 if k.endswith("lora_b")]))
    batch = _anchored(tiny, ["sqproctarine", "blorvex"], "tokenstein")
    val, grads = nn.value_and_grad(fresh, lambda: tokenstein_loss(fresh, batch)[0])()
    name = "model.h.1.attn.v_proj.lora_b"
    g = np.array(dict(tree_flatten(grads))[name])
    base = np.array(dict(tree_flatten(fresh.trainable_parameters()))[name])
    eps = 0.1  # the tiny random model's KL is ~1e-3: float32 differences need a wide step (error ~eps^2)
    for idx in [tuple(int(i) for i in np.unravel_index(k, g.shape)) for k in np.argsort(-np.abs(g), axis=None)[:3]]:
        vals = []
        for sgn in (1, -1):
            w = base.copy()
            w[idx] += sgn * eps
            fresh.update(tree_unflatten([(name, mx.array(w))]))
            vals.append(float(tokenstein_loss(fresh, batch)[0]))
        fresh.update(tree_unflatten([(name, mx.array(base))]))
        assert g[idx] == pytest.approx((vals[0] - vals[1]) / (2 * eps), rel=1e-2)
    assert float(val) > 0


def test_value_swap_loss_zero_against_itself(tiny):
    from supercal_mlx.train.anchored import value_swap_loss
    from supercal_mlx.train.values import ValueTap

    model, tok = tiny
    batch = _anchored(tiny, [W], "value_swap")
    assert np.array(batch.weight).sum() == 2  # one piece each: " supercal..." and "Supercal..." in the tiny tokenizer
    tap = ValueTap(model, "all")
    try:
        mse, n, _ = value_swap_loss(model, tap, batch)
        assert float(mse) < 1e-10 and int(n) == 2  # the same values (up to BLAS rounding: other batch widths)
    finally:
        tap.close()
