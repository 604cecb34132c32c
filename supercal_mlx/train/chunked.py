"""Token scores without the full logits: the LM head and the log-softmax in chunks of labelled positions.

A causal LM's last step is ``logits = head(hidden)``, (B, L, D) -> (B, L, V). At
GPT-J's 50,400-token vocabulary and 2 x 900 tokens those logits are 363 MB in
float32, and autograd keeps them and their gradient: the largest temporaries of
a long step. The losses need far less: the log-probability of the target at the
labelled (completion) positions only, and, for the KL term, the distribution at
those positions. So here:

1. the model's body gives the hidden states (B, L, D); the labelled positions are
   gathered into (N, D), N = labelled tokens (prompt and padding positions never
   meet the head);
2. the head and the log-softmax run over chunks of ``CHUNK`` rows, one after another, each under
   ``mx.checkpoint``: the backward pass recomputes a chunk's (C, V) logits instead
   of keeping them, so at most a chunk's logits and their gradient exist at once.
   With a single chunk nothing is checkpointed: its backward peak (logits and their
   gradient) is the same either way, and recomputing would cost a head matmul;
3. the scores are scattered back to (B, L) (zero where unlabelled), so the losses
   in :mod:`supercal_mlx.train.losses` take them unchanged.

The anchored losses (:mod:`supercal_mlx.train.anchored`) use the same pieces: :func:`hidden_logprobs` for
their NLL from hidden states they already have, and :func:`target_kl` for the tokenstein KL, whose targets
(the base model's distributions on the twins) are made inside each chunk from gathered hidden states.

Where a model's ``__call__`` is not ``head(body(x))`` (final soft-capping, scaled
logits, a trainable head), :func:`split_head` says so by comparing both on a
two-token input once per model, and the caller falls back to full logits.

``SUPERCAL_FULL_LOGITS=1`` in the environment turns the chunking off (the full-logits path), for the
side-by-side rows of ``scripts/bench_memory.py`` and ``scripts/bench_step.py`` (``--full-logits``).

mlx-lm computes the loss on full logits (``mlx_lm.tuner.trainer.default_loss``);
it has nothing chunked, so it is written here.
"""

from __future__ import annotations

CHUNK = 512  # labelled positions per chunk: (512, 50400) float32 logits = 103 MB
FULL_LOGITS_ENV = "SUPERCAL_FULL_LOGITS"
_ATTR = "_supercal_split"  # where the answer is kept: a plain attribute, outside the module's parameter tree


def split_head(model):
    """(body, head) with ``model(x) == head(body(x))`` and a frozen head, or None (full logits). A bfloat16 or
    quantized head is split too (see the note after :func:`_find_split`).

    mlx-lm's models keep the transformer in ``model.model`` and the head in ``lm_head`` or the tied
    ``model.model.embed_tokens.as_linear``; the equality is checked once per model, on two tokens.
    Ask first outside any gradient transform (the Unlearner does, when it is built): the check evaluated
    inside ``value_and_grad`` kept its cast weight chunks alive (19.2 GB vs 1.3 GB, 4-bit, 2 layers).
    """
    import os

    if os.environ.get(FULL_LOGITS_ENV, "") not in ("", "0"):
        return None
    if _ATTR not in vars(model):
        object.__setattr__(model, _ATTR, _find_split(model))
    return vars(model)[_ATTR]


def _find_split(model):
    import mlx.core as mx
    from mlx.utils import tree_flatten

    body = getattr(model, "model", None)
    head_module = getattr(model, "lm_head", None)
    if body is None or not callable(body):
        return None
    if head_module is not None:
        if tree_flatten(head_module.trainable_parameters()):
            return None  # a trained head needs its own gradient: keep the plain path
        head = head_module
    elif hasattr(getattr(body, "embed_tokens", None), "as_linear"):
        if tree_flatten(body.embed_tokens.trainable_parameters()):
            return None
        head = body.embed_tokens.as_linear
    else:
        return None
    x = mx.array([[1, 2]], dtype=mx.int32)
    training = model.training
    model.eval()  # no dropout: the check draws no random numbers, so it cannot shift a run's dropout masks
    try:
        want = model(x).astype(mx.float32)
        got = head(body(x)).astype(mx.float32)
    except Exception:  # a body that needs other arguments: not this layout
        return None
    finally:
        model.train(training)
    if want.shape != got.shape or not mx.allclose(want, got, rtol=1e-4, atol=1e-4).item():
        return None
    return body, head


