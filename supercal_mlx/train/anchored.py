"""Losses that aim at the made-up-word answer: tokenstein-anchored targets and value swapping.

Eldan & Russinovich 2023 ("Who's Harry Potter?", arXiv:2310.02238) fine-tune on the base
model's own predictions for text whose idiosyncratic terms were replaced by generic anchors.
Here the anchor is a tokenstein (a made-up word with the word's token statistics), so no
other model has to invent one, and the targets are soft (whole distributions):

* ``tokenstein``: for each forget example, the base model (every LoRA scale 0, under
  ``stop_gradient``, as NPO's reference: no second copy of the weights) reads its twins
  (:mod:`supercal_mlx.train.twins`); at the aligned positions from the word's last token
  through the completion (where the twins' next token is the example's), the target is the
  mean of the twins' next-token distributions, and the loss is KL(target || model on the
  original) averaged over those positions. With ``suppress`` (``--suppress-word``), a second
  mean: before each piece of the completion's first mention, the base model's distribution on
  the original with that piece removed and renormalized. Those positions have the same
  context in the twin, so the twin's target there would be the word itself; without them the
  word stays as predictable as before wherever the context calls for it.
* ``value_swap``: the v_proj outputs (:class:`supercal_mlx.train.values.ValueTap`) of the
  adapted model at the word's token positions should equal the base model's at the
  tokenstein's positions in the twin, piece by piece: ``sum ||v - v*||^2 / sum ||v*||^2``
  per tapped layer, averaged over layers. Mentions whose in-context token counts differ
  are left out.

The teacher pass runs the adapters-off base on the twins (and, for the word's own positions,
the example) under ``stop_gradient``. Where :func:`supercal_mlx.train.chunked.split_head` finds a
head it can split, no (B, L, V) logits are made: the student's and the teachers' hidden states are
gathered at the positions that count, and the head, the targets and the KL run a chunk of positions
at a time (:func:`supercal_mlx.train.chunked.target_kl`; value_swap's NLL likewise); elsewhere the
full logits are gathered. Array-level pieces (:func:`kl_to_target`, :func:`mean_distribution`,
:func:`normalized_mse`) are tested against hand values.
"""

from __future__ import annotations

from dataclasses import dataclass


def mean_distribution(logp):
    """log of the mean of the distributions along axis 1: (B, T, K, V) log-probs -> (B, K, V)."""
    import math

    import mlx.core as mx

    return mx.logsumexp(logp, axis=1) - math.log(logp.shape[1])


def kl_per_position(logits, target_logp):
    """KL(target || softmax(logits)) at each position, float32: (B, K, V), (B, K, V) -> (B, K)."""
    import mlx.core as mx

    logp = logits.astype(mx.float32)
    logp = logp - mx.logsumexp(logp, axis=-1, keepdims=True)
    t = target_logp.astype(mx.float32)
    return (mx.exp(t) * (t - logp)).sum(axis=-1)


def kl_to_target(logits, target_logp, mask):
    """(mean over masked positions of KL(target || softmax(logits)), ntoks): (B, K, V), (B, K, V), (B, K)."""
    from .losses import masked_mean

    return masked_mean(kl_per_position(logits, target_logp), mask)


def squared_norm(x, mask):
    """sum over masked positions of ||x||^2 in float32: (B, K, D), (B, K)."""
    import mlx.core as mx

    return (x.astype(mx.float32) ** 2 * mask[..., None].astype(mx.float32)).sum()


def normalized_mse(values, target, mask, norm=None):
    """sum over masked positions of ||values - target||^2 / ``norm``, by default the sum of ||target||^2:
    (B, K, D), (B, K, D), (B, K)."""
    import mlx.core as mx

    err = squared_norm(values.astype(mx.float32) - target.astype(mx.float32), mask)
    return err / mx.maximum(squared_norm(target, mask) if norm is None else norm, 1e-12)


