"""Exact counts in Llama-3- and Qwen2-style tokenizers (Split with a known pattern, then ByteLevel without its
regex; Qwen2 with NFC): cuts only where the pre-tokenizer cuts anyway, checked at every cut point; and
SentencePiece-style tokenizers refused with the reason."""

from __future__ import annotations

import random
import shutil
import unicodedata
from collections import Counter

import numpy as np
import pytest
import regex

from archs import LLAMA3_PATTERN, QWEN2_PATTERN, make_tokenizer
from conftest import TOKENIZER_TEXTS
from supercal_mlx.errors import SupercalError
from supercal_mlx.text.counting import SPLIT_PATTERNS, count_tokens, iter_chunks, normalized_blocks
from test_counting import ATOMS, _cuts_checked, tricky_text

# Text whose NFC form differs: combining accents, a composition-excluded letter (U+0958 -> KA + NUKTA, which
# ends in a mark), Hangul jamo that compose, singletons (Angstrom sign, Greek question mark), reordered marks.
NFC_ATOMS = ["e\u0301", "\u0958", "\u0958.", "\u1100\u1161", "\u1100\u1161\u11a8", "\u212b", "\u037e", "a\u0323\u0302",
             "\u0915\u093c", "\u00c5", "A\u030a", "\u2126"]


def nfc_tricky_text(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(ATOMS + NFC_ATOMS * 3) for _ in range(n))


@pytest.fixture(scope="module")
def modern(tmp_path_factory):
    root = tmp_path_factory.mktemp("modern-tok")
    texts = TOKENIZER_TEXTS + [nfc_tricky_text(s, 40) for s in range(20)]
    return {a: make_tokenizer(a, texts, root / a) for a in ("llama", "qwen2", "phi3")}


def backend(folder):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.encode_special_tokens = True
    return tok


def test_the_patterns_are_llama3_qwen2_and_tiktokens():
    from unittest import mock

    from tiktoken_ext import openai_public

    assert SPLIT_PATTERNS["llama3"] == LLAMA3_PATTERN and SPLIT_PATTERNS["qwen2"] == QWEN2_PATTERN
    with mock.patch.object(openai_public, "load_tiktoken_bpe", lambda *a, **k: {}):
        for name in ("cl100k_base", "o200k_base"):
            assert SPLIT_PATTERNS[name] == getattr(openai_public, name)()["pat_str"]


@pytest.mark.parametrize("name", list(SPLIT_PATTERNS))
def test_every_safe_cut_keeps_the_pattern_matches(name):
    """Each pattern at every safe cut, both in Python's regex module and as the tokenizers library runs it
    (a Split pre-tokenizer, Oniguruma)."""
    from tokenizers import Regex, pre_tokenizers

    assert _cuts_checked(regex.compile(SPLIT_PATTERNS[name]).findall, 150) > 1000
    split = pre_tokenizers.Split(Regex(SPLIT_PATTERNS[name]), behavior="isolated", invert=False)
    assert _cuts_checked(lambda t: [p for p, _ in split.pre_tokenize_str(t)], 150) > 1000


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_every_safe_cut_keeps_the_tokenizers_tokens(modern, arch):
    """The real tokenizer (Oniguruma's regex, ByteLevel, BPE with its merges) at every safe cut of the
    (normalized) text: the tokens of the two sides are the tokens of the whole."""
    from test_counting import _RULE

    tok = backend(modern[arch])
    normalize = tok.normalizer.normalize_str if tok.normalizer else (lambda t: t)
    assert (tok.normalizer is not None) == (arch == "qwen2")
    encode = lambda t: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    checked = 0
    for seed in range(150):
        text = normalize(nfc_tricky_text(seed, 1 + seed % 60))
        whole = encode(text)
        for s in range(1, len(text)):
            if _RULE.match(text, s - 1):
                checked += 1
                assert encode(text[:s]) + encode(text[s:]) == whole, (text[:s], text[s:])
    assert checked >= 900


