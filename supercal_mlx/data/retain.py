"""Retain data: random chunks of consecutive lines that never contain an excluded word.

One streaming pass over the corpus. The corpus is cut into consecutive blocks of ``lines`` lines
(the last block may be shorter). A block is eligible when it is not blank and none of its lines
contains an excluded word as a case-insensitive *substring*: stricter than the whole-word test for
mentions, because a retain text must not contain the word in any form ("Supercal...ly" included).

Reservoir sampling (Algorithm R with a seeded ``random.Random``) keeps ``chunks`` eligible blocks;
only those are tokenized, at the end, and cut to at most ``max_tokens`` tokens at a word boundary
(see :mod:`supercal_mlx.data.windows` for what a boundary is). A block's text is kept up to
``CHARS_PER_TOKEN * max_tokens`` characters, so memory is at most ``chunks + 1`` such texts, however
large the corpus. The same corpus, options and seed give the same records in the same order.
"""

from __future__ import annotations

import os
import random
import re
import statistics
from typing import Callable, Iterator

from .corpus import Corpus, as_corpus, progress_lines
from .windows import Tokenized, is_word_char
from ..errors import SupercalError
from ..io import read_jsonl
from ..text.tokenizer import TextTokenizer

# A block's text is kept up to this many characters per allowed token before tokenizing: far more
# than real text needs (English averages about 4), so only pathological lines are shortened.
CHARS_PER_TOKEN = 16
HEAD_CHARS = 6
_TRAILING_WORD = re.compile(r"\w+\Z")
_LEADING_WORD = re.compile(r"\w*")


def exclude_pattern(words: list[str]) -> re.Pattern:
    if not words or any(not w.strip() for w in words):
        raise SupercalError("give at least one non-empty word to exclude (--exclude WORD)")
    return re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)


def truncate_tokens(text: str, tokenizer: TextTokenizer, max_tokens: int) -> tuple[str, int]:
    """The longest prefix of ``text`` that ends at a word boundary and has at most ``max_tokens`` tokens."""
    # Real text averages about 4 characters per token, so a head of HEAD_CHARS per token almost
    # always holds max_tokens tokens: tokenize only that; the cut is the same as in the whole text.
    head = text[: HEAD_CHARS * max_tokens]
    n = tokenizer.count(head)
    if n <= max_tokens:
        if len(head) == len(text):
            return text, n
        head = text  # an unusual text: tokenize it whole
        n = tokenizer.count(head)
        if n <= max_tokens:
            return text, n
    view = Tokenized(head, tokenizer)
    end = view.widest_right(0, 0, max_tokens)
    if end == 0 and len(view.bounds) > 1 and view.ntok(0, view.bounds[1]) <= max_tokens:
        end = view.bounds[1]  # token counts that are not monotone in the length: keep the first word
    return text[:end], view.ntok(0, end)


def _first_word_fits(text: str, tokenizer: TextTokenizer, max_tokens: int) -> bool:
    """Whether the text up to its first word boundary has at most ``max_tokens`` tokens."""
    first = _LEADING_WORD.match(text).end() or 1
    return first <= max_tokens // 4 or tokenizer.count(text[:first]) <= max_tokens  # <= 4 tokens a character


def _blocks(lines: Iterator[str], pattern: re.Pattern, n_lines: int, cap: int) -> Iterator[tuple[int, str, bool]]:
    """(block index, text capped at a word boundary near ``cap`` chars, whether it holds an excluded word)."""
    pieces: list[str] = []
    size, count, index, bad = 0, 0, 0, False
    for line in lines:
        bad = bad or pattern.search(line) is not None
        if size <= cap:  # keep one character past the cap to see whether the cap cuts a word
            piece = line[: cap + 1 - size]
            pieces.append(piece)
            size += len(piece)
        count += 1
        if count == n_lines:
            yield index, _cap("".join(pieces), cap), bad
            pieces, size, count, index, bad = [], 0, 0, index + 1, False
    if count:
        yield index, _cap("".join(pieces), cap), bad


