"""Finding a keyword's lines at grep speed: whole blocks of bytes searched at once, per-line work only near hits.

``negatives`` needs the lines ``grep -i -C N KEYWORD`` prints. Decoding a whole
corpus and testing it line by line in Python runs at 20-40 MB/s; grep runs at
hundreds. :func:`scan_lines` reads blocks of whole lines as bytes and looks for
*candidates* with one vectorised pass per block:

* the probe is the keyword's longest run of ASCII characters (the whole keyword
  when it is ASCII), searched case-insensitively by OR-ing every byte with 0x20
  (``A``-``Z`` become ``a``-``z``; other bytes may collide, which only adds
  candidates) and ``bytes.find``. Python's ``re.IGNORECASE`` also lets ``i``
  match U+0130/U+0131, ``k`` match U+212A and ``s`` match U+017F: their UTF-8
  bytes are candidates too. A keyword without such a run makes every block a
  candidate (slower, still exact);
* invalid UTF-8 is found (and then counted exactly, as the decoder replaces it)
  by :func:`valid_utf8`, a vectorised check of the non-ASCII bytes only.

Then only the lines that can matter are decoded and yielded with their line
numbers: a candidate's line with ``N`` lines before it and ``2N + 1`` after it
(its after-context, then enough lines for grep's chunk to close), the first
``2N + 1`` lines of each block (a chunk from the previous block closes there)
and its last ``N`` lines (the before-context of a hit in the next block).
Skipping any other line changes nothing in :func:`negatives._grep`'s state: it
would only have passed through the ``N``-line before-context, which the
yielded lines refill. So the chunks are exactly those of the line-by-line scan
(tests/test_negatives.py compares both on tricky input).

mlx and mlx-lm have no corpus tools; written here.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Iterator

from .corpus import BLOCK_BYTES, Corpus
from ..errors import SupercalError

SCAN_BLOCK = BLOCK_BYTES  # 1 MB: 1-2 MB scanned 25-30% faster than 4 MB here (the passes' arrays stay in cache)
# What re.IGNORECASE lets an ASCII letter match outside ASCII (checked for every code point in the tests).
_FOLDS = {"i": ("\u0130", "\u0131"), "k": ("\u212a",), "s": ("\u017f",)}


def _non_ascii(block: bytes):
    """(offsets, values) of the non-ASCII bytes of ``block``, or None when it is all ASCII."""
    import numpy as np

    if block.isascii():
        return None
    raw = np.frombuffer(block, np.uint8)
    pos = np.flatnonzero(raw >= 0x80)  # (M,) offsets
    return pos, raw[pos]


def valid_utf8(block: bytes, non_ascii=False) -> bool:
    """Whether ``block`` is valid UTF-8 (what ``block.decode('utf-8')`` accepts), looking only at its non-ASCII
    bytes (``non_ascii``: their :func:`_non_ascii`, if already found): every lead byte followed by exactly its
    continuation bytes, no stray continuation, no overlong form, surrogate or code point above U+10FFFF."""
    import numpy as np

    found = _non_ascii(block) if non_ascii is False else non_ascii
    if found is None:
        return True
    pos, v = found
    if np.any((v == 0xC0) | (v == 0xC1) | (v >= 0xF5)):
        return False
    lead = v >= 0xC0
    leads = np.flatnonzero(lead)
    need = (v[leads] >= 0xC0).astype(np.int64) + (v[leads] >= 0xE0) + (v[leads] >= 0xF0)  # continuations per lead
    if int(need.sum()) != int((~lead).sum()):
        return False
    for k in (1, 2, 3):
        src = leads[need >= k]
        dst = src + k
        if dst.size and (dst[-1] >= v.size or np.any(lead[dst]) or np.any(pos[dst] != pos[src] + k)):
            return False
    first, second = v[leads], v[np.minimum(leads + 1, v.size - 1)]
    return not np.any(((first == 0xE0) & (second < 0xA0)) | ((first == 0xED) & (second >= 0xA0))
                      | ((first == 0xF0) & (second < 0x90)) | ((first == 0xF4) & (second >= 0x90)))


def _sequences_at(found, seq: bytes) -> list[int]:
    """Offsets where the multi-byte ``seq`` starts, from the block's non-ASCII bytes ``found``."""
    import numpy as np

    if found is None:
        return []
    pos, v = found
    n = v.size - len(seq) + 1
    if n <= 0:
        return []
    hit = np.ones(n, dtype=bool)
    for k, byte in enumerate(seq):
        hit &= v[k : k + n] == byte
        if k:
            hit &= pos[k : k + n] == pos[:n] + k
    return pos[:n][hit].tolist()


def _probe(keyword: str) -> Callable[[bytes, object], list[int]] | None:
    """(block, its non-ASCII bytes) -> offsets of candidate hits (a superset of the keyword's case-insensitive
    occurrences), or None when the keyword has no ASCII run of 3 or more characters to look for."""
    import re

    import numpy as np

    runs = re.findall(r"[\x00-\x7f]+", keyword)
    run = max(runs, key=len) if runs else ""
    if len(run) < min(3, len(keyword)):
        return None
    needle = bytes(c | 0x20 for c in run.encode("ascii"))
    extra = [ch.encode() for c in sorted(set(run.lower())) for ch in _FOLDS.get(c, ())]
    buffer = bytearray(SCAN_BLOCK + (1 << 16))  # reused: each block's folded copy is written into it

    def probe(block: bytes, found) -> list[int]:
        n = len(block)
        if len(buffer) < n:
            buffer.extend(bytes(n - len(buffer)))
        np.bitwise_or(np.frombuffer(block, np.uint8), 0x20, out=np.frombuffer(buffer, np.uint8)[:n])
        hits = []
        at = buffer.find(needle, 0, n)
        while at >= 0:
            hits.append(at)
            at = buffer.find(needle, at + 1, n)
        for e in extra:  # the letters re.IGNORECASE folds from outside ASCII, found among the non-ASCII bytes
            hits += _sequences_at(found, e)
        return sorted(hits)

    return probe