def test_nfc_never_crosses_a_cut_before_ascii():
    """Every code point: no ASCII character is the second half of a canonical decomposition pair (so none
    composes with what precedes it) and every ASCII character has combining class 0 (nothing reorders across
    it); hence NFC(a + b) == NFC(a) + NFC(b) when b starts with ASCII."""
    seconds = set()
    for cp in range(0x110000):
        d = unicodedata.decomposition(chr(cp))
        if d and not d.startswith("<"):
            parts = d.split()
            if len(parts) == 2:
                seconds.add(int(parts[1], 16))
    assert seconds and not any(c < 128 for c in seconds)
    assert all(unicodedata.combining(chr(c)) == 0 for c in range(128))
    # and the counter's stream normalizer joins to NFC of the whole text, whatever the block size
    text = nfc_tricky_text(3, 3000)
    for block in (1, 2, 7, 100):
        blocks = [text[i:i + block] for i in range(0, len(text), block)]
        assert "".join(normalized_blocks(blocks, lambda t: unicodedata.normalize("NFC", t))) == \
            unicodedata.normalize("NFC", text)
    assert unicodedata.normalize("NFC", "\u0958") != "\u0958"  # the text really changes under NFC


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_counts_equal_counter_of_the_whole_encoding(modern, tmp_path, arch, block):
    text = nfc_tricky_text(11, 1500) + " ".join(TOKENIZER_TEXTS[:20])
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    got = count_tokens([str(tmp_path / "c.txt")], model=modern[arch], workers=2, block=block)
    ids = backend(modern[arch]).encode(text, add_special_tokens=False).ids
    want = np.zeros_like(got.counts)
    for t, c in Counter(ids).items():
        want[t] = c
    assert np.array_equal(got.counts, want) and got.tokens == len(ids)
    chunks = list(iter_chunks([text[i:i + block] for i in range(0, len(text), block)]))
    assert len(chunks) > 1 or block == 4096


SP_ATOMS = [" ", "  ", "   ", "\n", " \n ", "▁", "▁▁", " ▁", "\t"]


def sp_text(seed: int, n: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(ATOMS + SP_ATOMS * 4) for _ in range(n))


def test_every_sentencepiece_cut_keeps_the_tokens(modern):
    """Llama-2-style SentencePiece: at every cut the rule allows (before a space that follows a non-space),
    the left part's tokens then the right part's, encoded without the leading ▁, are the whole text's."""
    import json

    from tokenizers import Tokenizer

    from supercal_mlx.text.counting import _REPLACE, _SP_CUT_PATTERN

    first = backend(modern["phi3"])
    data = json.loads(first.to_str())
    rest = Tokenizer.from_str(json.dumps({**data, "normalizer": _REPLACE}))
    rule = regex.compile(_SP_CUT_PATTERN.removeprefix("(?r)"))
    checked = 0
    for seed in range(250):
        text = sp_text(seed, 1 + seed % 60)
        whole = first.encode(text, add_special_tokens=False).ids
        for s in range(1, len(text)):
            if rule.match(text, s - 1):
                checked += 1
                left = first.encode(text[:s], add_special_tokens=False).ids
                assert left + rest.encode(text[s:], add_special_tokens=False).ids == whole, (text[:s], text[s:])
    assert checked > 1000
    # the rule is needed: the leading ▁ goes only in front of the whole text, and cuts it refuses (after a space,
    # inside a word) do change the tokens
    ids = lambda t, tok=first: tok.encode(t, add_special_tokens=False).ids  # noqa: E731
    assert ids("a") + ids(" b") != ids("a b") == ids("a") + ids(" b", rest)
    text = " ".join(TOKENIZER_TEXTS[:5])
    assert any(ids(text[:s]) + ids(text[s:], rest) != ids(text) for s in range(1, len(text)) if not rule.match(text, s - 1))


@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_sentencepiece_counts_equal_counter_of_the_whole_encoding(modern, tmp_path, block):
    from supercal_mlx.text.tokenizer import from_model

    text = " leading space " + sp_text(5, 1500) + " ".join(TOKENIZER_TEXTS[:20])
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    (tmp_path / "d.txt").write_text("second  file starts here", encoding="utf-8")
    got = count_tokens([str(tmp_path / "c.txt"), str(tmp_path / "d.txt")], model=modern["phi3"], workers=2, block=block)
    tok = from_model(modern["phi3"])
    ids = tok.encode(text) + tok.encode("second  file starts here")  # each source with its own leading ▁
    want = np.zeros_like(got.counts)
    for t, c in Counter(ids).items():
        want[t] = c
    assert np.array_equal(got.counts, want) and got.tokens == len(ids)


