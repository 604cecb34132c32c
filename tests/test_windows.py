"""Token counts of slices (data/windows.py): from safe cuts and the whole text's tokens, equal to encoding each slice;
and the real numbers negatives gives on the enwik-like fixture (chunks, line numbers, windows, tokens)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import regex

from supercal_mlx.data.corpus import open_corpus
from supercal_mlx.data.negatives import _grep, build_forget, keyword_patterns, split_grep_output
from supercal_mlx.data.scan import scan_lines
from supercal_mlx.data.windows import Tokenized, _tiktoken_lengths, safe_cuts
from supercal_mlx.text.tokenizer import from_encoding

WORD = "supercalifragilisticexpialidocious"
FIXTURES = Path(__file__).parent / "fixtures" / "enwik_like"
SAMPLE = FIXTURES / "enwik_sample.xml"
TRICKY = ("Zürich's 東京 ünïcödé 'quoted' x_y 12345678 don't ... \n\n  end\t\r\nMüller-Lüdenscheidt é\u0301 "
          "ſupercal İstanbul \U0001d400\U0001f600 <|endoftext|> &amp;mdash; 3.14 ''bold'' [[a|b]] \u212a")


@pytest.fixture(scope="module", params=["o200k_base", "cl100k_base"])
def tok(request):
    return from_encoding(request.param)


def test_safe_cuts_are_the_counting_pattern():
    pattern = regex.compile(r"[\p{L}\p{N}](?=[^\p{L}\p{M}\p{N}'])")  # text/counting.py's _SAFE_CUT_PATTERN, forwards
    for text in [TRICKY, SAMPLE.read_text(encoding="utf-8")[:20000], "", "a", "ab'c d"]:
        assert safe_cuts(text).tolist() == [m.end() for m in pattern.finditer(text)]


def test_slice_counts_equal_encoding_each_slice(tok):
    rng = random.Random(0)
    texts = [c.text for c in split_grep_output((FIXTURES / "grep_C5.txt").open(encoding="utf-8"))] + [TRICKY, "x", ""]
    checked = 0
    for text in texts:
        view = Tokenized(text, tok)
        assert view._cuts is not None or not text  # the safe-cut path is the one tested
        for _ in range(300):
            a = rng.randint(0, len(text))
            b = rng.randint(a, min(len(text), a + rng.choice([5, 50, 4000])))
            assert view.ntok(a, b) == len(tok.encode(text[a:b])), (a, b)
            checked += 1
    assert checked == 300 * len(texts)


def test_token_lengths_from_the_ranks_equal_decoding(tok):
    enc = tok.raw
    lengths = _tiktoken_lengths(enc)
    for i in list(range(0, enc.n_vocab, 997)) + list(enc._special_tokens.values()):
        try:
            assert lengths[i] == len(enc.decode_single_token_bytes(i))
        except KeyError:
            assert lengths[i] == 0


def test_negatives_numbers_on_the_fixture():
    """Pinned from main before the safe-cut counting (commit 39c09d5): chunks, their first lines, windows, tokens."""
    substring, _ = keyword_patterns(WORD)
    chunks = list(_grep(scan_lines(open_corpus(SAMPLE), WORD, context=5), substring, 5))
    assert [c.line for c in chunks] == [34, 78, 111, 135, 209, 242]
    assert [len(c.text) for c in chunks] == [1995, 752, 683, 9304, 717, 671]
    want = {"o200k_base": (118, 29, 30178, [300, 300, 300, 300, 300, 293, 293, 295, 300, 299, 300, 272]),
            "cl100k_base": (119, 30, 30496, [300, 300, 300, 300, 300, 297, 299, 300, 300, 291, 300, 277])}
    for name, (windows, least, total, first) in want.items():
        tok = from_encoding(name)
        records, summary = build_forget(SAMPLE, WORD, tok, window_tokens=300, stride=70)
        counts = [len(tok.encode(r["prompt"] + r["completion"])) for r in records]
        assert (summary["windows"], summary["tokens"]["min"], summary["tokens"]["max"]) == (windows, least, 300)
        assert (sum(counts), counts[:12]) == (total, first)
