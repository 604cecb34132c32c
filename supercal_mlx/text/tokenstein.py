"""Tokensteins: made-up words whose tokens are as common in the corpus as a word's own tokens.

For each token of the word, the candidates are the tokens that decode to
lowercase letters a-z only (after the ``▁`` marker of a SentencePiece-style
tokenizer, where a piece that starts a word is replaced by one that does too),
are not one of the word's own tokens, and whose
corpus count lies within ``deviation`` (relative) of the word token's count.
One candidate is drawn at random per position, no piece twice. Unlike the
original script, a position is never dropped: when no candidate is within the
deviation, the nearest counts are taken and the row is flagged. And the word
must re-encode to exactly the chosen pieces (so a model really sees those
tokens); a choice that merges differently is replaced by another.

The search goes left to right and backtracks. Checking each prefix is enough
to prune: byte-pair encoding merges the lowest-ranked pair first, so when a
whole word encodes to the chosen pieces, each prefix that ends at a piece
boundary encodes to the pieces before it.

Works in any :class:`~supercal_mlx.text.tokenizer.TextTokenizer` (a tiktoken
encoding or a model folder's tokenizer): only ``piece``, ``encode`` and
``n_vocab`` are used; by default the one the counts were made with.
"""

from __future__ import annotations

import functools
import os
import re
from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from .counting import Counts, check_counts_tokenizer, counts_tokenizer
from ..errors import SupercalError
from .tokenizer import TextTokenizer

# Give up after this many trial encodings (a word needs one per position when nothing merges).
MAX_TRIALS = 20000


@dataclass
class TokensteinRow:
    word_id: int
    word_piece: str
    word_count: int
    id: int
    piece: str
    count: int
    flagged: bool  # True: no candidate was within the deviation; the nearest count was taken


@dataclass
class Tokenstein:
    word: str
    rows: list[TokensteinRow]

    @property
    def flagged(self) -> bool:
        return any(r.flagged for r in self.rows)

    def as_dict(self) -> dict:
        return {"word": self.word, "rows": [asdict(r) for r in self.rows]}


_LOWER = re.compile("[a-z]+")


def _letters(tok: TextTokenizer, piece: str) -> bool:
    """Whether a piece is lowercase a-z, after a SentencePiece space marker ("▁abc") if the tokenizer has one."""
    return _LOWER.fullmatch(piece.removeprefix(tok.marker) if tok.marker else piece) is not None


def _text(tok: TextTokenizer, ids: list[int]) -> str:
    """The text of pieces that start a text: SentencePiece-style markers are spaces, and the one the
    tokenizer puts in front of every text ("▁abc" at the start is "abc") is dropped."""
    joined = "".join(tok.piece(t) for t in ids)
    return joined.replace(tok.marker, " ").removeprefix(" ") if tok.marker else joined


def _letter_tokens(tok: TextTokenizer) -> np.ndarray:
    """Ids of the tokens that are lowercase ASCII letters only (after a space marker), ascending."""
    if tok.name.startswith("model:"):  # model tokenizers are small and not cached (the folder may change)
        return _scan_letters(tok)
    return _letter_tokens_of_encoding(tok.name)


@functools.lru_cache(maxsize=4)
def _letter_tokens_of_encoding(name: str) -> np.ndarray:
    from .tokenizer import from_encoding

    return _scan_letters(from_encoding(name))


def _scan_letters(tok: TextTokenizer) -> np.ndarray:
    ids = []
    for i in range(tok.n_vocab):
        try:
            piece = tok.piece(i)
        except KeyError:  # gaps in the id range (o200k_base has some)
            continue
        if _letters(tok, piece):
            ids.append(i)
    return np.array(ids, dtype=np.int64)


def _candidate_order(word_count: int, ids: np.ndarray, counts: np.ndarray, deviation: float,
                     rng: np.random.Generator, min_pool: int = 1) -> tuple[np.ndarray, int]:
    """Candidates for one position: those within the deviation in random order, then the rest
    nearest first (random among equal distances). Returns (ids, how many are within).

    With ``min_pool`` > 1, when fewer than that many are within the deviation, the ``min_pool``
    nearest are shuffled together first (still counted as outside: flagged when chosen)."""
    dist = np.abs(counts - word_count)  # (n,)
    within = dist <= deviation * word_count
    n_within = int(within.sum())
    if n_within < min_pool:
        order = np.lexsort((rng.random(ids.size), dist))  # by distance, ties at random
        head = rng.permutation(order[:min_pool])
        return np.concatenate([ids[head], ids[order[min_pool:]]]), n_within
    inside = rng.permutation(ids[within])
    rest_ids, rest_dist = ids[~within], dist[~within]
    order = np.lexsort((rng.random(rest_ids.size), rest_dist))  # by distance, ties at random
    return np.concatenate([inside, rest_ids[order]]), int(inside.size)