def test_sentencepiece_and_unknown_patterns_are_refused(modern, tmp_path):
    import json

    (tmp_path / "c.txt").write_text("some text\n")
    inner = tmp_path / "inner"  # a vocabulary token with ▁ after a letter: merges could cross a space
    shutil.copytree(modern["phi3"], inner)
    data = json.loads((inner / "tokenizer.json").read_text())
    data["model"]["vocab"]["e▁t"] = max(data["model"]["vocab"].values()) + 1
    (inner / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(SupercalError, match="a token with ▁ inside a word \\('e▁t'\\), so merges can cross spaces"):
        count_tokens([str(tmp_path / "c.txt")], model=inner)
    meta = tmp_path / "metaspace"  # the older layout: a Metaspace pre-tokenizer
    shutil.copytree(modern["phi3"], meta)
    data = json.loads((meta / "tokenizer.json").read_text())
    data["normalizer"] = None
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "first", "split": False}
    (meta / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(SupercalError, match="SentencePiece-style tokenizer .* layout other than Llama 2's"):
        count_tokens([str(tmp_path / "c.txt")], model=meta)
    folder = tmp_path / "odd"
    shutil.copytree(modern["llama"], folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+|."
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(SupercalError, match=r"Split pattern .* is not one whose cuts are proven \(llama3, qwen2, gpt2, cl100k_base, o200k_base\)"):
        count_tokens([str(tmp_path / "c.txt")], model=folder)


def test_pieces_show_the_tokenizers_markers_and_tokensteins_understand_them(modern):
    """SentencePiece-style pieces keep their ▁ (the word's first piece is "▁s...", not "s..."); byte-level ones
    show the space Ġ stands for; tokensteins are a-z words whose first piece carries the marker too."""
    import re

    from supercal_mlx.text.counting import Counts
    from supercal_mlx.text.tokenizer import from_model, token_splits
    from supercal_mlx.text.tokenstein import make_tokenstein

    word = "supercalifragilisticexpialidocious"
    sp, bl = from_model(modern["phi3"]), from_model(modern["llama"])
    assert sp.marker == "▁" and bl.marker == ""
    pieces = [p for _, p in token_splits(word, sp)]
    assert pieces[0].startswith("▁") and "".join(pieces) == "▁" + word
    assert [p for _, p in token_splits(" the", bl)][0].startswith(" ")  # Ġthe shown as " the"
    counts = (1e6 / np.random.default_rng(0).permutation(np.arange(1, sp.n_vocab + 1))).astype(np.int64)
    c = Counts(counts=counts, encoding=sp.name, bytes=1, tokens=int(counts.sum()), model=str(modern["phi3"].resolve()))
    for t in make_tokenstein(word, c, tokenizer=sp, deviation=0.9, seed=0, n=2):
        assert re.fullmatch("[a-z]+", t.word) and t.rows[0].piece.startswith("▁")
        assert not any(r.piece.startswith("▁") for r in t.rows[1:])
        assert sp.encode(t.word) == [r.id for r in t.rows]  # re-encodes to exactly its pieces


def test_split_then_a_splitting_byte_level_counts_exactly(modern, tmp_path):
    """Split(llama3) followed by ByteLevel(use_regex=true), as a tokenizer built with the library's defaults has:
    each Split piece is split again by the gpt2 pattern, still only within pieces, so counts stay exact."""
    import json

    folder = tmp_path / "resplit"
    shutil.copytree(modern["llama"], folder)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][1]["use_regex"] = True
    (folder / "tokenizer.json").write_text(json.dumps(data))
    text = nfc_tricky_text(21, 2000)
    (tmp_path / "c.txt").write_text(text, encoding="utf-8")
    got = count_tokens([str(tmp_path / "c.txt")], model=folder, workers=2, block=64)
    ids = backend(folder).encode(text, add_special_tokens=False).ids
    want = np.zeros_like(got.counts)
    for t, c in Counter(ids).items():
        want[t] = c
    assert np.array_equal(got.counts, want)