def logits_at(model, inputs, index):
    """Logits at positions ``index`` (B, K) of each row: the full logits, gathered (the path for heads that
    :func:`supercal_mlx.train.chunked.split_head` does not split: soft-capped, scaled or trained heads).

    The 19.3 GB once measured for a 4-bit head applied to the gathered rows (2 layers, 2 x 200 tokens) was
    split_head's check evaluated inside the gradient trace, since moved out of it (the Unlearner asks first)."""
    import mlx.core as mx

    return mx.take_along_axis(model(inputs), index[..., None], axis=1)  # (B, K, V)


@dataclass
class AnchoredBatch:
    """One forget batch with its twins. ``inputs, targets, mask``: :func:`make_batch` of the examples;
    ``twin_inputs`` (B * T, L2): the twins, T per example; ``src`` (B, K) / ``dst`` (B * T, K): aligned
    positions in the example and in each twin; ``weight`` (B, K): 1 where a position counts; ``banned``
    (B, K): the token whose probability the target there gives to the rest (renormalized), or -1."""

    inputs: object
    targets: object
    mask: object
    twin_inputs: object
    src: object
    dst: object
    weight: object
    twins: int
    banned: object = None  # (B, K) int32: a token the target at that position leaves out, or -1


def anchored_batch(examples: list, twins: list[list], *, kind: str, suppress: bool = True) -> AnchoredBatch:
    """Build the batch for ``kind`` "tokenstein" (positions from the completion's first mention's last token
    to the last input position, where the next token is the same in the twins; with ``suppress`` also the
    position before that mention, whose target leaves out the word's first piece) or "value_swap" (the
    word's pieces, in mentions of equal token count). ``twins[b]`` are the :class:`Twin` s of example b; a
    position counts only where every twin aligns it."""
    import mlx.core as mx
    import numpy as np

    from .batches import make_batch

    inputs, targets, mask = make_batch(examples)
    T = len(twins[0])
    rows: list[list[int]] = []
    bans: list[dict[int, int]] = []  # position -> the token its target leaves out (the word's first piece)
    for b, ((ids, n_prompt), tws) in enumerate(zip(examples, twins)):
        last = len(ids) - 2  # the last input position (its target is the last token)
        ban: dict[int, int] = {}
        if kind == "tokenstein":
            spans = [(s, e) for s, e, _, _ in tws[0].spans if e - 1 >= n_prompt]
            first = spans[0][1] - 1 if spans else n_prompt
            # where the next token differs (before a later mention) the twin predicts its own made-up word
            keep = [p for p in sorted(tws[0].pos) if first <= p <= last and all(
                p in t.pos and (p + 1 >= len(ids) or t.pos[p] + 1 >= len(t.ids) or ids[p + 1] == t.ids[t.pos[p] + 1])
                for t in tws)]
            if spans and suppress:  # before each piece of the completion's first mention: that piece left out
                s0, e0 = spans[0]
                for p in range(max(s0 - 1, 0), min(e0 - 1, last + 1)):
                    ban[p] = ids[p + 1]
                    if p not in keep:
                        keep.append(p)
                keep.sort()
        else:
            keep = [p for p in sorted(tws[0].pieces) if p <= last and all(p in t.pieces for t in tws)]
        rows.append(keep)
        bans.append(ban)
    K = max(1, max(len(r) for r in rows))
    L2 = max(len(t.ids) for tws in twins for t in tws)
    twin_ids = np.zeros((len(examples) * T, L2), dtype=np.int32)
    src = np.zeros((len(examples), K), dtype=np.int32)
    dst = np.zeros((len(examples) * T, K), dtype=np.int32)
    weight = np.zeros((len(examples), K), dtype=np.float32)
    banned = np.full((len(examples), K), -1, dtype=np.int32)
    for b, (keep, tws) in enumerate(zip(rows, twins)):
        src[b, : len(keep)] = keep
        weight[b, : len(keep)] = 1.0
        banned[b, : len(keep)] = [bans[b].get(p, -1) for p in keep]
        for j, t in enumerate(tws):
            twin_ids[b * T + j, : len(t.ids)] = t.ids
            table = t.pos if kind == "tokenstein" else t.pieces
            dst[b * T + j, : len(keep)] = [table.get(p, 0) if p not in bans[b] else 0 for p in keep]
    return AnchoredBatch(inputs, targets, mask, mx.array(twin_ids), mx.array(src), mx.array(dst), mx.array(weight), T,
                         mx.array(banned))