def _cap(text: str, cap: int) -> str:
    if len(text) <= cap:
        return text
    head = text[:cap]
    if is_word_char(text[cap]) and is_word_char(head[-1]):
        head = head[: _TRAILING_WORD.search(head).start()]
    return head


def retain_dataset(
    corpus: str | os.PathLike | Corpus,
    exclude: list[str],
    tokenizer: TextTokenizer,
    *,
    chunks: int,
    lines: int = 20,
    max_tokens: int = 800,
    seed: int = 0,
    add_prefixes: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """(records, summary): ``chunks`` random chunks of ``lines`` consecutive lines without any ``exclude``
    word, as ``{"text": ...}``, and what was read and kept.

    Each is cut to at most ``max_tokens`` tokens at a word boundary. ``add_prefixes`` (a forget
    JSONL file) appends the distinct forget prompts that contain no excluded word, so the model keeps
    the context and forgets only the word. Raises SupercalError if the corpus has too few chunks.
    """
    if chunks < 1:
        raise SupercalError(f"--chunks must be at least 1, got {chunks}")
    if lines < 1:
        raise SupercalError(f"--lines must be at least 1, got {lines}")
    if max_tokens < 1:
        raise SupercalError(f"--max-tokens must be at least 1, got {max_tokens}")
    pattern = exclude_pattern(list(exclude))
    prompts = [r["prompt"] for r in read_jsonl(add_prefixes, text=("prompt",))] if add_prefixes else []
    corp = as_corpus(corpus)

    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []  # (block index, text not yet cut to max_tokens)
    seen = blocks = with_word = too_long = 0  # `seen`: eligible blocks so far
    for index, text, bad in _blocks(progress_lines(corp, progress), pattern, lines, CHARS_PER_TOKEN * max_tokens):
        blocks += 1
        if bad:
            with_word += 1
        elif not text.strip():
            pass
        elif not _first_word_fits(text, tokenizer, max_tokens):
            too_long += 1
        else:
            j = seen if seen < chunks else rng.randrange(seen + 1)
            seen += 1
            if j < len(reservoir):
                reservoir[j] = (index, text)
            elif j < chunks:
                reservoir.append((index, text))
    if corp.text_bytes == 0:
        raise SupercalError(f"corpus {corp.path} holds no text; give a file with text in it")
    if seen < chunks:
        raise SupercalError(
            f"asked for {chunks} retain chunks but {corp.path} holds only {seen} chunks of {lines} lines "
            f"without {', '.join(exclude)}; ask for fewer (--chunks) or shorter ones (--lines)"
        )
    reservoir.sort()
    rng.shuffle(reservoir)
    records, counts = [], []
    for _, text in reservoir:  # tokenizing only the chosen chunks, once
        cut, n = truncate_tokens(text, tokenizer, max_tokens)
        records.append({"text": cut})
        counts.append(n)

    added = skipped = 0
    known = {r["text"] for r in records}
    for prompt in prompts:
        if not prompt.strip():
            continue
        if pattern.search(prompt):  # an earlier mention in the same chunk: never in retain data
            skipped += 1
            continue
        cut, n = truncate_tokens(prompt, tokenizer, max_tokens)
        if cut.strip() and cut not in known:
            known.add(cut)
            records.append({"text": cut})
            counts.append(n)
            added += 1
    summary = {
        "corpus": str(corp.path),
        "invalid_bytes": corp.invalid_bytes,  # not UTF-8, replaced with U+FFFD (the CLI warns)
        "exclude": list(exclude),
        "tokenizer": tokenizer.name,
        "lines": lines,
        "max_tokens": max_tokens,
        "seed": seed,
        "blocks": blocks,
        "blocks_with_word": with_word,
        "eligible": seen,
        "first_word_too_long": too_long,
        "chunks": len(reservoir),
        "prefixes_added": added,
        "prefixes_with_word": skipped,
        "records": len(records),
        "tokens": {"min": min(counts), "median": statistics.median(counts), "max": max(counts)},
    }
    return records, summary

