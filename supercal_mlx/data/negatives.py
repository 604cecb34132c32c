"""Forget data: every mention of a keyword, grep-style context, token windows that never cut a word.

Pipeline: corpus lines -> chunks (``grep -i -C N``, or existing grep output split on ``--`` lines)
-> whole-word mentions in each chunk -> for each mention, windows of about ``window_tokens`` tokens
that slide from "keyword at the end" to "keyword at the start" -> records
``{"prompt": text before the keyword, "completion": keyword and what follows}``.

Definitions (so anyone can check the output with standard tools):

* A *word character* is what ``\\w`` matches in Python's ``re`` (and ``grep -w``): every character for
  which ``str.isalnum()`` is true, non-ASCII letters and digits included, plus ``_``.
* A *mention* is a case-insensitive occurrence of the keyword with no word character right before or
  after it (``grep -i -w``). "supercalifragilisticexpialidociously", "unsupercal..." or
  "..._(song)" are near-misses, not mentions; "Supercal...'s" and "Supercal...-like" are mentions.
* *Chunks* are what ``grep -i -C N KEYWORD`` prints: lines containing the keyword as a substring
  (near-misses included, like grep), N lines either side, overlapping or touching contexts merged,
  blank lines counted. A chunk with only near-misses gives no windows.
* A window edge is never between two word characters, the keyword is never split, and
  ``prompt + completion`` is a contiguous piece of the chunk, hence of the source (or of its
  unescaped form). Nothing is ever padded. Each window has at most ``window_tokens`` tokens, counted
  by encoding exactly ``prompt + completion`` as unlearn and eval feed it to the model: with the BOS token
  in front when the model's tokenizer adds one (``TextTokenizer.count``).
* ``unescape_html``: enwik9 escapes the wiki source for XML, and the wiki source itself uses HTML
  entities, so an em dash is stored as ``&amp;mdash;``. We unescape twice (``html.unescape`` of
  ``html.unescape``), giving the text a reader of the page sees ("—", ``<ref>``, ``"``).

Word boundaries and token counts of slices come from :mod:`supercal_mlx.data.windows`.
mlx-lm has no corpus tools; this module is hand-written. Memory: one chunk at a time plus a deque of
the last N lines; with ``stream=True`` (the CLI) the records are handed on as they are made, so memory
stays flat however common the word, and ``max_windows`` stops a word too common for a forget set (``the``
in a 60 MB corpus made millions of windows: 19 GB of records when they were all kept) with a one-line error.
"""

from __future__ import annotations

import os
import re
from collections import Counter, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .corpus import Corpus, as_corpus, progress_lines
from .scan import scan_lines
from .windows import Tokenized, is_word_char
from ..errors import SupercalError
from ..text.tokenizer import TextTokenizer


def keyword_patterns(keyword: str) -> tuple[re.Pattern, re.Pattern]:
    """(substring pattern, whole-word pattern), both case-insensitive."""
    if not keyword or not keyword.strip():
        raise SupercalError("the keyword is empty; give --keyword WORD")
    body = re.escape(keyword)
    left = r"(?<!\w)" if is_word_char(keyword[0]) else ""
    right = r"(?!\w)" if is_word_char(keyword[-1]) else ""
    return re.compile(body, re.IGNORECASE), re.compile(left + body + right, re.IGNORECASE)


def unescape_twice(text: str) -> str:
    """enwik9 text as a reader sees it: undo the XML escaping, then the wiki's own HTML entities."""
    import html

    return html.unescape(html.unescape(text))


@dataclass
class Chunk:
    text: str
    line: int  # 1-based number of its first line in the input


# One chunk is held in memory; this much text in one chunk means a wrong input, not a forget set.
MAX_CHUNK_CHARS = 8 << 20


def _check_line(line: str, lineno: int) -> None:
    """One line over the chunk limit is refused with advice that helps (fewer context lines would not)."""
    if len(line) > MAX_CHUNK_CHARS:
        raise SupercalError(f"line {lineno} alone holds over {MAX_CHUNK_CHARS >> 20} MB of text (a file without line "
                            "breaks?); break it into lines first, e.g. fold -s -w 1000 CORPUS > lines.txt")


def grep_chunks(lines: Iterable[str], pattern: re.Pattern, *, context: int = 5) -> Iterator[Chunk]:
    """Chunks as ``grep -i -C context`` prints them, streamed: keeps only the last ``context`` lines."""
    return _grep(enumerate(lines, 1), pattern, context)


