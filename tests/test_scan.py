"""The block scan behind `negatives` (data/scan.py): the same chunks and line numbers as the line-by-line grep,
the same invalid-byte count as the decoder, and a UTF-8 check that agrees with Python's decoder."""

from __future__ import annotations

import os
import random
import re

import pytest

from supercal_mlx.data.corpus import open_corpus
from supercal_mlx.errors import SupercalError
from supercal_mlx.data.negatives import _grep, grep_chunks, keyword_patterns
from supercal_mlx.data import scan, scan_parallel
from supercal_mlx.data.scan import _FOLDS, scan_lines, valid_utf8

PIECES = ["the", "Supercal", "supercal", "SUPERCAL", "superca", "l", "\u017fupercal", "\u0130nk", "ink", "\u212aey", "key",
          "Zürich", "zÜRICH", "zürich", "\n", "\n", "\n", "\n\n", " ", "caf\xe9", "\U0001f600", "--", "x" * 50]


def _corpus(seed: int, n: int) -> bytes:
    rng = random.Random(seed)
    out = "".join(rng.choice(PIECES) + rng.choice(["", " ", "\n"]) for _ in range(n)).encode()
    bad = [b"\xff", b"\xc3", b"\xe2\x84", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", b"\x80"]
    parts = out.split(b"\n")
    for i in rng.sample(range(len(parts)), len(parts) // 30):
        parts[i] += rng.choice(bad)
    return b"\n".join(parts) + rng.choice([b"", b"\n", b"tail without newline"])


def test_re_ignorecase_folds_no_other_non_ascii_letters():
    everything = "".join(chr(cp) for cp in range(128, 0x110000) if not 0xD800 <= cp < 0xE000)
    found = {c: tuple(re.findall(c, everything, re.IGNORECASE)) for c in "abcdefghijklmnopqrstuvwxyz0123456789"}
    assert {c: v for c, v in found.items() if v} == _FOLDS


@pytest.mark.parametrize("keyword", ["supercal", "ink", "key", "Zürich", "ü", "s"])
@pytest.mark.parametrize("context", [0, 1, 3])
@pytest.mark.parametrize("workers", [1, 3])
def test_block_scan_gives_the_line_by_line_chunks(tmp_path, monkeypatch, keyword, context, workers):
    monkeypatch.setattr(scan, "PARALLEL_MIN_BYTES", 0)  # the small test files are scanned in parts too
    substring, _ = keyword_patterns(keyword)
    for seed in range(2):
        path = tmp_path / f"c{seed}.txt"
        path.write_bytes(_corpus(seed, 3000))
        whole = open_corpus(path)
        want = [(c.text, c.line) for c in grep_chunks(whole.iter_lines(), substring, context=context)]
        for block in (7, 300, 1 << 20):  # blocks much shorter than a line, too
            corp = open_corpus(path)
            got = [(c.text, c.line) for c in _grep(scan_lines(corp, keyword, context=context, block=block,
                                                              workers=workers), substring, context)]
            assert got == want, (seed, block)
            assert corp.invalid_bytes == whole.invalid_bytes > 0 and corp.text_bytes == path.stat().st_size
        assert len(want) > 3


def test_parallel_scan_forks_and_falls_back(tmp_path, monkeypatch):
    """Two parts scanned by a forked child; a child that gives up (too many lines) leaves its range to this process."""
    if not scan.parallel_ok():
        pytest.skip("the parallel scan forks on Linux only")
    path = tmp_path / "c.txt"
    path.write_bytes(_corpus(7, 20000))
    substring, _ = keyword_patterns("supercal")
    want = [(c.text, c.line) for c in grep_chunks(open_corpus(path).iter_lines(), substring, context=2)]
    monkeypatch.setattr(scan, "PARALLEL_MIN_BYTES", 0)
    forks = []
    real_fork = scan_parallel._fork
    monkeypatch.setattr(scan_parallel, "_fork", lambda *a: forks.append(a[1:3]) or real_fork(*a))
    for limit in (scan_parallel.CHILD_MAX_CHARS, 10):
        monkeypatch.setattr(scan_parallel, "CHILD_MAX_CHARS", limit)
        corp = open_corpus(path)
        got = [(c.text, c.line) for c in _grep(scan_lines(corp, "supercal", context=2, workers=2), substring, 2)]
        assert got == want and corp.text_bytes == path.stat().st_size
    assert len(forks) == 2 and 0 < forks[0][0] < forks[0][1] == path.stat().st_size
    monkeypatch.setenv("SUPERCAL_SCAN_WORKERS", "two")
    with pytest.raises(SupercalError, match="SUPERCAL_SCAN_WORKERS must be a whole number"):
        next(scan_lines(open_corpus(path), "supercal", context=2))
    # left early: the child is killed and reaped, none is left behind
    lines = scan_lines(open_corpus(path), "supercal", context=2, workers=2)
    next(lines)
    lines.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_valid_utf8_agrees_with_the_decoder():
    rng = random.Random(0)
    alphabet = [b"a", b"\n", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xed\x9f\xbf", b"\xf4\x8f\xbf\xbf",
                b"\xef\xbf\xbf", b"\x80", b"\xbf", b"\xc0", b"\xc1\x81", b"\xc2", b"\xe0\x9f\x80", b"\xe0\xa0\x80",
                b"\xed\xa0\x80", b"\xf0\x8f\xbf\xbf", b"\xf0\x90\x80\x80", b"\xf4\x90\x80\x80", b"\xf5", b"\xff"]
    seen = set()
    for _ in range(4000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
        if rng.random() < 0.3:
            data = data[: rng.randint(0, len(data))]
        try:
            data.decode("utf-8")
            ok = True
        except UnicodeDecodeError:
            ok = False
        assert valid_utf8(data) == ok, data
        seen.add(ok)
    assert seen == {True, False}