def _search(tok: TextTokenizer, word_ids: list[int], orders: list[tuple[np.ndarray, int]], taken: set[str]) -> list[int] | None:
    """Depth-first: the first choice (in each position's order) whose text encodes back to it."""
    chosen: list[int] = []
    cursor = [0] * len(word_ids)
    trials = 0
    i = 0
    while 0 <= i < len(word_ids):
        cand, _ = orders[i]
        placed = False
        while cursor[i] < cand.size:
            t = int(cand[cursor[i]])
            cursor[i] += 1
            if t in chosen:
                continue
            trials += 1
            if trials > MAX_TRIALS:
                return None
            ids = chosen + [t]
            text = _text(tok, ids)
            if tok.encode(text) == ids and (i + 1 < len(word_ids) or text not in taken):
                chosen.append(t)
                placed = True
                break
        if placed:
            i += 1
        else:  # nothing fits here after this prefix: change the previous position
            cursor[i] = 0
            if chosen:
                chosen.pop()
            i -= 1
    return chosen if i == len(word_ids) else None


def make_tokenstein(word: str, counts: Counts, *, tokenizer: TextTokenizer | None = None, deviation: float = 0.04,
                    seed: int = 0, n: int = 1, exclude: Iterable[str] = (), min_pool: int = 1) -> list[Tokenstein]:
    """``n`` different tokensteins for ``word`` from the corpus ``counts``; the same seed gives the same words.

    ``tokenizer`` must be the one the counts were made with (default: rebuilt from the counts).
    No tokenstein equals a word in ``exclude`` (compared in lower case). ``min_pool``: when fewer
    candidates than this lie within the deviation at a position, draw from that many nearest ones
    (flagged), so a small vocabulary still gives varied words rather than the same nearest pieces.
    """
    if not word:
        raise SupercalError("the word is empty; give a non-empty word")
    if not 0 < deviation < 1:
        raise SupercalError(f"--deviation must lie between 0 and 1 (exclusive), got {deviation}; e.g. 0.04 for 4%")
    if n < 1:
        raise SupercalError(f"--n must be at least 1, got {n}")
    tok = tokenizer if tokenizer is not None else counts_tokenizer(counts)
    check_counts_tokenizer(counts, tok)
    word_ids = tok.encode(word)
    letters = _letter_tokens(tok)
    pool = letters[~np.isin(letters, word_ids)]  # never reuse one of the word's own pieces
    marked = np.array([tok.piece(int(i)).startswith(tok.marker) for i in pool], dtype=bool) if tok.marker else None

    rng = np.random.default_rng(seed)
    results: list[Tokenstein] = []
    taken: set[str] = {w.lower() for w in exclude} | {word.lower()}
    for _ in range(n):
        orders = []
        for w in word_ids:
            # SentencePiece-style: a piece that starts a word ("▁super") is replaced by one that does too
            same = pool if marked is None else pool[marked == tok.piece(w).startswith(tok.marker)]
            orders.append(_candidate_order(int(counts.counts[w]), same, counts.counts[same], deviation, rng, min_pool))
        chosen = _search(tok, word_ids, orders, taken)
        if chosen is None:
            raise SupercalError(
                f"found no{' further' if results else ''} tokenstein for {word!r} that re-encodes to its pieces; "
                "try another --seed, a larger --deviation or a smaller --n"
            )
        rows = []
        for w, t in zip(word_ids, chosen):
            rows.append(TokensteinRow(
                word_id=w, word_piece=tok.piece(w), word_count=int(counts.counts[w]),
                id=t, piece=tok.piece(t), count=int(counts.counts[t]),
                flagged=bool(abs(int(counts.counts[t]) - int(counts.counts[w])) > deviation * int(counts.counts[w])),
            ))
        tokenstein = Tokenstein(word=_text(tok, [r.id for r in rows]), rows=rows)
        taken.add(tokenstein.word)
        results.append(tokenstein)
    return results