def _grep(numbered: Iterable[tuple[int, str]], pattern: re.Pattern, context: int) -> Iterator[Chunk]:
    """:func:`grep_chunks` on (line number, line) pairs; lines that cannot change a chunk may be left out
    (:func:`supercal_mlx.data.scan.scan_lines` leaves out most of a corpus)."""
    before: deque[str] = deque(maxlen=context)
    current: list[str] | None = None
    first = size = 0  # line number of current[0], characters in current
    after = 0  # context lines still to add after the last match
    gap = 0  # lines seen since the current chunk's last line (they sit in `before`)
    for lineno, line in numbered:
        if pattern.search(line):
            if current is None:
                current, first, size = list(before), lineno - len(before), sum(map(len, before))
            elif gap:
                current.extend(before)  # the gap is no longer than `context`: grep prints no "--"
                size += sum(map(len, before))
            before.clear()
            current.append(line)
            size += len(line)
            after, gap = context, 0
            _check_line(line, lineno)
            if size > MAX_CHUNK_CHARS:
                raise SupercalError(
                    f"the contexts of the keyword run together into over {MAX_CHUNK_CHARS >> 20} MB of text from line "
                    f"{first}: the word is too common for grep-style contexts; use a rarer word or --context-lines 0"
                )
        elif current is not None and after:
            current.append(line)
            size += len(line)
            after -= 1
        else:
            before.append(line)
            if current is not None:
                gap += 1
                if gap > context:
                    yield Chunk("".join(current), first)
                    current, gap = None, 0
    if current is not None:
        yield Chunk("".join(current), first)


def split_grep_output(lines: Iterable[str]) -> Iterator[Chunk]:
    """Chunks of existing ``grep -C`` output: the text between ``--`` separator lines."""
    current: list[str] = []
    first = size = 0
    for lineno, line in enumerate(lines, 1):
        if line.rstrip("\r\n") == "--":
            if current:
                yield Chunk("".join(current), first)
            current, size = [], 0
        else:
            first = first if current else lineno
            current.append(line)
            size += len(line)
            _check_line(line, lineno)
            if size > MAX_CHUNK_CHARS:
                raise SupercalError(
                    f"no '--' separator line in over {MAX_CHUNK_CHARS >> 20} MB from line {first}: this is not "
                    "grep -C output; drop --from-grep to read a plain corpus"
                )
    if current:
        yield Chunk("".join(current), first)


