"""Token windows on word boundaries: the tools that cut text into pieces of at most N tokens
without splitting a word, shared by the forget (:mod:`.negatives`) and retain (:mod:`.retain`) sets.

* A *word character* is what ``\\w`` matches in Python's ``re`` (and ``grep -w``): every character for
  which ``str.isalnum()`` is true, non-ASCII letters and digits included, plus ``_``.
* A *boundary* is a position (0..len) that is not between two word characters: the only places a
  window edge may fall.
* :class:`Tokenized` holds one text's boundaries and token starts and memoises the token counts of
  its slices; ``widest_left`` / ``widest_right`` find the widest slice within a token budget with a
  galloping search (:func:`first_ok`) from a hint, so a window costs a handful of encodes.

Token counts are always of the exact slice (``encode(text[a:b])``): BPE merges across a cut make
"tokens of the whole text between a and b" a different, wrong number in general. With a tiktoken
encoding a slice is counted without encoding it whole, exactly: :mod:`supercal_mlx.text.counting`
proves that cutting text at a *safe cut* (right after a letter or digit that is followed by anything
but a letter, mark, digit or apostrophe) leaves its tokens unchanged, and whether a place is a safe
cut depends only on the two characters around it, so it is one in every slice that holds both. So
``tokens(text[a:b]) = tokens(text[a:c]) + (tokens of the whole text between c and d) +
tokens(text[d:b])`` with c the first and d the last safe cut in [a, b]: two short encodes and a
look-up in the whole text's tokens instead of encoding an 800-token slice (tests/test_negatives.py
checks it against encoding every slice). mlx-lm has no such tools; this module is hand-written.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Callable

import numpy as np

from ..text.tokenizer import TextTokenizer


def is_word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


_ASCII_WORD = np.array([is_word_char(chr(c)) for c in range(128)])


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", errors="surrogatepass"), dtype=np.uint32)


_SEEN: dict[Callable, dict[int, bool]] = {}  # test -> {non-ASCII code point: test(chr(it))}


def _classify(cps: np.ndarray, ascii_table: np.ndarray, test: Callable[[str], bool]) -> np.ndarray:
    """``test(chr(c))`` for every code point, from a table for ASCII and one call per distinct other one."""
    out = ascii_table[np.minimum(cps, 127)]
    high = cps >= 128
    if high.any():  # few distinct non-ASCII characters: ask about each once (per process)
        seen = _SEEN.setdefault(test, {})
        uniq = np.unique(cps[high]).tolist()
        for c in uniq:
            if c not in seen:
                seen[c] = bool(test(chr(c)))
        out[high] = np.array([seen[c] for c in uniq])[np.searchsorted(uniq, cps[high])]
    return out


def word_mask(text: str, cps: np.ndarray | None = None) -> np.ndarray:
    """Whether each character of ``text`` is a word character (vectorised ``\\w``)."""
    return _classify(_code_points(text) if cps is None else cps, _ASCII_WORD, is_word_char)


_CUT_CLASSES: list = []  # [(ascii table, test)] for "letter or digit" and "letter, mark, digit or apostrophe"


def safe_cuts(text: str, cps: np.ndarray | None = None) -> np.ndarray:
    """Every position 0 < i < len(text) that is a safe cut (:data:`supercal_mlx.text.counting._SAFE_CUT_PATTERN`:
    right after a letter or digit followed by anything but a letter, mark, digit or apostrophe)."""
    if not _CUT_CLASSES:
        import regex  # the same Unicode classes as the pattern counting uses

        for cls in (r"[\p{L}\p{N}]", r"[\p{L}\p{M}\p{N}']"):
            test = regex.compile(cls).fullmatch
            _CUT_CLASSES.append((np.array([test(chr(c)) is not None for c in range(128)]),
                                 lambda ch, t=test: t(ch) is not None))
    cps = _code_points(text) if cps is None else cps
    (ln_table, ln), (lmn_table, lmn) = _CUT_CLASSES
    return np.flatnonzero(_classify(cps[:-1], ln_table, ln) & ~_classify(cps[1:], lmn_table, lmn)) + 1


def boundaries(text: str, cps: np.ndarray | None = None) -> list[int]:
    """Every position in ``text`` (0..len) where an edge may fall: not between two word characters."""
    word = word_mask(text, cps)
    allowed = np.ones(len(text) + 1, dtype=bool)
    allowed[np.flatnonzero(word[:-1] & word[1:]) + 1] = False
    return np.flatnonzero(allowed).tolist()


_TOKEN_BYTES: dict[int, np.ndarray] = {}  # id(tiktoken encoding) -> bytes per token id


def _tiktoken_lengths(enc) -> np.ndarray:
    """Bytes of each token id of a tiktoken encoding (0 for unused ids)."""
    if id(enc) not in _TOKEN_BYTES:
        lengths = np.zeros(enc.n_vocab, dtype=np.int64)
        ranks, special = getattr(enc, "_mergeable_ranks", None), getattr(enc, "_special_tokens", None)
        if isinstance(ranks, dict) and isinstance(special, dict):  # what tiktoken decodes tokens with
            n = len(ranks)
            lengths[np.fromiter(ranks.values(), np.int64, n)] = np.fromiter(map(len, ranks), np.int64, n)
            for text, i in special.items():
                lengths[i] = len(text.encode())
        else:
            for i in range(enc.n_vocab):
                try:
                    lengths[i] = len(enc.decode_single_token_bytes(i))
                except KeyError:  # unused ids in the vocabulary
                    pass
        _TOKEN_BYTES[id(enc)] = lengths
    return _TOKEN_BYTES[id(enc)]


def _is_tiktoken(tokenizer: TextTokenizer) -> bool:
    return tokenizer.fingerprint.startswith("tiktoken:") and hasattr(tokenizer.raw, "decode_single_token_bytes")


def token_starts(tokenizer: TextTokenizer, text: str, ids: list[int]) -> list[int]:
    """Approximate character start of each token of ``text`` (only used as a search hint)."""
    raw = tokenizer.raw
    if hasattr(raw, "decode_single_token_bytes") and ids:  # tiktoken: exact, from byte lengths
        lengths = _tiktoken_lengths(raw)[np.asarray(ids)]
        byte_starts = np.cumsum(lengths) - lengths
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        char_at = np.cumsum((data & 0xC0) != 0x80) - 1  # the character each byte belongs to
        return char_at[np.minimum(byte_starts, len(data) - 1)].tolist()
    if getattr(raw, "is_fast", False):  # Hugging Face fast tokenizers
        enc = raw(text, add_special_tokens=False, return_offsets_mapping=True)
        return [a for a, _ in enc["offset_mapping"]]
    starts, pos = [], 0
    for i in ids:
        starts.append(pos)
        pos += len(tokenizer.piece(i))
    return starts


def first_ok(n: int, ok: Callable[[int], bool], hint: int) -> int:
    """Smallest i in [0, n) with ``ok(i)``, where ok is False...False True...True and ok(n-1) holds.

    Gallops outward from ``hint``, so a good hint costs a handful of calls. Only indices that were
    checked (or n-1) are returned, so the answer satisfies ``ok`` even if ok is not quite monotone.
    """
    hint = min(max(hint, 0), n - 1)
    step = 1
    if ok(hint):
        lo, hi = -1, hint  # lo: known to fail (or before the start), hi: known ok
        while hi > 0:
            j = max(hi - step, 0)
            if not ok(j):
                lo = j
                break
            hi, step = j, step * 2
    else:
        lo, hi = hint, n - 1
        while lo + step < n - 1:
            j = lo + step
            if ok(j):
                hi = j
                break
            lo, step = j, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


class Tokenized:
    """One chunk: its word boundaries, token starts and memoised token counts of its slices.

    A slice's count is what the model sees when the slice is fed alone (``TextTokenizer.count``: the BOS
    prefix, if the tokenizer adds one, then the slice's tokens), as unlearn and eval encode each record.
    """

    def __init__(self, text: str, tokenizer: TextTokenizer):
        self.text, self.tok = text, tokenizer
        cps = _code_points(text)
        self.bounds = boundaries(text, cps)
        ids = tokenizer.encode(text)
        self.n = len(tokenizer.prefix) + len(ids)
        self.starts = token_starts(tokenizer, text, ids)
        self._n: dict[tuple[int, int], int] = {(0, len(text)): self.n}
        self._cuts: list[int] | None = None  # safe cuts (0 and len(text) included), tiktoken only
        if _is_tiktoken(tokenizer) and text and not np.any((cps >= 0xD800) & (cps < 0xE000)):
            cuts = np.concatenate(([0], safe_cuts(text, cps), [len(text)]))
            char_bytes = 1 + (cps >= 0x80).astype(np.int64) + (cps >= 0x800) + (cps >= 0x10000)
            cut_bytes = np.concatenate(([0], np.cumsum(char_bytes)))[cuts]
            lengths = _tiktoken_lengths(tokenizer.raw)[np.asarray(ids, dtype=np.int64)]
            token_bytes = np.cumsum(lengths) - lengths  # byte offset where each token starts
            self._cuts = cuts.tolist()
            self._cut_tokens = np.searchsorted(token_bytes, cut_bytes).tolist()  # tokens before each cut

    def _encoded(self, a: int, b: int) -> int:
        return len(self.tok.encode(self.text[a:b])) if b > a else 0

    def ntok(self, a: int, b: int) -> int:
        key = (a, b)
        if key not in self._n:
            cuts = self._cuts
            i = bisect_left(cuts, a) if cuts is not None else 0
            j = bisect_right(cuts, b) - 1 if cuts is not None else -1
            if i <= j:  # the whole text's tokens between safe cuts c and d, the ends encoded alone
                c, d = cuts[i], cuts[j]
                self._n[key] = (len(self.tok.prefix) + self._encoded(a, c) + self._cut_tokens[j] - self._cut_tokens[i]
                                + self._encoded(d, b))
            else:
                self._n[key] = self.tok.count(self.text[a:b])
        return self._n[key]

    def token_at(self, pos: int) -> int:
        return max(bisect_right(self.starts, pos) - 1, 0)

    def pos_of_token(self, t: int) -> int:
        return self.starts[t] if 0 <= t < len(self.starts) else (0 if t < 0 else len(self.text))

    def widest_left(self, s: int, e: int, limit: int) -> int:
        """Smallest edge a <= s with ntok(a, e) <= limit (a = s always fits)."""
        cands = self.bounds[: bisect_right(self.bounds, s)]  # ascending: widest first
        want = limit - self.ntok(s, e)
        hint = bisect_left(cands, self.pos_of_token(self.token_at(s) - want))
        return cands[first_ok(len(cands), lambda i: self.ntok(cands[i], e) <= limit, hint)]

    def widest_right(self, a: int, e: int, limit: int) -> int:
        """Largest edge b >= e with ntok(a, b) <= limit (b = e must fit)."""
        asc = self.bounds[bisect_left(self.bounds, e):]
        n = len(asc)  # candidate i is asc[n - 1 - i]: widest first
        hint = n - bisect_right(asc, self.pos_of_token(self.token_at(a) + limit))
        return asc[n - 1 - first_ok(n, lambda i: self.ntok(a, asc[n - 1 - i]) <= limit, hint)]