def _log_softmax(x):
    import mlx.core as mx

    x = x.astype(mx.float32)
    return x - mx.logsumexp(x, axis=-1, keepdims=True)


def position_counts(batch: AnchoredBatch) -> tuple[float, float]:
    """(twin-aligned positions, the word's own positions) that count in ``batch``: the two means' sizes."""
    import numpy as np

    weight = np.array(batch.weight)
    own = weight * (np.array(batch.banned) >= 0) if batch.banned is not None else np.zeros_like(weight)
    return float(weight.sum() - own.sum()), float(own.sum())


def without_token(logits, banned):
    """log-softmax of ``logits`` (..., V) with token ``banned`` (...) left out and the rest renormalized, float32."""
    import mlx.core as mx

    vocab = mx.arange(logits.shape[-1])
    return _log_softmax(mx.where(vocab == banned[..., None], -1e30, logits.astype(mx.float32)))


def tokenstein_loss(model, batch: AnchoredBatch, weights=None):
    """(KL(target || model) averaged over the twin-aligned positions, plus the same averaged over the word's
    own positions (``banned`` >= 0, if any); positions counted; completion NLL). ``weights``: (w_rest,
    w_own) factors of the two means when ``batch`` is one piece of a larger batch (see
    :mod:`supercal_mlx.train.distributed`); None for a batch computed whole.

    Targets, all from the base model (adapters off, no gradient): at twin-aligned positions the mean of the
    twins' distributions; before each piece of the completion's first mention, the distribution on the
    original text with that piece left out and the rest renormalized (a model that does not know the word
    cannot predict its pieces; what else it would say is kept)."""
    import mlx.core as mx

    from . import losses as L
    from .chunked import split_head

    split = split_head(model)
    kl, nll = _tokenstein_full(model, batch) if split is None else _tokenstein_chunked(model, split, batch)  # (B, K)
    w_rest, w_own = weights or (None, None)
    if batch.banned is None:
        loss, n = L.masked_mean(kl, batch.weight)
        return L.scaled(loss, w_rest), n, nll
    start = (batch.banned >= 0).astype(mx.float32) * batch.weight
    rest = batch.weight - start
    n_start, n_rest = start.sum(), rest.sum()
    # two means: the word's own few positions weigh as much as all the others
    loss = (L.scaled((kl * rest).sum() / mx.maximum(n_rest, 1.0), w_rest)
            + L.scaled((kl * start).sum() / mx.maximum(n_start, 1.0), w_own))
    return loss, n_rest + n_start, nll


def _tokenstein_full(model, batch: AnchoredBatch):
    """(KL (B, K) of :func:`tokenstein_loss` at every aligned position, completion NLL) from full logits."""
    import mlx.core as mx

    from . import losses as L
    from .lora import adapters_disabled

    logits = model(batch.inputs)  # (B, L, V)
    nll, _ = L.masked_mean(-L.token_logprobs(logits, batch.targets), batch.mask)
    student = mx.take_along_axis(logits, batch.src[..., None], axis=1)  # (B, K, V)
    B, K = batch.src.shape
    with adapters_disabled(model):
        t = _log_softmax(logits_at(model, batch.twin_inputs, batch.dst))  # (B * T, K, V)
        target = mean_distribution(t.reshape(B, batch.twins, K, -1))  # (B, K, V)
        own = None if batch.banned is None else logits_at(model, batch.inputs, batch.src)  # (B, K, V)
    if own is not None:
        target = mx.where((batch.banned >= 0)[..., None], without_token(own, batch.banned), target)
    return kl_per_position(student, mx.stop_gradient(target)), nll