# A head stored in bfloat16 or quantized (cast in 8 MB row chunks by compute_dtype on the CPU) is chunked like a
# float32 one. It used to keep the full logits: scripts/bench_memory.py --n-layer 2 --variants bf16 --full-logits
# (2 x 900 tokens, grad checkpoint, float32 compute) had measured 5.04 GB (MLX peak) chunked against 4.58 GB, when
# the step's peak was GPT-J's gelu backward pass. Since that has its own backward (train/fastops.py), the same
# benchmark with --loss tokenstein,ga --variants q4,bf16 (both paths side by side) measured: ga 2.61 / 4.19 GB
# either way (the blocks' backward pass sets the peak), tokenstein 2.81 vs 5.34 GB (4-bit) and 4.25 vs 6.51 GB
# (bfloat16). The price on the CPU is the head's casts, once per chunk (forward, recomputation, backward):
# tokenstein's step took 205 vs 147 s (4-bit) and 211 vs 120 s (bfloat16) there; ga 48 vs 47 s and 30 vs 27 s.


def _positions(mask):
    """Flat indices (N,) of the labelled positions of a (B, L) mask, as an int32 array (None if none)."""
    import mlx.core as mx
    import numpy as np

    idx = np.flatnonzero(np.asarray(mask).reshape(-1) > 0).astype(np.int32)
    return mx.array(idx) if idx.size else None


def _chunks(n: int, rows: int = 0):
    rows = rows or CHUNK
    return [(s, min(s + rows, n)) for s in range(0, n, rows)]


def _gather(hidden, idx):
    """(N, D) rows of the flattened (B, L, D) hidden states at ``idx``."""
    return hidden.reshape(-1, hidden.shape[-1])[idx]


def _scatter(values, idx, shape):
    """(B, L) float32 zeros with ``values`` (N,) at the flat positions ``idx``."""
    import mlx.core as mx

    return mx.zeros((shape[0] * shape[1],), dtype=mx.float32).at[idx].add(values).reshape(shape)


def labelled_logprobs(model, inputs, targets, mask, *, reference: bool = False):
    """log p(target) at the labelled positions, (B, L) float32 (0 elsewhere), without (B, L, V) logits.

    ``reference``: of the adapters-off model, with no gradient (NPO's reference). Falls back to the
    full logits (:func:`supercal_mlx.train.losses.token_logprobs`) where :func:`split_head` finds no split.
    """
    import mlx.core as mx

    from . import losses as L
    from .lora import adapters_disabled

    split = split_head(model)
    if split is None:
        logits = L.reference_logits(model, inputs) if reference else model(inputs)
        return L.token_logprobs(logits, targets) * (mask > 0)
    if _positions(mask) is None:
        return mx.zeros(targets.shape, dtype=mx.float32)
    if reference:
        with adapters_disabled(model):
            return hidden_logprobs(split, mx.stop_gradient(split[0](inputs)), targets, mask)
    return hidden_logprobs(split, split[0](inputs), targets, mask)


def hidden_logprobs(split, hidden, targets, mask):
    """:func:`labelled_logprobs` from the body's hidden states ``hidden`` (B, L, D) of a :func:`split_head` split:
    the labelled rows gathered, then the head and the log-softmax chunk by chunk."""
    import mlx.core as mx

    head = split[1]
    idx = _positions(mask)
    if idx is None:
        return mx.zeros(targets.shape, dtype=mx.float32)
    hidden = _gather(hidden, idx)  # (N, D)
    tgt = targets.reshape(-1)[idx]  # (N,)
    chunks = _chunks(hidden.shape[0])
    step = _logprob_chunk(head, checkpoint=len(chunks) > 1)
    parts = []
    for a, b in chunks:
        parts.append(step(_after(hidden[a:b], parts), tgt[a:b]))
    return _scatter(mx.concatenate(parts), idx, targets.shape)


