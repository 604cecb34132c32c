"""Unlearning losses: pure functions that return ``(loss, ntoks)``.

Batches are ``(inputs, targets, mask)`` from :func:`supercal_mlx.train.batches.make_batch`.
Every log-softmax and every reduction runs in float32, whatever the model's
dtype: the original PyTorch runs got NaN losses from float16 softmax.

The objectives ``nll``, ``ga``, ``npo``, ``random_completion`` take token
log-probabilities (B, L) from :func:`token_logprobs`, ``kl_retain`` takes logits
(B, L, V): the trainer (:class:`supercal_mlx.train.unlearner.Unlearner`) runs the
model once per batch and computes every term of that batch from the one output,
and the tests check these same functions against hand-computed values.
:func:`completion_nll` and :func:`reference_logits` are the model-level helpers.

The reference model of NPO and of the KL term is the same model with every
LoRA layer switched off (:func:`supercal_mlx.train.lora.adapters_disabled`), under
``mx.stop_gradient``: no second copy of the weights is ever held.

mlx-lm ships only a plain cross-entropy (``mlx_lm.tuner.trainer.default_loss``);
the unlearning objectives below are written here.
"""

from __future__ import annotations

import functools


def token_logprobs(logits, targets):
    """log p(target) per position, float32: logits (B, L, V), targets (B, L) -> (B, L).

    logits[target] - logsumexp(logits), in float32 so bf16/fp16 models cannot overflow it, with a fused
    backward pass (:func:`_logprobs`) that holds one (B, L, V) temporary fewer than autograd's.
    """
    import mlx.core as mx

    return _logprobs()(logits.astype(mx.float32), targets)


@functools.cache
def _logprobs():
    """The custom function behind :func:`token_logprobs`: d logp / d logits = onehot(target) - softmax,
    computed as one exp and one scatter. At GPT-J's vocabulary and 2 x 900 tokens the loss's backward peak
    above its inputs goes from 1.45 GB (autograd through cross_entropy) to 1.09 GB."""
    import mlx.core as mx

    @mx.custom_function
    def logprobs(logits, targets):
        return mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1) - mx.logsumexp(logits, axis=-1)

    @logprobs.vjp
    def logprobs_vjp(primals, cotangent, output):
        logits, targets = primals
        t = targets[..., None]
        lse = mx.take_along_axis(logits, t, axis=-1) - output[..., None]
        grad = mx.exp(logits - lse) * -cotangent[..., None]
        grad = mx.put_along_axis(grad, t, mx.take_along_axis(grad, t, axis=-1) + cotangent[..., None], axis=-1)
        return grad, mx.zeros_like(targets)

    return logprobs


def scaled(x, w):
    """``x * w``, or ``x`` itself when there is no weight (a batch computed whole: not a single operation more)."""
    return x if w is None else x * w


def masked_mean(values, mask):
    """(mean of ``values`` where ``mask`` is 1, number of such positions); both (B, L)."""
    ntoks = mask.sum()
    return (values * mask).sum() / ntoks, ntoks


def sequence_logprobs(logp, mask):
    """Sum of masked token log-probabilities per sequence: (B, L), (B, L) -> (B,)."""
    return (logp * mask).sum(axis=1)


# --- objectives on precomputed log-probabilities: one forward pass serves several terms ----------

def nll(logp, mask):
    """(mean NLL of the masked tokens, ntoks) from token log-probs (B, L): the ordinary language-model loss."""
    return masked_mean(-logp, mask)


def ga(logp, mask):
    """Gradient ascent: the negated completion NLL (minimising it makes the completion less likely)."""
    loss, ntoks = nll(logp, mask)
    return -loss, ntoks


def npo(logp, ref_logp, mask, *, beta: float):
    """Negative Preference Optimization (Zhang et al. 2024, arXiv:2404.05868), eq. 3, on token log-probs
    (B, L) of the model and of the reference; (loss, ntoks):

        L = (2 / beta) * mean_i log(1 + (pi_theta(y_i|x_i) / pi_ref(y_i|x_i)) ** beta)

    on the sequence log-likelihoods of the masked tokens. Written as softplus(beta * (log pi_theta -
    log pi_ref)) so a large ratio cannot overflow. At pi_theta == pi_ref the loss is (2 / beta) * log 2.
    """
    loss = npo_from_sequences(sequence_logprobs(logp, mask), sequence_logprobs(ref_logp, mask), beta=beta)
    return loss, mask.sum()


def npo_from_sequences(seq, ref_seq, *, beta: float):
    """:func:`npo`'s loss from sequence log-likelihoods (B,) of the model and of the reference (the trainer
    keeps the reference's, computed once per forget example)."""
    import mlx.core as mx

    delta = seq.astype(mx.float32) - ref_seq.astype(mx.float32)  # (B,)
    return (2.0 / beta) * mx.logaddexp(mx.zeros_like(delta), beta * delta).mean()


def random_completion(logp, mask):
    """Yao et al. 2023, "Large Language Model Unlearning" (arXiv:2310.10683): the NLL of a
    random (mismatched) completion after each forget prompt, so the model learns to answer
    something unrelated instead of the forgotten text. ``logp`` are the token log-probs of a batch
    of forget prompts followed by mismatched completions (built by the trainer)."""
    return nll(logp, mask)


def kl_retain(logits, ref_logits, mask):
    """(mean over masked positions of KL(p_ref || p_theta), ntoks), float32; logits (B, L, V) each.

    The direction follows Yao et al. 2023 and TOFU: the reference distribution is the
    target, so the term pulls the adapted model back to the base on retain text.
    """
    return masked_mean(kl_rows(logits, ref_logits), mask)


def kl_rows(logits, ref_logits):
    """KL(p_ref || p_theta) per position, float32: logits (..., V) each -> (...)."""
    import mlx.core as mx

    logp = logits.astype(mx.float32)
    logp = logp - mx.logsumexp(logp, axis=-1, keepdims=True)  # (..., V)
    ref = ref_logits.astype(mx.float32)
    ref = ref - mx.logsumexp(ref, axis=-1, keepdims=True)  # (..., V)
    return (mx.exp(ref) * (ref - logp)).sum(axis=-1)  # (...)


# --- model-level helpers -------------------------------------------------------------------------

def completion_nll(model, inputs, targets, mask):
    """(mean NLL of the masked target tokens, ntoks) of ``model`` on one batch (no full logits:
    :func:`supercal_mlx.train.chunked.labelled_logprobs`)."""
    from .chunked import labelled_logprobs

    return nll(labelled_logprobs(model, inputs, targets, mask), mask)


def reference_logits(model, inputs):
    """Logits of the base model (all LoRA layers off), with no gradient."""
    import mlx.core as mx

    from .lora import adapters_disabled

    with adapters_disabled(model):
        return mx.stop_gradient(model(inputs))