def _back(block: bytes, off: int, k: int) -> int:
    """Start of the line ``k`` lines above the one holding byte ``off``."""
    for _ in range(k + 1):
        off = block.rfind(b"\n", 0, off)
        if off < 0:
            return 0
    return off + 1


def _forward(block: bytes, off: int, k: int) -> int:
    """End (after its newline) of the line ``k`` lines below the one holding byte ``off``."""
    for _ in range(k + 1):
        off = block.find(b"\n", off)
        if off < 0:
            return len(block)
        off += 1
    return off


def _wanted(block: bytes, hits: list[int] | None, context: int) -> list[tuple[int, int]]:
    """Merged byte ranges (whole lines) of ``block`` that the grep state machine must see."""
    if hits is None:
        return [(0, len(block))]
    ranges = [(0, _forward(block, 0, 2 * context))]
    if context:
        ranges.append((_back(block, len(block) - 1, context - 1), len(block)))
    ranges += [(_back(block, h, context), _forward(block, h, 2 * context + 1)) for h in hits]
    ranges.sort()
    merged = [ranges[0]]
    for a, b in ranges[1:]:
        if a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _line_blocks(corp: Corpus, size: int) -> Iterator[bytes]:
    """The corpus as blocks of whole lines (the last may lack its newline): each read of ``size`` bytes is
    completed to the end of its line by ``readline``, so a block is copied at most once."""
    for data, member in corp.iter_bytes(size, with_member=True):
        if not data.endswith(b"\n"):
            rest = member.readline()
            corp.text_bytes += len(rest)
            data += rest
        yield data


def _scan(blocks: Iterable[bytes], probe, context: int, tally: list[int]) -> Iterator[tuple[int, str]]:
    """:func:`scan_lines` over blocks of whole lines, numbering lines from 1; ``tally`` gets [lines (newlines
    seen), invalid bytes, bytes] added to it as the blocks go by."""
    import numpy as np

    from .corpus import _invalid

    def newlines(raw, a: int, b: int | None = None) -> int:  # numpy counts them at 2-3x bytes.count's speed
        return int(np.count_nonzero(raw[a:b] == 10))

    for data in blocks:
        lineno = tally[0] + 1  # number of the block's first line
        found = _non_ascii(data)
        if not valid_utf8(data, found):
            before = _invalid[0]
            data.decode("utf-8", "supercal-replace")  # counts the replaced bytes exactly as iter_text does
            tally[1] += _invalid[0] - before
        hits = probe(data, found) if probe else None
        at, line_at = 0, 0  # a byte offset and its line index, advanced along the ranges
        raw = np.frombuffer(data, np.uint8)
        for a, b in _wanted(data, hits, context):
            line_at += newlines(raw, at, a)
            pieces = data[a:b].decode("utf-8", "replace").split("\n")
            last = pieces.pop()
            for i, piece in enumerate(pieces):
                yield lineno + line_at + i, piece + "\n"
            if last:  # the corpus's last line, without a newline
                yield lineno + line_at + len(pieces), last
            at, line_at = b, line_at + len(pieces)
        tally[0] += line_at + newlines(raw, at)  # line_at: the newlines before byte `at`
        tally[2] += len(data)


def scan_lines(corp: Corpus, keyword: str, *, context: int, progress: Callable[[int, int], None] | None = None,
               block: int = SCAN_BLOCK, workers: int | None = None) -> Iterator[tuple[int, str]]:
    """(line number, line) for the lines of ``corp`` that ``grep -i -C context keyword`` chunking needs (see above),
    decoded as :meth:`Corpus.iter_lines` decodes them; counts the corpus's invalid bytes on the way.

    ``workers`` > 1 (None: ``$SUPERCAL_SCAN_WORKERS``, else 1) scans a plain file of at least
    :data:`PARALLEL_MIN_BYTES` in that many parts at once on Linux (:mod:`.scan_parallel`); the lines are the same.
    Not the default: on the shared 2-core box it was measured on, two processes were no faster than one
    (scripts/bench_negatives.py, README)."""
    probe = _probe(keyword)
    tally = [0, 0, 0]
    if workers is None:
        value = os.environ.get("SUPERCAL_SCAN_WORKERS") or "1"
        if not value.isdigit() or int(value) < 1:
            raise SupercalError(f"SUPERCAL_SCAN_WORKERS must be a whole number, 1 or more; got {value!r}")
        workers = int(value)
    if workers > 1 and corp.format == "plain" and corp.size >= PARALLEL_MIN_BYTES and parallel_ok():
        from .scan_parallel import scan_parts

        yield from scan_parts(corp, probe, context, block, workers, tally, progress)
    else:
        def blocks() -> Iterator[bytes]:
            for data in _line_blocks(corp, block):
                yield data
                if progress is not None:
                    progress(corp.bytes_read, corp.size)

        yield from _scan(blocks(), probe, context, tally)
    corp.invalid_bytes += tally[1]
    if progress is not None:
        progress(corp.size, corp.size)


PARALLEL_MIN_BYTES = 32 << 20


def parallel_ok() -> bool:
    """Whether parts of a scan may run in forked processes: Linux only (macOS's system libraries are not fork-safe
    without exec)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")