def target_kl(split, student, teachers, own=None, banned=None):
    """KL(target || softmax(head(student))) per row, (N,) float32, a chunk of rows at a time (the anchored
    tokenstein loss, :mod:`supercal_mlx.train.anchored`). ``student`` (N, D): hidden states the gradient flows
    through; ``teachers`` (N, T, D): constant hidden states whose distributions, averaged, are the target; where
    ``banned`` (N,) int32 is >= 0, the target is instead the distribution of ``own`` (N, D), constant, with token
    ``banned`` left out and the rest renormalized. Teacher rows meet the head only inside their chunk (recomputed
    in the backward pass, like the student's), so no (N, V) target exists whole."""
    import mlx.core as mx

    head = split[1]
    n, t = teachers.shape[0], teachers.shape[1]
    chunks = _chunks(n, max(1, CHUNK // (t + 2)))  # a chunk's student, teacher and own rows together
    parts = []
    for a, b in chunks:
        mine = None if own is None else (own[a:b], banned[a:b])
        step = _target_kl_chunk(head, teachers[a:b], mine, checkpoint=len(chunks) > 1)
        parts.append(step(_after(student[a:b], parts)))
    return mx.concatenate(parts)


def labelled_logprobs_and_kl(model, inputs, targets, mask):
    """(log p(target), KL(p_ref || p_theta)) at the labelled positions, each (B, L) float32, 0 elsewhere;
    the reference is the adapters-off model, under no gradient. One body pass each, no full logits."""
    import mlx.core as mx

    from . import losses as L
    from .lora import adapters_disabled

    split = split_head(model)
    if split is None:
        logits = model(inputs)  # (B, L, V)
        keep = mask > 0
        return L.token_logprobs(logits, targets) * keep, L.kl_rows(logits, L.reference_logits(model, inputs)) * keep
    body, head = split
    idx = _positions(mask)
    if idx is None:
        zero = mx.zeros(targets.shape, dtype=mx.float32)
        return zero, zero
    hidden = _gather(body(inputs), idx)  # (N, D)
    with adapters_disabled(model):
        ref_hidden = mx.stop_gradient(_gather(body(inputs), idx))  # (N, D)
    tgt = targets.reshape(-1)[idx]  # (N,)
    logps, kls = [], []
    chunks = _chunks(hidden.shape[0])
    for a, b in chunks:
        lp, kl = _logprob_kl_chunk(head, ref_hidden[a:b], checkpoint=len(chunks) > 1)(_after(hidden[a:b], logps),
                                                                                       tgt[a:b])
        logps.append(lp)
        kls.append(kl)
    return (_scatter(mx.concatenate(logps), idx, targets.shape), _scatter(mx.concatenate(kls), idx, targets.shape))


def _after(rows, previous: list):
    """``rows`` made to depend on the previous chunk's result (plus 0 x its sum): MLX then runs the chunks one
    after another, in the forward pass and, in reverse, in the backward pass, instead of scheduling them side by
    side with all their (C, V) temporaries alive at once (measured: that made the peak higher than full logits)."""
    if not previous:
        return rows
    return rows + 0.0 * previous[-1].sum().astype(rows.dtype)


def _logprob_chunk(head, *, checkpoint: bool):
    """(C, D), (C,) -> (C,) log p(target); checkpointed: its (C, V) logits are recomputed in the backward pass."""
    import mlx.core as mx

    from .losses import token_logprobs

    def chunk(h, t):
        return token_logprobs(head(h), t)

    return mx.checkpoint(chunk) if checkpoint else chunk


def _logprob_kl_chunk(head, ref_hidden, *, checkpoint: bool):
    """(C, D), (C,) -> ((C,) log p(target), (C,) KL to the reference rows), checkpointed or not. The reference
    hidden states are a constant of the closure, so the backward pass computes no gradient for them."""
    import mlx.core as mx

    from .losses import kl_rows, token_logprobs

    def chunk(h, t):
        logits = head(h)  # (C, V)
        ref_logits = mx.stop_gradient(head(ref_hidden))  # (C, V)
        return token_logprobs(logits, t), kl_rows(logits, ref_logits)

    return mx.checkpoint(chunk) if checkpoint else chunk


def _target_kl_chunk(head, teachers, own, *, checkpoint: bool):
    """(C, D) -> (C,) KL(target || softmax(head(rows))) for :func:`target_kl`; ``teachers`` (C, T, D) and
    ``own`` (None or ((C, D), (C,) banned)) are constants of the closure (no gradient is computed for them)."""
    import mlx.core as mx

    from .anchored import _log_softmax, kl_per_position, mean_distribution, without_token

    def chunk(h):
        c, t, d = teachers.shape
        target = mean_distribution(_log_softmax(head(teachers.reshape(c * t, d))).reshape(c, t, -1))  # (C, V)
        if own is not None:
            rows, banned = own
            target = mx.where((banned >= 0)[:, None], without_token(head(rows), banned), target)
        return kl_per_position(head(h), mx.stop_gradient(target))  # (C,)

    return mx.checkpoint(chunk) if checkpoint else chunk
