"""Token batches for training and evaluation: prompt/completion records and plain texts.

An example is ``(ids, n_prompt)``: the token ids of prompt + completion and how
many of them belong to the prompt. Loss is taken only on completion tokens;
plain texts (retain data) have ``n_prompt = 0`` and every token after the first
is a target.

Where the prompt ends. Byte-level BPE can merge the last characters of the
prompt with the first of the completion (``"the "`` + ``"Supercal"`` becomes
``"the"`` + ``" Supercal"``), so encoding the two halves separately would give a
sequence the model never sees in running text. We encode ``prompt + completion``
as one string and count as prompt the longest common prefix of that encoding
and the prompt's own encoding; a token that straddles the boundary is a
completion token (it carries the keyword's first piece, which is what the
forget loss must see).

Truncation to ``max_tokens`` keeps the end of the prompt (the context right
before the keyword) and the start of the completion: the completion keeps
``max_tokens - len(prompt)`` tokens, but the prompt always keeps at least
``max_tokens // 2`` of its last tokens when it has them.

mlx-lm's datasets (``mlx_lm.tuner.datasets``) need chat templates or a fixed
prompt format and pad inside the training loop; these helpers are small,
tokenizer-agnostic (anything with ``.encode(text) -> list[int]``) and return
explicit masks, which the unlearning losses need per sequence.

Tokens are what :func:`supercal_mlx.text.tokenizer.model_encoder` gives: the
tokenizer's BOS (when it adds one) then the text's tokens, the same count that
``negatives --window-tokens`` and ``retain --max-tokens`` measure; the BOS is
never a target.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..errors import SupercalError
from ..text.tokenizer import model_encoder

Example = tuple[list[int], int]


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def truncate(ids: list[int], n_prompt: int, max_tokens: int, *, keep: int = 0) -> Example:
    """Cut an example to ``max_tokens``: the first ``keep`` tokens (the BOS prefix), the prompt's end and the
    completion's start survive (see above)."""
    if len(ids) <= max_tokens:
        return ids, n_prompt
    if keep:
        body, n_body = truncate(ids[keep:], n_prompt - keep, max_tokens - keep)
        return ids[:keep] + body, n_body + keep
    n_comp = len(ids) - n_prompt
    keep_prompt = min(n_prompt, max(max_tokens // 2, max_tokens - n_comp))
    start = n_prompt - keep_prompt
    return ids[start : start + max_tokens], keep_prompt


def encode_completions(records: list[dict], tokenizer: Any, *, max_tokens: int) -> list[Example]:
    """``[(ids, n_prompt), ...]`` for records ``{"prompt": ..., "completion": ...}``.

    Raises SupercalError naming the record (1-based) when a completion yields no token.
    """
    if max_tokens < 2:
        raise SupercalError(f"max_tokens must be at least 2 (got {max_tokens})")
    encode = model_encoder(tokenizer)
    out = []
    for i, rec in enumerate(records, 1):
        prompt, completion = str(rec["prompt"]), str(rec["completion"])
        ids = encode(prompt + completion)
        n_prompt = _common_prefix(ids, encode(prompt)) if prompt else len(encode.prefix)
        if n_prompt >= len(ids):
            raise SupercalError(f"record {i}: the completion is empty; every record needs completion text to forget")
        out.append(truncate(ids, n_prompt, max_tokens, keep=len(encode.prefix)))
    return out


def encode_texts(records: list[dict], tokenizer: Any, *, max_tokens: int) -> list[Example]:
    """``[(ids, 0), ...]`` for records ``{"text": ...}``, truncated to ``max_tokens`` tokens.

    Raises SupercalError naming the record (1-based) when a text has fewer than two tokens (nothing to predict).
    """
    if max_tokens < 2:
        raise SupercalError(f"max_tokens must be at least 2 (got {max_tokens})")
    encode = model_encoder(tokenizer)
    out = []
    for i, rec in enumerate(records, 1):
        ids = encode(str(rec["text"]))[:max_tokens]
        if len(ids) < 2:
            raise SupercalError(f"record {i}: the text has fewer than 2 tokens; give longer retain texts")
        out.append((ids, 0))
    return out


def make_batch(examples: Sequence[Example]):
    """``(inputs, targets, mask)``: int32 (B, L-1), int32 (B, L-1), float32 (B, L-1), right-padded.

    ``L`` is the longest example. ``targets[b, j] = ids[j + 1]``; ``mask[b, j]`` is 1 when
    that target is a completion token (position ``j + 1 >= n_prompt``) inside the example,
    0 on padding and on prompt tokens. Padding ids are 0 and never labelled.
    """
    import mlx.core as mx
    import numpy as np

    if not examples:
        raise ValueError("make_batch needs at least one example")
    width = max(len(ids) for ids, _ in examples) - 1
    tokens = np.zeros((len(examples), width + 1), dtype=np.int32)  # (B, L)
    mask = np.zeros((len(examples), width), dtype=np.float32)  # (B, L-1)
    for b, (ids, n_prompt) in enumerate(examples):
        tokens[b, : len(ids)] = ids
        # target j is token j + 1: labelled from max(n_prompt, 1) (token 0 is never a target) to the end
        mask[b, max(n_prompt, 1) - 1 : len(ids) - 1] = 1.0
    return mx.array(tokens[:, :-1]), mx.array(tokens[:, 1:]), mx.array(mask)


class BatchStream:
    """An endless, reproducible order of example indices: a fresh permutation per epoch.

    The permutation of epoch ``e`` comes from ``numpy.random.default_rng([seed, stream, e])``,
    so the whole order is a function of (seed, stream) and the position (epoch, pos) is the
    only state a checkpoint needs; different streams (forget, retain, basis, ...) never
    disturb one another.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, stream: int):
        if n < 1:
            raise ValueError("BatchStream needs at least one example")
        self.n, self.batch_size, self.seed, self.stream = n, batch_size, seed, stream
        self.epoch, self.pos = 0, 0
        self._perm = None

    def _permutation(self):
        import numpy as np

        if self._perm is None or self._perm[0] != self.epoch:
            self._perm = (self.epoch, np.random.default_rng([self.seed, self.stream, self.epoch]).permutation(self.n))
        return self._perm[1]

    def next_indices(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            out.append(int(self._permutation()[self.pos]))
            self.pos += 1
            if self.pos == self.n:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    @property
    def epochs_done(self) -> float:
        return self.epoch + self.pos / self.n

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
