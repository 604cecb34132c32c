"""The distributional measure: how differently a model continues a word and made-up words, against a noise floor.

For a template ``prefix + W + suffix`` and two words A and B, ``d(A, B)`` is the
mean symmetric KL divergence, ``(KL(p||q) + KL(q||p)) / 2`` in nats, between the
model's next-token distributions at the aligned positions: the word's last
token and every token after it. Each full string is encoded once, as the
training batches encode text (:func:`supercal_mlx.train.batches.encode_texts`:
the tokenizer's own BOS convention). The aligned tail of a template is the
run of final tokens that every string of that template shares (usually the
suffix's tokens), plus the position before it (the word's last token, which
predicts the first shared token). Positions inside the words are skipped:
words differ in token count.

Over a population of tokensteins T_1..T_m (made-up words with the word's token
statistics):

- ``tokenstein_gap`` = mean over templates and T of d(word, T);
- ``tokenstein_floor`` = mean over templates and pairs i != j of d(T_i, T_j): how
  much made-up words differ from each other, the noise any one comparison has;
- ``gap_ratio`` = gap / floor: 1.0 means the word differs from made-up words no
  more than they differ among themselves;
- ``gap_ratio_se``: the standard deviation of the ratio over bootstrap
  resamples of tokensteins and templates (both drawn with replacement).

mlx-lm has nothing like this; the forward pass is the model's own, batched
with right padding (a causal model's positions never see the padding after them).
"""

from __future__ import annotations

import os

from ..errors import SupercalError

# (prefix, suffix) around W: questions and neutral continuations, none specific to one word.
GAP_TEMPLATES = [
    ("What does ", " mean? It"),
    ("The word ", " is a"),
    ("I heard someone say ", " at the party, and"),
    ("The children said ", " and then"),
    ("Have you ever heard the word ", "? It"),
    ("She wrote ", " on the board. It"),
    ("Nobody told me what ", " means, so"),
    ("\"", ",\" said the teacher, \"is"),
]


def read_templates(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Templates from JSONL ``{"prefix": ..., "suffix": ...}`` (the prefix may be empty, the suffix not)."""
    from ..io import read_jsonl

    recs = read_jsonl(path, text=("prefix", "suffix"))
    out = [(str(r["prefix"]), str(r["suffix"])) for r in recs]
    for i, (_, suffix) in enumerate(out, 1):
        if not suffix:
            raise SupercalError(f"{path} record {i}: the suffix is empty; the gap compares what follows the word")
    if not out:
        raise SupercalError(f"{path} holds no templates; give JSONL lines like {{\"prefix\": \"The word \", \"suffix\": \" is a\"}}")
    return out


def _common_suffix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs) - 1  # at least one position before the shared tail
    k = 0
    while k < n and all(s[-1 - k] == seqs[0][-1 - k] for s in seqs):
        k += 1
    return k


def tail_logprobs(model, tokenizer, words: list[str], template: tuple[str, str], *, batch_size: int = 32):
    """Log-probabilities (N, K + 1, V) at the aligned positions of ``prefix + w + suffix`` for each word,
    where K is the number of final tokens all N strings share."""
    import mlx.core as mx
    import mlx.nn as nn
    import numpy as np

    from ..train.batches import encode_texts

    prefix, suffix = template
    encoded = [ids for ids, _ in encode_texts([{"text": prefix + w + suffix} for w in words], tokenizer,
                                               max_tokens=10**9)]
    k = _common_suffix(encoded)
    if k == 0:
        raise SupercalError(f"the template {prefix!r} ... {suffix!r} leaves no shared token after the words; "
                            "give a suffix with text after the word")
    out = []
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i:i + batch_size]
        width = max(len(s) for s in chunk)
        tokens = np.zeros((len(chunk), width), dtype=np.int32)  # (B, L), right-padded
        for b, s in enumerate(chunk):
            tokens[b, :len(s)] = s
        logits = model(mx.array(tokens))  # (B, L, V)
        for b, s in enumerate(chunk):
            # positions len-k-1 .. len-1: the word's last token, then every shared tail token
            lp = nn.log_softmax(logits[b, len(s) - k - 1:len(s)].astype(mx.float32), axis=-1)  # (K+1, V)
            out.append(np.array(lp))
    return np.stack(out)  # (N, K+1, V)


def sym_kl_matrix(lp) -> "np.ndarray":
    """(N, N) mean over positions of the symmetric KL between rows of ``lp`` (N, K, V) log-probabilities."""
    import numpy as np

    lp = lp.astype(np.float64)
    p = np.exp(lp)
    n, k, _ = lp.shape
    d = np.zeros((n, n))
    for j in range(k):
        cross = p[:, j] @ lp[:, j].T  # (N, N): sum_v p_a log p_b
        self_ = np.diag(cross)  # sum_v p_a log p_a
        # KL(a||b) + KL(b||a) = sum p_a log p_a - p_a log p_b + p_b log p_b - p_b log p_a
        d += (self_[:, None] + self_[None, :] - cross - cross.T) / 2
    d /= k
    np.fill_diagonal(d, 0.0)
    return np.maximum(d, 0.0)


def distances(model, tokenizer, words: list[str], templates: list[tuple[str, str]], *, batch_size: int = 32):
    """(n_templates, N, N): d(words[a], words[b]) in each template."""
    import numpy as np

    return np.stack([sym_kl_matrix(tail_logprobs(model, tokenizer, words, t, batch_size=batch_size))
                     for t in templates])


def gap_stats(d, *, boot: int = 200, seed: int = 0) -> dict:
    """Gap, floor, ratio and its bootstrap standard error from ``d`` (T, 1 + m, 1 + m), word at index 0.

    Also ``per_tokenstein_gap``: d(word, T_i) averaged over templates, one per tokenstein.
    """
    import numpy as np

    n_t, n, _ = d.shape
    m = n - 1
    if m < 1:
        raise SupercalError("the gap needs at least one tokenstein")
    out = {"tokenstein_gap": float(d[:, 0, 1:].mean()), "per_tokenstein_gap": d[:, 0, 1:].mean(axis=0).tolist()}
    if m < 2:
        return out  # no floor from a single made-up word
    pairs = d[:, 1:, 1:]  # (T, m, m), zero diagonal
    floor = float(pairs.sum() / (n_t * m * (m - 1)))
    out["tokenstein_floor"] = floor
    out["gap_ratio"] = out["tokenstein_gap"] / floor if floor > 0 else float("inf")
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(boot):
        ts = rng.integers(0, n_t, n_t)
        ix = rng.integers(0, m, m)
        sub = pairs[ts][:, ix][:, :, ix]  # (T, m, m)
        distinct = ix[:, None] != ix[None, :]  # a tokenstein drawn twice is no pair
        if not distinct.any():
            continue
        f = sub[:, distinct].mean()
        if f > 0:
            ratios.append(d[ts][:, 0, 1 + ix].mean() / f)
    out["gap_ratio_se"] = float(np.std(ratios, ddof=1)) if len(ratios) > 1 else float("nan")
    return out