def population(word: str, counts: Counts, *, n: int = 16, seed: int = 0, exclude: Iterable[str] = (),
               tokenizer: TextTokenizer | None = None, deviation: float = 0.04, min_pool: int = 16) -> list[str]:
    """A seeded population of ``n`` different tokensteins for ``word``, none of them a word in ``exclude``.

    What eval measures against: made-up words the model has never seen. Give as ``exclude`` the
    words of the corpus and of the forget data (:func:`words_in`), so no member occurs there. Where
    fewer than ``min_pool`` tokens lie within the deviation, each position draws from its ``min_pool``
    nearest (a small vocabulary would otherwise give near-copies of one word; 16 rather than fewer, because
    the earlier positions of a long word use up some of them: no piece twice).
    """
    return [t.word for t in make_tokenstein(word, counts, tokenizer=tokenizer, deviation=deviation, seed=seed, n=n,
                                            exclude=exclude, min_pool=min_pool)]


def population_from_files(word: str, counts_path: str | os.PathLike, *, n: int = 16, seed: int = 0,
                          corpora: Iterable[str | os.PathLike] = (), data_files: Iterable[str | os.PathLike] = (),
                          model_dir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """:func:`population` from a counts.npz, excluding every word of ``corpora`` and ``data_files`` (forget
    or retain JSONL). Without ``corpora`` the corpora the counts were made from are used where they still
    exist. Returns (tokensteins, the files whose words were excluded).

    Counts made in a model folder's tokenizer (``count --model``) are read with ``model_dir``'s tokenizer
    when it is the same tokenizer (e.g. the demo's copy of its model), else with the one they name.
    """
    from pathlib import Path

    from .counting import load_counts
    from .tokenizer import from_model

    counts = load_counts(counts_path)
    files = [str(f) for f in corpora] or [s for s in counts.sources if Path(s).is_file()]
    files += [str(f) for f in data_files]
    same = None
    if model_dir is not None:
        from .tokenizer import tokenizer_fingerprint

        # by content when the counts know theirs (files from before that: by folder name)
        same = (counts.tokenizer == tokenizer_fingerprint(model_dir) if counts.tokenizer
                else counts.encoding == f"model:{Path(model_dir).name}")
    if same:
        tok = from_model(model_dir)
    else:
        tok = counts_tokenizer(counts)
    return population(word, counts, n=n, seed=seed, exclude=words_in_files(files), tokenizer=tok), files


_WORDS = re.compile(r"[a-z]+")


def words_in(texts: Iterable[str]) -> set[str]:
    """Every maximal run of letters a-z in ``texts``, in lower case (the words a tokenstein must not be)."""
    out: set[str] = set()
    for text in texts:
        out.update(_WORDS.findall(text.lower()))
    return out


def words_in_files(paths: Iterable[str | os.PathLike]) -> set[str]:
    """:func:`words_in` of text files or corpora (any format ``supercal count`` reads), streamed in blocks."""
    from ..data.corpus import open_corpus

    out: set[str] = set()
    for path in paths:
        carry = ""
        for block in open_corpus(path).iter_text():
            text = carry + block.lower()
            cut = len(text.rstrip("abcdefghijklmnopqrstuvwxyz"))  # a word may run on into the next block
            out.update(_WORDS.findall(text[:cut]))
            carry = text[cut:]
        out.update(_WORDS.findall(carry))
    return out


def read_tokenstein_file(path: str | os.PathLike) -> list[str]:
    """Made-up words from a file: one per line (blank lines and ``#`` comments skipped), or JSON: a list of
    words, ``{"tokensteins": [...]}`` (a demo's results.json) or ``supercal tokenstein --json`` output."""
    import json
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise SupercalError(f"cannot read the tokenstein file {path}: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        data = data.get("tokensteins")
    if isinstance(data, list):
        words = [d["word"] if isinstance(d, dict) and "word" in d else d for d in data]
    elif data is None and not text.lstrip().startswith(("{", "[")):
        words = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        words = []
    if not words or not all(isinstance(w, str) and w.strip() and not any(c.isspace() for c in w.strip()) for w in words):
        raise SupercalError(f"{path} holds no list of made-up words; give one word per line (or a JSON list of words)")
    return list(dict.fromkeys(w.strip() for w in words))


def markdown_table(tokenstein: Tokenstein) -> str:
    """word piece | count | tokenstein piece | count, one row per token (flagged rows marked)."""
    lines = ["| word piece | count | tokenstein piece | count |", "|---|---:|---|---:|"]
    for r in tokenstein.rows:
        mark = " (nearest; none within deviation)" if r.flagged else ""
        lines.append(f"| {r.word_piece} | {r.word_count:,} | {r.piece}{mark} | {r.count:,} |")
    return "\n".join(lines)