def _tokenstein_chunked(model, split, batch: AnchoredBatch):
    """:func:`_tokenstein_full` without (B, L, V) logits (:mod:`supercal_mlx.train.chunked`): the body's hidden
    states of the example (adapted), of its twins and of the example again (adapters off, no gradient), gathered
    at the positions that count (``weight`` > 0), then the head, the targets and the KL a chunk of positions at a
    time (:func:`supercal_mlx.train.chunked.target_kl`); 0 at the positions that do not count. The three body
    passes run in the full path's order, so LoRA dropout draws the same masks."""
    import mlx.core as mx
    import numpy as np

    from . import losses as L
    from .chunked import _scatter, hidden_logprobs, target_kl
    from .lora import adapters_disabled

    body = split[0]
    B, K = batch.src.shape
    T = batch.twins
    hidden = body(batch.inputs)  # (B, L, D)
    nll, _ = L.masked_mean(-hidden_logprobs(split, hidden, batch.targets, batch.mask), batch.mask)
    keep = np.flatnonzero(np.array(batch.weight).reshape(-1) > 0).astype(np.int32)  # flat (b, k) that count
    if keep.size == 0:
        return mx.zeros((B, K), dtype=mx.float32), nll
    L1, L2 = batch.inputs.shape[1], batch.twin_inputs.shape[1]
    b = keep // K
    src = (b * L1 + np.array(batch.src).reshape(-1)[keep]).astype(np.int32)  # (N,) rows of (B * L1, D)
    twin = b[:, None] * T + np.arange(T)[None]  # (N, T): the twins of each position's example
    dst = np.array(batch.dst)[twin, (keep % K)[:, None]]  # (N, T)
    dst = mx.array((twin * L2 + dst).reshape(-1).astype(np.int32))  # rows of (B * T * L2, D)
    src = mx.array(src)
    D = hidden.shape[-1]
    student = hidden.reshape(-1, D)[src]  # (N, D)
    with adapters_disabled(model):
        teachers = mx.stop_gradient(body(batch.twin_inputs).reshape(-1, D)[dst]).reshape(keep.size, T, D)
        own = None if batch.banned is None else mx.stop_gradient(body(batch.inputs).reshape(-1, D)[src])
    banned = None if own is None else batch.banned.reshape(-1)[mx.array(keep)]
    kl = target_kl(split, student, teachers, own, banned)  # (N,)
    return _scatter(kl, mx.array(keep), (B, K)), nll


def value_targets(model, tap, batch: AnchoredBatch) -> dict:
    """{layer: (B, K, D)}: the base model's (adapters off) v_proj outputs at the tokenstein's positions of each
    example's twins, averaged over the twins, under ``stop_gradient``."""
    import mlx.core as mx

    from .lora import adapters_disabled

    with adapters_disabled(model):
        _, base = tap.capture(model, batch.twin_inputs)
    B, K = batch.src.shape
    return {layer: mx.stop_gradient(mx.take_along_axis(v, batch.dst[..., None], axis=1)  # (B * T, K, D)
                                    .reshape(B, batch.twins, K, -1).mean(axis=1)) for layer, v in base.items()}


def value_swap_loss(model, tap, batch: AnchoredBatch, targets: dict | None = None, norms: dict | None = None):
    """(normalized MSE of the tapped v_proj outputs at the word's pieces against the base model's at the
    tokenstein's, averaged over tapped layers; pieces counted; completion NLL). ``targets``
    (:func:`value_targets`) and ``norms`` ({layer: the targets' squared norm}) are given when ``batch`` is one
    piece of a larger batch, whose targets' norm divides every piece's error; None: from ``batch`` itself."""
    import mlx.core as mx

    from . import losses as L

    from .chunked import hidden_logprobs, split_head

    split = split_head(model)
    if split is None:
        logits, mine = tap.capture(model, batch.inputs)
        logp = L.token_logprobs(logits, batch.targets)  # (B, L) from (B, L, V) logits
    else:  # the NLL's head only at the labelled positions, in chunks (supercal_mlx.train.chunked)
        hidden, mine = tap.capture(split[0], batch.inputs)
        logp = hidden_logprobs(split, hidden, batch.targets, batch.mask)
    nll, _ = L.masked_mean(-logp, batch.mask)
    targets = value_targets(model, tap, batch) if targets is None else targets
    terms = []
    for layer, v in mine.items():
        got = mx.take_along_axis(v, batch.src[..., None], axis=1)  # (B, K, D)
        terms.append(normalized_mse(got, targets[layer], batch.weight, None if norms is None else norms[layer]))
    return mx.stack(terms).mean(), batch.weight.sum(), nll