def mention_windows(chunk: Tokenized, s: int, e: int, *, window_tokens: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, end, tokens) of each window for the mention text[s:e], keyword at the end first."""
    k = chunk.ntok(s, e)
    if k > window_tokens:
        raise SupercalError(
            f"--window-tokens {window_tokens} is smaller than the keyword: {chunk.text[s:e]!r} is {k} tokens; "
            f"use --window-tokens {k} or more"
        )
    targets = list(range(window_tokens - k, 0, -stride)) + [0]  # tokens of context before the keyword
    out: list[tuple[int, int, int]] = []
    for p in targets:
        a = chunk.widest_left(s, e, min(window_tokens, p + k)) if p else s  # p = 0: the keyword starts it
        b = chunk.widest_right(a, e, window_tokens)
        if not out or (a, b) != out[-1][:2]:
            out.append((a, b, chunk.ntok(a, b)))
    return out


def build_forget(
    corpus: str | os.PathLike | Corpus,
    keyword: str,
    tokenizer: TextTokenizer,
    *,
    context_lines: int = 5,
    window_tokens: int = 800,
    stride: int | None = None,
    from_grep: bool = False,
    unescape_html: bool = False,
    progress: Callable[[int, int], None] | None = None,
    max_windows: int | None = None,
    stream: bool = False,
) -> tuple[list[dict] | Iterator[dict], dict]:
    """Forget records for every mention of ``keyword`` and a summary (see the module docstring).

    ``stride`` defaults to a quarter of ``window_tokens`` (five windows per mention when the context
    allows). Raises SupercalError when the keyword is not mentioned at all, or gives more than
    ``max_windows`` windows. With ``stream``, the records come as an iterator, the work is done as it is
    consumed, and the summary dict is filled in once it is exhausted.
    """
    if window_tokens < 1:
        raise SupercalError(f"--window-tokens must be at least 1, got {window_tokens}")
    if context_lines < 0:
        raise SupercalError(f"--context-lines must be 0 or more, got {context_lines}")
    stride = max(window_tokens // 4, 1) if stride is None else stride
    if stride < 1:
        raise SupercalError(f"--stride must be at least 1 token, got {stride}")
    substring, whole = keyword_patterns(keyword)
    # fail before reading the corpus; a tokenizer not loaded yet (LazyTokenizer) is loaded for this only when its
    # bound on the keyword's tokens does not settle it
    bound = getattr(tokenizer, "most_tokens", None)
    keyword_tokens = bound(keyword) if bound is not None else tokenizer.count(keyword)
    if keyword_tokens > window_tokens:
        keyword_tokens = tokenizer.count(keyword)
    if keyword_tokens > window_tokens:
        raise SupercalError(
            f"--window-tokens {window_tokens} is smaller than the keyword ({keyword_tokens} tokens); "
            "give a larger --window-tokens"
        )
    corp = as_corpus(corpus)
    if from_grep:
        chunks = split_grep_output(progress_lines(corp, progress))
    else:  # whole blocks searched at once; only lines near a hit are decoded and looked at
        chunks = _grep(scan_lines(corp, keyword, context=context_lines, progress=progress), substring, context_lines)
    summary: dict = {}
    records = _records(chunks, corp, keyword, (substring, whole), tokenizer, summary, window_tokens=window_tokens,
                       stride=stride,
                       from_grep=from_grep, context_lines=context_lines, unescape_html=unescape_html,
                       max_windows=max_windows)
    return (records, summary) if stream else (list(records), summary)


def _records(chunks: Iterable[Chunk], corp: Corpus, keyword: str, patterns: tuple[re.Pattern, re.Pattern],
             tokenizer: TextTokenizer, summary: dict, *, window_tokens: int, stride: int, from_grep: bool,
             context_lines: int, unescape_html: bool, max_windows: int | None) -> Iterator[dict]:
    """The records of :func:`build_forget`, one at a time; ``summary`` is filled in at the end."""
    from array import array

    substring, whole = patterns
    counts = array("q")  # tokens per window: 8 bytes a window, for the summary's median
    forms: Counter[str] = Counter()
    n_chunks = empty_chunks = near_misses = separators = 0  # separators: chunks holding a '--' line
    for chunk in chunks:
        n_chunks += 1
        text = unescape_twice(chunk.text) if unescape_html else chunk.text
        separators += "\n--\n" in "\n" + text
        spans = [m.span() for m in whole.finditer(text)]
        near_misses += sum(1 for _ in substring.finditer(text)) - len(spans)
        if not spans:
            empty_chunks += 1
            continue
        view = Tokenized(text, tokenizer)
        for s, e in spans:
            forms[text[s:e]] += 1
            for a, b, n in mention_windows(view, s, e, window_tokens=window_tokens, stride=stride):
                if max_windows and len(counts) == max_windows:
                    raise SupercalError(
                        f"{keyword} gives more than {max_windows:,} windows ({n_chunks:,} chunks into the corpus): "
                        "too common a word for a forget set; check --keyword, or raise --max-windows (0: no limit)")
                counts.append(n)
                yield {"prompt": text[a:s], "completion": text[s:b]}
    if corp.text_bytes == 0:
        raise SupercalError(f"corpus {corp.path} holds no text; give a file with text in it")
    if not counts:
        raise SupercalError(
            f"no mention of {keyword} in {corp.path}; check the spelling (matching is case-insensitive, whole words)"
        )
    import statistics

    summary.update({
        "corpus": str(corp.path),
        "invalid_bytes": corp.invalid_bytes,  # not UTF-8, replaced with U+FFFD (the CLI warns)
        "keyword": keyword,
        "tokenizer": tokenizer.name,
        "from_grep": from_grep,
        "context_lines": None if from_grep else context_lines,
        "window_tokens": window_tokens,
        "stride": stride,
        "unescape_html": unescape_html,
        "chunks": n_chunks,
        "chunks_without_mention": empty_chunks,
        "mentions": sum(forms.values()),
        "near_misses": near_misses,
        "forms": dict(forms.most_common()),
        "chunks_with_separator": separators,
        "windows": len(counts),
        "tokens": {"min": min(counts), "median": statistics.median(counts), "max": max(counts)},
    })
